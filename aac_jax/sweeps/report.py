"""The results table of a sweep: Markdown and CSV.

For each split (test, validation) and metric: mean +- sample standard
deviation (ddof=1) over the finished seeds of each point, the best point
marked where the metric has a direction (`DIRECTION`: higher is better for
the caption metrics, lower for the repeated n-gram rates and FER, none for
the caption length or a metric not listed), and the difference
of each point to a baseline point with a 95 % paired bootstrap interval
over clips (`clip_scores.paired_bootstrap`: each resample of clips rescores
every seed and averages over seeds, so the difference on all clips equals
the difference of the table's means; the interval reflects the sampling of
clips, with the seeds held fixed). Points not finished are listed with
their state and log.
"""

import csv
import dataclasses
import io
import json
import math
from collections.abc import Sequence

import numpy as np

from aac_jax.sweeps import clip_scores, define, results

# (mean, std, number of finished seeds)
Stat = tuple[float, float, int]

_HIGHER = (
  'bleu_1', 'bleu_2', 'bleu_3', 'bleu_4', 'meteor', 'rouge_l', 'cider_d', 'spice', 'spider',
  'sbert_sim', 'fense', 'spider_fl', 'vocab', 'vocab_ratio', 'distinct_rate', 'novel_rate',
  'event_precision', 'event_recall', 'event_f1', 'order_accuracy', 'count_accuracy',
)  # fmt: skip
_LOWER = (
  'fer', 'fluency_error_prob', 'repeated_unigram_rate', 'repeated_bigram_rate',
  'repeated_trigram_rate', 'loss',
)  # fmt: skip
# Metric -> 'higher' or 'lower' is better; absent (mean_length, unknown names): neither.
DIRECTION = {**dict.fromkeys(_HIGHER, 'higher'), **dict.fromkeys(_LOWER, 'lower')}
# Columns that repeat another: the fluency proxies' `vocab_size` is Vocab again.
DUPLICATE_OF = {'vocab_size': 'vocab'}
# (difference, 2.5th, 97.5th percentile)
Interval = tuple[float, float, float]


@dataclasses.dataclass(frozen=True)
class PointResult:
  """One point's state and, when finished, its final metrics (`'<split>/<metric>'`)."""

  point: define.Point
  state: results.PointState
  step: int | None
  metrics: dict[str, float]


@dataclasses.dataclass(frozen=True)
class Report:
  """Everything the tables show.

  Attributes:
    sweep: the sweep.
    points: one `PointResult` per run.
    stats: `'<split>/<metric>'` -> group -> `Stat` (groups with a finished seed).
    best: `'<split>/<metric>'` -> the groups with the highest mean.
    baseline: the baseline group.
    deltas: `'<split>/<metric>'` -> group -> `Interval` (clip-level metrics only).
    num_clips: split -> clips the intervals were computed on.
  """

  sweep: define.Sweep
  points: list[PointResult]
  stats: dict[str, dict[str, Stat]]
  best: dict[str, set[str]]
  baseline: str
  deltas: dict[str, dict[str, Interval]]
  num_clips: dict[str, int]


def collect(sweep: define.Sweep) -> list[PointResult]:
  """Reads every point's state and final metrics."""
  out = []
  for point in sweep.points:
    workdir = sweep.workdir(point)
    state = results.point_state(workdir)
    step, metrics = results.final_metrics(workdir) if state.state == 'finished' else (None, {})
    out.append(PointResult(point, state, step, metrics))
  return out


def summarize(points: Sequence[PointResult]) -> dict[str, dict[str, Stat]]:
  """Mean, std (ddof=1; NaN for one seed) and count over seeds per metric and group."""
  values: dict[str, dict[str, list[float]]] = {}
  for r in points:
    for name, value in r.metrics.items():
      values.setdefault(name, {}).setdefault(r.point.group, []).append(value)
  return {
    name: {
      group: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else math.nan, len(v))
      for group, v in groups.items()
    }
    for name, groups in values.items()
  }


def direction(name: str) -> str | None:
  """'higher', 'lower' or None (no better side) for `'<split>/<metric>'` or a metric name."""
  return DIRECTION.get(name.rsplit('/', 1)[-1])


def best_groups(stats: dict[str, dict[str, Stat]]) -> dict[str, set[str]]:
  """The groups with the best mean per metric (all of them on exact ties; none without a
  direction)."""
  best = {}
  for name, groups in stats.items():
    sign = {'higher': 1.0, 'lower': -1.0}.get(direction(name))
    if sign is None:
      best[name] = set()
      continue
    top = max(sign * mean for mean, _, _ in groups.values())
    best[name] = {g for g, (mean, _, _) in groups.items() if sign * mean == top}
  return best


