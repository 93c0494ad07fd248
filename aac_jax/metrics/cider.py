"""CIDEr-D with coco-caption's definition, vectorised with numpy.

pycocoevalcap 1.2's `Cider` is CIDEr-D: for n = 1..4, each caption becomes a
tf-idf vector over its n-grams, with idf = log(N) - log(max(1, df)) where df
counts the clips whose references contain the n-gram and N is the number of
clips. A candidate c and a reference r score, per n,
  sum_g min(c_g, r_g) r_g / (|c| |r|)          (clipped, unclipped norms)
times exp(-(l_c - l_r)^2 / (2 sigma^2)) with l the number of bigrams
(words - 1) and sigma = 6. A clip's score is the mean over n of the sum over
its references, divided by the number of references, times 10; the corpus
score is the mean over clips. `cider_d_from_counts` is shared with the SCST reward,
which takes its document frequencies from a fixed corpus instead.
"""

from collections.abc import Sequence

import numpy as np

from aac_jax.metrics import ngrams

SIGMA = 6.0


def cider_d_from_counts(
  counts: ngrams.PairCounts,
  idf: np.ndarray,
  max_n: int = 4,
  sigma: float = SIGMA,
) -> np.ndarray:
  """Per-clip CIDEr-D from aligned n-gram counts.

  Args:
    counts: from `ngrams.pair_counts` with `max_n` orders.
    idf: float64 [num_keys], idf weight of each dense n-gram id.
    max_n: highest order.
    sigma: width of the length penalty.

  Returns:
    [n] scores.
  """
  n, num_refs, ref_clip = counts.num_clips, len(counts.ref_len), counts.ref_clip
  vec = counts.count * idf[counts.key]
  index = counts.sentence * max_n + counts.order
  rows, cand_rows = np.flatnonzero(counts.is_ref), np.flatnonzero(~counts.is_ref)
  vec_c, vec_r, index_r = vec[cand_rows], vec[rows], index[rows]
  norm_c = np.sqrt(np.bincount(index[cand_rows], vec_c**2, n * max_n)).reshape(n, max_n)
  norm_r = np.sqrt(np.bincount(index_r, vec_r**2, num_refs * max_n))
  # The candidate's value of each reference row's n-gram (0 if the candidate lacks it).
  head = counts.first[counts.group[rows]]
  clipped = np.minimum(np.where(counts.is_ref[head], 0.0, vec[head]), vec_r) * vec_r
  dot = np.bincount(index_r, clipped, num_refs * max_n).reshape(num_refs, max_n)
  denom = norm_c[ref_clip] * norm_r.reshape(num_refs, max_n)
  # pycocoevalcap leaves the sum unnormalised when a norm is 0 (it is 0 then).
  sim = np.where(denom != 0, dot / np.where(denom != 0, denom, 1.0), dot)
  bigrams_c = np.maximum(counts.cand_len - 1, 0)[ref_clip]
  delta = (bigrams_c - np.maximum(counts.ref_len - 1, 0)).astype(np.float64)
  sim *= np.exp(-(delta**2) / (2 * sigma**2))[:, None]
  per_clip = np.stack([np.bincount(ref_clip, sim[:, k], n) for k in range(max_n)], axis=1)
  refs_per_clip = np.bincount(ref_clip, minlength=n)
  return per_clip.mean(axis=1) / refs_per_clip * 10.0


def corpus_idf(counts: ngrams.PairCounts) -> np.ndarray:
  """idf of every n-gram id from the evaluated references (pycocoevalcap).

  Args:
    counts: aligned counts of the evaluated set.

  Returns:
    float64 [num_keys]: log(N) - log(max(1, df)).
  """
  if len(counts.first) == 0:  # No n-gram in any caption (empty or all-punctuation text).
    return np.zeros(0)
  # A group's candidate row comes first: it has references iff its last row is one.
  last = np.append(counts.first[1:], len(counts.key)) - 1
  keys = counts.key[last][counts.is_ref[last]]
  df = np.bincount(keys, minlength=int(counts.key.max(initial=-1)) + 1)
  return np.log(float(counts.num_clips)) - np.log(np.maximum(1.0, df))


def cider_d_scores(
  candidates: Sequence[str],
  references: Sequence[Sequence[str]],
  max_n: int = 4,
  sigma: float = SIGMA,
) -> tuple[float, np.ndarray]:
  """Corpus and per-clip CIDEr-D, as pycocoevalcap's `Cider`.

  Args:
    candidates: [n] tokenized candidates.
    references: [n] lists of tokenized references.
    max_n: highest order.
    sigma: width of the length penalty.

  Returns:
    (corpus score, per-clip scores [n]).
  """
  counts = ngrams.text_pair_counts(candidates, references, max_n)
  if counts.num_clips == 0:
    return 0.0, np.zeros(0)
  per_clip = cider_d_from_counts(counts, corpus_idf(counts), max_n, sigma)
  return float(per_clip.mean()), per_clip
