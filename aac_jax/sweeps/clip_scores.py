"""Per-clip statistics behind corpus metrics, for the paired bootstrap.

A corpus metric is a function of a sum over clips of per-clip statistics:
- CIDEr-D, ROUGE-L, SPICE, SPIDEr: the mean of the per-clip scores the run
  wrote in `predictions/<split>_step<step>.json` (`aac_jax.metrics.
  compute_caption_metrics` computes their corpus scores that way);
- the synthetic event diagnostics: ratios of summed counts
  (`aac_jax.data.synthetic.diagnostics.score_caption` per clip, summed and
  turned into metrics by `metrics_from_score`).
BLEU and METEOR corpus scores are not of this form (brevity penalty and
fragmentation over the whole corpus), so they get no interval.

`ClipStats.value(sums)` evaluates the metric from summed statistics, so a
bootstrap resample is one index draw and one sum.
"""

import dataclasses
import json
import os
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np
from etils import epath

# Corpus score == mean of the per-clip scores (see aac_jax.metrics.evaluate).
CLIP_MEAN_METRICS = ('rouge_l', 'cider_d', 'spice', 'spider')
SYNTHETIC_DATASET = 'synthetic_aac'


@dataclasses.dataclass(frozen=True)
class ClipStats:
  """Statistics of one metric on one set of predictions.

  Attributes:
    ids: `[n]` clip ids.
    stats: float64 `[n, k]` per-clip statistics.
    value: `sums [..., k], n -> metric [...]`.
  """

  ids: tuple[str, ...]
  stats: np.ndarray
  value: Callable[[np.ndarray, int], np.ndarray]


def _mean_value(sums: np.ndarray, n: int) -> np.ndarray:
  return sums[..., 0] / n


def read_predictions(path: str | os.PathLike) -> list[dict]:
  """`[{id, prediction, references, scores}]` as the evaluator wrote them."""
  return json.loads(epath.Path(path).read_text())


def caption_stats(rows: Sequence[dict]) -> dict[str, ClipStats]:
  """`ClipStats` of the clip-mean caption metrics present in `rows`."""
  ids = tuple(r['id'] for r in rows)
  out = {}
  for name in CLIP_MEAN_METRICS:
    if rows and all(name in r['scores'] for r in rows):
      stats = np.array([[r['scores'][name]] for r in rows], np.float64)
      out[name] = ClipStats(ids, stats, _mean_value)
  return out


def _diagnostic_value(name: str) -> Callable[[np.ndarray, int], np.ndarray]:
  from aac_jax.data.synthetic import diagnostics

  def value(sums: np.ndarray, n: int) -> np.ndarray:
    del n
    flat = sums.reshape(-1, sums.shape[-1])
    rows = [diagnostics.metrics_from_score(diagnostics.CaptionScore(*row))[name] for row in flat]
    return np.asarray(rows, np.float64).reshape(sums.shape[:-1])

  return value


def diagnostic_stats(rows: Sequence[dict], events: dict[str, str]) -> dict[str, ClipStats]:
  """`ClipStats` of the synthetic event diagnostics.

  Args:
    rows: the predictions file's rows.
    events: clip id -> ground-truth event JSON (see `read_events`).
  """
  from aac_jax.data.synthetic import diagnostics

  ids = tuple(r['id'] for r in rows)
  counts = [
    dataclasses.astuple(diagnostics.score_caption(r['prediction'], events[r['id']])) for r in rows
  ]
  stats = np.array(counts, np.float64).reshape(len(rows), -1)
  names = diagnostics.metrics_from_score(diagnostics.CaptionScore())
  return {name: ClipStats(ids, stats, _diagnostic_value(name)) for name in names}


def read_events(dataset_cfg: ml_collections.ConfigDict, split: str) -> dict[str, str]:
  """Clip id -> event JSON of a `synthetic_aac` split (reads the dataset)."""
  from aac_jax.data import sources

  source = sources.open_source(dataset_cfg, split)
  out = {}
  for i in range(len(source)):
    record = source[i]
    clip_id, events = record['id'], record['events']
    out[clip_id.decode() if isinstance(clip_id, bytes) else clip_id] = (
      events.decode() if isinstance(events, bytes) else events
    )
  return out


def _aligned(runs: Sequence[ClipStats], ids: Sequence[str]) -> np.ndarray:
  """`[runs, len(ids), k]` statistics of `runs` on clips `ids`."""
  out = []
  for run in runs:
    where = {clip: k for k, clip in enumerate(run.ids)}
    out.append(run.stats[[where[i] for i in ids]])
  return np.stack(out)


def paired_bootstrap(
  base: Sequence[ClipStats], other: Sequence[ClipStats], num_samples: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
  """Difference of two points (each the mean over its runs) with a 95 % interval.

  Each resample draws clips with replacement, recomputes every run's corpus
  metric on that draw, averages over each point's runs (seeds) and takes
  `other - base`: both points are scored on the same draw (paired). On all
  shared clips, the difference is that of the points' mean corpus scores.

  Args:
    base: the baseline point's runs (one `ClipStats` per seed, same metric).
    other: the other point's runs.
    num_samples: resamples.
    seed: seed of the resampling.

  Returns:
    `(difference on all shared clips, 2.5th percentile, 97.5th percentile)`.

  Raises:
    ValueError: the runs share no clip.
  """
  runs = [*base, *other]
  common = set(runs[0].ids).intersection(*(r.ids for r in runs[1:]))
  ids = [i for i in runs[0].ids if i in common]
  if not ids:
    raise ValueError('the runs scored no clip in common')
  b, o, n = _aligned(base, ids), _aligned(other, ids), len(ids)
  value = runs[0].value

  def point(stats: np.ndarray, draws: np.ndarray) -> np.ndarray:
    return value(stats[:, draws].sum(-2), n).mean(0)  # [runs, ..., k] -> [...]

  everything = np.arange(n)
  full = float(point(o, everything) - point(b, everything))
  draws = np.random.default_rng(seed).integers(0, n, size=(num_samples, n))
  diffs = point(o, draws) - point(b, draws)
  low, high = np.percentile(diffs, [2.5, 97.5])
  return full, float(low), float(high)