def select_metrics(
  stats: dict[str, dict[str, Stat]], metrics: Sequence[str] | None
) -> dict[str, dict[str, Stat]]:
  """`stats` without duplicate columns, and only `metrics` (names without split) if given.

  Raises:
    ValueError: a name in `metrics` is not a metric of the runs.
  """
  names = {n.split('/', 1)[1] for n in stats}
  dropped = {d for d, of in DUPLICATE_OF.items() if of in names}
  if metrics:
    unknown = sorted(set(metrics) - names)
    if unknown:
      raise ValueError(f'--metrics {unknown} not logged by the runs; they logged {sorted(names)}')
    dropped |= names - set(metrics)
  return {n: v for n, v in stats.items() if n.split('/', 1)[1] not in dropped}


class ClipStatsReader:
  """Per-clip statistics of finished runs; dataset events read once per split."""

  def __init__(self, sweep: define.Sweep):
    self._sweep = sweep
    self._events: dict[tuple, dict[str, str]] = {}

  def _events_of(self, config, split: str) -> dict[str, str]:
    key = (config.dataset.data_dir, config.dataset.builder_config, split)
    if key not in self._events:
      self._events[key] = clip_scores.read_events(config.dataset, split)
    return self._events[key]

  def run_stats(self, r: PointResult, split: str) -> dict[str, clip_scores.ClipStats]:
    workdir = self._sweep.workdir(r.point)
    path = results.prediction_file(workdir, split, r.step)
    if not path.is_file():
      return {}
    rows = clip_scores.read_predictions(path)
    stats = clip_scores.caption_stats(rows)
    config = results.read_config(workdir)
    if config.dataset.name == clip_scores.SYNTHETIC_DATASET:
      stats.update(clip_scores.diagnostic_stats(rows, self._events_of(config, split)))
    return stats

  def group_stats(self, points: Sequence[PointResult], split: str):
    """group -> metric -> `[ClipStats]`, one per finished seed."""
    runs: dict[str, dict[str, list]] = {}
    for r in points:
      if r.state.state == 'finished' and r.step is not None:
        for name, s in self.run_stats(r, split).items():
          runs.setdefault(r.point.group, {}).setdefault(name, []).append(s)
    return runs


def splits(stats: dict[str, dict[str, Stat]]) -> list[str]:
  """Split names of the metrics, in first-seen order."""
  return list(dict.fromkeys(name.split('/', 1)[0] for name in stats))


def compare(
  sweep: define.Sweep, points: Sequence[PointResult], baseline: str, num_samples: int
) -> tuple[dict[str, dict[str, Interval]], dict[str, int]]:
  """Paired bootstrap intervals of every group against `baseline`, per split and metric."""
  reader = ClipStatsReader(sweep)
  deltas: dict[str, dict[str, Interval]] = {}
  num_clips: dict[str, int] = {}
  for split in splits(summarize(points)):
    by_group = reader.group_stats(points, split)
    base = by_group.get(baseline, {})
    for group, by_metric in by_group.items():
      for name, stats in by_metric.items():
        if group != baseline and name in base:
          interval = clip_scores.paired_bootstrap(base[name], stats, num_samples)
          deltas.setdefault(f'{split}/{name}', {})[group] = interval
          shared = set(base[name][0].ids).intersection(*(r.ids for r in base[name] + stats))
          num_clips[split] = len(shared)
  return deltas, num_clips


def build(
  sweep: define.Sweep,
  baseline: str | None = None,
  num_samples: int = 1000,
  metrics: Sequence[str] | None = None,
) -> Report:
  """Reads the sweep's runs and computes the tables.

  Args:
    sweep: the sweep (see `define.load`).
    baseline: group name to compare against (default: the first point's).
    num_samples: bootstrap resamples (0: no differences to the baseline).
    metrics: metric names to report (default: all the runs logged).

  Raises:
    ValueError: `baseline` is not a group of the sweep, or a metric was not logged.
  """
  groups = list(sweep.groups())
  baseline = baseline or groups[0]
  if baseline not in groups:
    raise ValueError(f'--baseline {baseline!r} is not a point of the sweep; points: {groups}')
  points = collect(sweep)
  stats = select_metrics(summarize(points), metrics)
  deltas, num_clips = compare(sweep, points, baseline, num_samples) if num_samples > 0 else ({}, {})
  deltas = {k: v for k, v in deltas.items() if k in stats}
  return Report(sweep, points, stats, best_groups(stats), baseline, deltas, num_clips)


def _fmt(value: float) -> str:
  return '–' if math.isnan(value) else f'{value:.4f}'


def _metric_names(report: Report, split: str) -> list[str]:
  return sorted(n.split('/', 1)[1] for n in report.stats if n.startswith(f'{split}/'))


