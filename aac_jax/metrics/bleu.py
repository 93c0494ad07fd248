"""BLEU-1..4 with coco-caption's definition, vectorised with numpy.

pycocoevalcap 1.2 computes BLEU with the "closest" reference length: per
clip, the reference length nearest the candidate's (the shorter on a tie);
the corpus brevity penalty uses the sum of those lengths. Precisions are
smoothed as (matches + 1e-15) / (guesses + 1e-9), so a candidate without a
match scores ~0 rather than failing. Per-clip scores use the same formula on
one clip's counts. Inputs are already tokenized strings (split on
whitespace), as produced by `ptb_tokenizer.tokenize_caption`.
"""

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from aac_jax.metrics import ngrams

_TINY = 1e-15
_SMALL = 1e-9


def _closest_ref_length(counts: ngrams.PairCounts) -> np.ndarray:
  """Per clip, the reference length closest to the candidate's (ties: shorter)."""
  ref_len, ref_clip = counts.ref_len, counts.ref_clip
  gap = np.abs(ref_len - counts.cand_len[ref_clip])
  perm = np.lexsort((ref_len, gap, ref_clip))
  _, first = ngrams.group_starts(ref_clip[perm])
  return ref_len[perm][first]


def _bleu(correct, guess, test_len, ref_len) -> np.ndarray:
  """BLEU-1..max_n from match counts, per clip or from corpus totals.

  Args:
    correct: [..., max_n] clipped matches.
    guess: [..., max_n] candidate n-grams.
    test_len: [...] candidate words.
    ref_len: [...] effective reference words.

  Returns:
    [..., max_n] scores.
  """
  precision = np.cumprod((correct + _TINY) / (guess + _SMALL), axis=-1)
  scores = precision ** (1.0 / np.arange(1, correct.shape[-1] + 1))
  ratio = (test_len + _TINY) / (ref_len + _SMALL)
  penalty = np.where(ratio < 1, np.exp(1 - 1 / np.minimum(ratio, 1)), 1.0)
  return scores * penalty[..., None]


class BleuStatistics(NamedTuple):
  """Per-clip sums BLEU is made of (the corpus score uses their totals).

  Attributes:
    correct: [n, max_n] clipped matches.
    guess: [n, max_n] candidate n-grams.
    test_len: [n] candidate words.
    ref_len: [n] effective (closest) reference words.
  """

  correct: np.ndarray
  guess: np.ndarray
  test_len: np.ndarray
  ref_len: np.ndarray


def bleu_statistics(counts: ngrams.PairCounts, max_n: int = 4) -> BleuStatistics:
  """Per-clip BLEU statistics from aligned n-gram counts (at least `max_n` orders)."""
  n = counts.num_clips
  # Highest count of each (clip, n-gram) over the clip's references.
  max_ref = np.maximum.reduceat(np.where(counts.is_ref, counts.count, 0.0), counts.first)
  clipped = np.minimum(counts.count, max_ref[counts.group])
  rows = ~counts.is_ref & (counts.order < max_n)
  correct = np.bincount(
    counts.clip[rows] * max_n + counts.order[rows], weights=clipped[rows], minlength=n * max_n
  ).reshape(n, max_n)
  test_len = counts.cand_len.astype(np.float64)
  guess = np.maximum(0.0, test_len[:, None] - np.arange(max_n))
  return BleuStatistics(correct, guess, test_len, _closest_ref_length(counts).astype(np.float64))


def corpus_bleu(stats: BleuStatistics, weights: np.ndarray) -> np.ndarray:
  """Corpus BLEU of weighted clips: weights [b, n] (clip multiplicities) -> [b, max_n]."""
  w = weights.astype(np.float64)
  return _bleu(w @ stats.correct, w @ stats.guess, w @ stats.test_len, w @ stats.ref_len)


def bleu_from_counts(counts: ngrams.PairCounts, max_n: int = 4) -> tuple[np.ndarray, np.ndarray]:
  """Corpus and per-clip BLEU from aligned n-gram counts.

  Args:
    counts: from `ngrams.text_pair_counts` with at least `max_n` orders.
    max_n: highest order.

  Returns:
    (corpus scores [max_n], per-clip scores [n, max_n]).
  """
  if counts.num_clips == 0:
    return np.zeros(max_n), np.zeros((0, max_n))
  return bleu_from_statistics(bleu_statistics(counts, max_n))


def bleu_from_statistics(s: BleuStatistics) -> tuple[np.ndarray, np.ndarray]:
  """Corpus scores [max_n] and per-clip scores [n, max_n] from `bleu_statistics`."""
  per_clip = _bleu(s.correct, s.guess, s.test_len, s.ref_len)
  corpus = _bleu(s.correct.sum(0), s.guess.sum(0), s.test_len.sum(), s.ref_len.sum())
  return corpus, per_clip


def bleu_scores(
  candidates: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4
) -> tuple[np.ndarray, np.ndarray]:
  """Corpus and per-clip BLEU-1..max_n, as pycocoevalcap's `Bleu(4)`.

  Args:
    candidates: [n] tokenized candidates.
    references: [n] lists of tokenized references.
    max_n: highest order.

  Returns:
    (corpus scores [max_n], per-clip scores [n, max_n]).
  """
  return bleu_from_counts(ngrams.text_pair_counts(candidates, references, max_n), max_n)
