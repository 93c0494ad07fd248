"""Bootstrap confidence intervals over clips for corpus scores.

Each resample draws n clips with replacement (one multiplicity vector per
resample, shared by all metrics so that their intervals are paired); the
corpus score is recomputed on it and the interval is the 2.5th and 97.5th
percentiles of the resampled scores (percentile bootstrap, as DCASE 2024
reports FENSE on the Clotho evaluation split). How each metric is
recomputed:
- means of per-clip scores (ROUGE-L, CIDEr-D, SPICE, SPIDEr, SBERT-sim,
  FER, FENSE, SPIDEr-FL): the weighted mean, per-clip scores held fixed
  (CIDEr-D keeps the document frequencies of the full set);
- BLEU: from the resampled sums of its per-clip statistics;
- METEOR: the jar's corpus score aggregates statistics it does not return,
  so its interval is that of the mean per-clip (segment) score.
Vocab gets none: a resample holds only about 63 % of the distinct clips, so
its distinct-word count falls far below the full set's (measured on Clotho:
the whole percentile interval lies below the score); `vocab.vocab_scores`
takes clip weights all the same, for whoever wants that distribution.
"""

from collections.abc import Callable

import numpy as np

Statistic = Callable[[np.ndarray], np.ndarray]  # weights [b, n] -> scores [b]


def resample_weights(num_clips: int, num_samples: int, seed: int) -> np.ndarray:
  """Clip multiplicities of `num_samples` resamples, int [num_samples, num_clips]."""
  rng = np.random.default_rng(seed)
  draws = rng.integers(0, num_clips, size=(num_samples, num_clips))
  weights = np.zeros((num_samples, num_clips), np.int32)
  np.add.at(weights, (np.arange(num_samples)[:, None], draws), 1)
  return weights


def mean_statistic(per_clip: np.ndarray) -> Statistic:
  """The corpus score that is the mean of per-clip scores [n]."""
  return lambda w: (w @ per_clip) / w.sum(-1)


def intervals(
  statistics: dict[str, Statistic],
  num_clips: int,
  num_samples: int,
  seed: int = 0,
  level: float = 0.95,
  chunk: int = 100,
) -> dict[str, tuple[float, float]]:
  """Percentile bootstrap intervals.

  Args:
    statistics: metric -> function of clip weights [b, n] giving scores [b].
    num_clips: n.
    num_samples: resamples (e.g. 1000).
    seed: resampling seed.
    level: confidence level.
    chunk: resamples evaluated at once (bounds memory).

  Returns:
    metric -> (low, high).
  """
  if num_samples < 1 or num_clips < 1:
    return {}
  weights = resample_weights(num_clips, num_samples, seed)
  scores = {name: [] for name in statistics}
  for start in range(0, num_samples, chunk):
    w = weights[start : start + chunk]
    for name, fn in statistics.items():
      scores[name].append(np.asarray(fn(w), np.float64))
  tail = 100 * (1 - level) / 2
  result = {}
  for name, parts in scores.items():
    low, high = np.nanpercentile(np.concatenate(parts), [tail, 100 - tail])
    result[name] = (float(low), float(high))
  return result