def _split_table(report: Report, split: str) -> list[str]:
  names = _metric_names(report, split)
  lines = [f'| point | seeds | {" | ".join(names)} |', '|---|---|' + '---|' * len(names)]
  for group in report.sweep.groups():
    cells, seeds = [], 0
    for name in names:
      mean, std, n = report.stats[f'{split}/{name}'].get(group, (math.nan, math.nan, 0))
      seeds = max(seeds, n)
      cell = '' if n == 0 else f'{_fmt(mean)} ± {_fmt(std)}'
      best = group in report.best.get(f'{split}/{name}', ()) and n > 0
      cells.append(f'**{cell}**' if best else cell)
    lines.append(f'| {group} | {seeds} | {" | ".join(cells)} |')
  return lines


def _delta_table(report: Report, split: str) -> list[str]:
  names = [n for n in _metric_names(report, split) if f'{split}/{n}' in report.deltas]
  if not names:
    return []
  lines = [
    f'Difference to `{report.baseline}` with a 95 % paired bootstrap interval over '
    f'{report.num_clips.get(split, 0)} clips (seeds held fixed: see above):',
    '',
    f'| point | {" | ".join(names)} |',
    '|---|' + '---|' * len(names),
  ]
  degenerate = False
  for group in report.sweep.groups():
    if group == report.baseline:
      continue
    cells = []
    for name in names:
      d = report.deltas[f'{split}/{name}'].get(group)
      degenerate |= d is not None and d[1] == d[2]
      cells.append('' if d is None else _delta_cell(*d))
    lines.append(f'| {group} | {" | ".join(cells)} |')
  if degenerate:
    note = (
      f'{DEGENERATE}: every resample gives the same difference (the per-clip scores differ '
      'by the same amount on every clip, usually 0: identical predictions); such an '
      'interval says nothing about the sampling of clips.'
    )
    lines += ['', note]
  return lines


DEGENERATE = 'degenerate'  # Marks an interval of zero width.


def _delta_cell(delta: float, low: float, high: float) -> str:
  if low == high:
    return f'{delta:+.4f} ({DEGENERATE})'
  return f'{delta:+.4f} [{low:+.4f}, {high:+.4f}]'


def _unfinished(report: Report) -> list[str]:
  rows = [r for r in report.points if r.state.state != 'finished']
  if not rows:
    return ['All points finished.']
  lines = ['| run | state | saved step | detail | log |', '|---|---|---|---|---|']
  for r in rows:
    s = r.state
    step = '' if s.step is None else f'{s.step} of {s.num_steps}'
    lines.append(f'| {r.point.name} | {s.state} | {step} | {s.detail} | {s.log} |')
  return lines


def to_markdown(report: Report) -> str:
  """The report as Markdown (one table per split, differences, unfinished runs)."""
  seeds = len({p.seed for p in report.sweep.points})
  out = [
    f'# Sweep `{report.sweep.root}`',
    '',
    f'Config `{report.sweep.config}`, {len(report.sweep.groups())} points x {seeds} seeds. '
    'Mean ± std over finished seeds (sample std; – for one seed); best point per metric in '
    'bold (higher is better, lower for FER and the repeated n-gram rates; no bold for the '
    'caption length). The intervals of the differences resample clips with the seeds held '
    'fixed: each resample rescores the same runs on the drawn clips, so they show how much '
    'the difference depends on the evaluation clips, not on the seed (for that, compare the '
    '± std of the seeds).',
  ]
  for split in splits(report.stats):
    out += ['', f'## {split}', '', *_split_table(report, split)]
    delta = _delta_table(report, split)
    out += ['', *delta] if delta else []
  out += ['', '## Runs not finished', '', *_unfinished(report)]
  return '\n'.join(out) + '\n'


CSV_COLUMNS = (
  'split', 'metric', 'point', 'overrides', 'seeds', 'mean', 'std', 'better', 'best',
  'baseline', 'delta', 'ci_low', 'ci_high',
)  # fmt: skip


def to_csv(report: Report) -> str:
  """One row per split, metric and point (long format)."""
  buffer = io.StringIO()
  writer = csv.writer(buffer)
  writer.writerow(CSV_COLUMNS)
  groups = report.sweep.groups()
  for name in sorted(report.stats, key=lambda n: (splits(report.stats).index(n.split('/')[0]), n)):
    split, metric = name.split('/', 1)
    for group, (mean, std, n) in report.stats[name].items():
      d = report.deltas.get(name, {}).get(group, ('', '', ''))
      overrides = json.dumps(groups[group][0].overrides, sort_keys=True)
      best = group in report.best[name]
      better = direction(name) or ''
      row = [split, metric, group, overrides, n, mean, std, better, best, report.baseline, *d]
      writer.writerow(row)
  return buffer.getvalue()
