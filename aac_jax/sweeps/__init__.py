"""Ablation sweeps: define points, run them, report and plot the results.

define.py   `get_sweep` helpers, seeds, the sweep's `sweep.json`
runner.py   runs points locally N at a time, or prints one command per point
events.py   reads TensorBoard event files (no TensorFlow)
results.py  each point's state and final metrics, read from its workdir
report.py   mean +- std over seeds, best point, paired bootstrap vs a baseline
plots.py    learning curves and metric vs swept value (matplotlib)
cli.py      `tools/sweep.py run|report|plot`
"""

from aac_jax.sweeps.define import (
  Point,
  Sweep,
  expand,
  load_sweep,
  product,
  run_name,
  sweep,
  to_flags,
  zipit,
)

__all__ = [
  'Point',
  'Sweep',
  'expand',
  'load_sweep',
  'product',
  'run_name',
  'sweep',
  'to_flags',
  'zipit',
]
