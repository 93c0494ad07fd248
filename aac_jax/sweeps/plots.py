"""Sweep plots (matplotlib, PNG).

- Learning curves: train loss and one validation metric against the step,
  one line per point (the mean over seeds), the band between the lowest and
  highest seed shaded. Read from the runs' TensorBoard event files
  (`events.read_scalars`). A resumed run logs at steps off the others'
  cadence (the first step after its checkpoint): each seed's curve is
  interpolated linearly onto every step any seed logged (within its own
  first and last step), so the mean and band there still cover all seeds.
- Metric against swept value: for each swept field, the final metric's
  mean over seeds against the field's value, one line per combination of
  the other swept fields, the band between the lowest and highest seed
  shaded (as in the learning curves); integer ticks for integer fields.

Each function returns the `Figure` (one `Line2D` per drawn line, so tests
can count them); `save` writes it as PNG.
"""

import json
import os
from collections.abc import Sequence

import matplotlib

matplotlib.use('Agg')  # No display; must precede pyplot.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from etils import epath  # noqa: E402

from aac_jax.sweeps import define, events, report, results  # noqa: E402


def _seed_curves(sweep: define.Sweep, points: Sequence[define.Point], tag: str):
  """`(steps [s], values [seeds, s])`: every step a seed logged `tag` at.

  Each seed's values are interpolated between its own logged steps, NaN
  outside them (a run killed before its event file was flushed lacks its
  early steps).
  """
  curves = []
  for point in points:
    values = events.read_scalars(sweep.workdir(point)).get(tag, [])
    if values:
      curves.append(np.array(values, np.float64).T)  # [2, logged steps]
  if not curves:
    return None
  steps = np.unique(np.concatenate([c[0] for c in curves]))
  return steps, np.stack([np.interp(steps, *c, left=np.nan, right=np.nan) for c in curves])


def learning_curves(sweep: define.Sweep, metric: str, split: str = 'validation') -> plt.Figure:
  """Train loss and `<split>/<metric>` against the step, one line per point.

  Args:
    sweep: the sweep.
    metric: the validation metric (e.g. 'cider_d', 'event_f1').
    split: the validation split's name.

  Returns:
    A figure with two axes (loss, metric); each has one line per point that
    logged the tag.
  """
  fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
  for ax, tag in zip(axes, ('train/loss', f'{split}/{metric}'), strict=True):
    for group, points in sweep.groups().items():
      curve = _seed_curves(sweep, points, tag)
      if curve is None:
        continue
      steps, values = curve
      mean = np.nanmean(values, axis=0)
      (line,) = ax.plot(steps, mean, marker='.' if len(steps) < 20 else None, label=group)
      if len(values) > 1:
        low, high = np.nanmin(values, axis=0), np.nanmax(values, axis=0)
        ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
    ax.set_xlabel('step')
    ax.set_ylabel(tag)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize='small')
  fig.suptitle(f'{sweep.root.name}: mean over seeds, band = min..max over seeds')
  return fig


def _other_fields(point: define.Point, field: str, swept: Sequence[str]) -> str:
  rest = {k: v for k, v in point.overrides.items() if k != field and k in swept}
  return define.run_name(rest) if rest else ''


def _x_positions(values: list) -> tuple[list[float], list[str] | None]:
  """Numbers stay numbers; anything else (bools, strings) becomes categories."""
  numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
  if numeric:
    return [float(v) for v in values], None
  labels = list(dict.fromkeys(json.dumps(v) for v in values))
  return [float(labels.index(json.dumps(v))) for v in values], labels


def _seed_values(rep: report.Report, metric: str) -> dict[str, list[float]]:
  """group -> `metric` of each finished seed."""
  values: dict[str, list[float]] = {}
  for r in rep.points:
    if metric in r.metrics:
      values.setdefault(r.point.group, []).append(r.metrics[metric])
  return values


def metric_vs_value(rep: report.Report, field: str, metric: str) -> plt.Figure:
  """`metric` (e.g. 'test/cider_d') against the values of swept `field`.

  Returns:
    A figure with one axis and one line per combination of the other swept
    fields (points without a finished seed are left out), the seeds' min..max
    shaded.
  """
  swept = rep.sweep.swept_fields()
  seeds = _seed_values(rep, metric)
  lines: dict[str, list] = {}
  for group, points in rep.sweep.groups().items():
    if group in seeds and field in points[0].overrides:
      key = _other_fields(points[0], field, swept)
      v = seeds[group]
      lines.setdefault(key, []).append((points[0].overrides[field], np.mean(v), min(v), max(v)))
  fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
  all_values = [row[0] for rows in lines.values() for row in rows]
  x_all, labels = _x_positions(all_values) if all_values else ([], None)
  positions = dict(zip(map(json.dumps, all_values), x_all, strict=True))
  for key, rows in lines.items():
    rows.sort(key=lambda r: positions[json.dumps(r[0])])
    x = np.array([positions[json.dumps(r[0])] for r in rows])
    mean, low, high = (np.array([r[i] for r in rows]) for i in (1, 2, 3))
    (line,) = ax.plot(x, mean, marker='o', label=key or metric)
    ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2)
  _value_axis(ax, all_values, x_all, labels)
  ax.set_xlabel(field)
  ax.set_ylabel(f'{metric} (mean over seeds)')
  ax.set_title(f'{metric} vs {field.rsplit(".", 1)[-1]}: band = min..max over seeds')
  ax.grid(alpha=0.3)
  if len(lines) > 1:
    ax.legend(fontsize='small')
  return fig


def _value_axis(ax, values: list, x: list[float], labels: list[str] | None) -> None:
  """Category labels; for integer fields a tick at each value; log scale over a decade."""
  if labels is not None:
    ax.set_xticks(range(len(labels)), labels)
    return
  if x and min(x) > 0 and max(x) / min(x) >= 10:
    ax.set_xscale('log')
  if values and all(isinstance(v, int) for v in values):
    ticks = sorted(set(x))
    ax.set_xticks(ticks, [str(int(t)) for t in ticks])
    ax.minorticks_off()


def save(fig: plt.Figure, path: str | os.PathLike) -> epath.Path:
  """Writes `fig` as PNG (a local path or a bucket's) and closes it."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open('wb') as f:
    fig.savefig(f, format='png', dpi=110)
  plt.close(fig)
  return path


def plot_all(rep: report.Report, metric: str, out_dir: str | os.PathLike) -> list[epath.Path]:
  """Learning curves plus one metric-vs-value plot per swept field and split."""
  sweep = rep.sweep
  configs = [results.read_config(sweep.workdir(p)) for p in sweep.points]
  validation = next((c.dataset.validation_split for c in configs if c is not None), 'validation')
  curves = learning_curves(sweep, metric, validation)
  paths = [save(curves, out_dir / 'learning_curves.png')]
  for field in sweep.swept_fields():
    for split in report.splits(rep.stats):
      name = f'{split}/{metric}'
      if name in rep.stats:
        short = field.rsplit('.', 1)[-1]
        fig = metric_vs_value(rep, field, name)
        paths.append(save(fig, out_dir / f'{split}_{metric}_vs_{short}.png'))
  return paths
