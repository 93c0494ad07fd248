"""Runs (or prints) the ablation sweep a config file defines.

  python tools/sweep.py --config configs/clotho.py:model=small \
      --workdir_root workdirs/sweep_lr [--dry_run]

Each sweep point trains in its own workdir `ROOT/<field=value,...>`; runs
that already finished resume and stop at once, so the command can be rerun
after an interruption. With --dry_run it only prints the commands (to paste
into a pod launcher, one point per slice).
"""

import importlib.util
import pathlib
import shlex
import subprocess
import sys
import types

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from aac_jax import sweeps  # noqa: E402

_CONFIG = flags.DEFINE_string('config', None, 'Config file, optionally with :variant.')
_ROOT = flags.DEFINE_string('workdir_root', None, 'Parent folder of the per-point workdirs.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Print the commands without running them.')
flags.mark_flags_as_required(['config', 'workdir_root'])


def load_sweep(config_path: str) -> list[dict]:
  """Imports the config file and returns its `get_sweep(hyper)` list."""
  path = pathlib.Path(config_path.split(':', 1)[0])
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_sweep'):
    raise app.UsageError(f'{path} defines no get_sweep(hyper); nothing to sweep')
  hyper = types.SimpleNamespace(sweep=sweeps.sweep, product=sweeps.product, zipit=sweeps.zipit)
  return module.get_sweep(hyper)


def main(argv):
  del argv
  points = load_sweep(_CONFIG.value)
  print(f'{len(points)} sweep points from {_CONFIG.value}')
  for i, overrides in enumerate(points):
    workdir = pathlib.Path(_ROOT.value) / sweeps.run_name(overrides)
    command = [sys.executable, '-m', 'aac_jax.main', f'--config={_CONFIG.value}']
    command += [f'--workdir={workdir}'] + sweeps.to_flags(overrides)
    print(f'[{i + 1}/{len(points)}] {shlex.join(command)}', flush=True)
    if not _DRY_RUN.value:
      subprocess.run(command, check=True)


if __name__ == '__main__':
  app.run(main)
