"""Vocabulary of the predicted captions, and its ratio to the references'.

As aac-metrics 0.6.0's `vocab`, on the PTB-tokenized captions split on
spaces: `vocab` is the number of distinct words over all candidates, and
`vocab_ratio` divides it by the vocabulary a set of human captions of the
same clips has, one reference drawn per clip. aac-metrics estimates that
mean by drawing R sets (seeded); here it is the exact expectation,
sum over words of P(the word occurs in at least one drawn reference), so it
does not depend on a seed (the two differ by the sampling noise of R draws).
Both come from per-clip word sets, so the bootstrap resamples them exactly.

The word sets are the unigram rows of the n-gram table BLEU and CIDEr-D
already build (`ngrams.PairCounts`), kept sparse: no dense clip x word
matrix, no BLAS call (OpenBLAS threads would spin on every core after it).
"""

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from aac_jax.metrics import ngrams

_LOG_ZERO = -1e6


class VocabData(NamedTuple):
  """Per-clip word statistics, one entry per (clip, word) that occurs.

  Attributes:
    cand_clip: int64 [p], clip of each distinct candidate word.
    cand_word: int64 [p], its word id (0..num_words-1).
    ref_clip: int64 [q], clip of each distinct reference word.
    ref_word: int64 [q], its word id.
    log_ref_miss: float64 [q], log of the share of the clip's references
      without the word (-1e6 when all have it).
    num_words: word ids are below it.
    num_clips: n.
  """

  cand_clip: np.ndarray
  cand_word: np.ndarray
  ref_clip: np.ndarray
  ref_word: np.ndarray
  log_ref_miss: np.ndarray
  num_words: int
  num_clips: int


def vocab_data_from_counts(counts: ngrams.PairCounts) -> VocabData:
  """Word statistics from the unigram rows of `counts` (any max_n)."""
  unigram = counts.order == 0
  cand = unigram & ~counts.is_ref
  ref = unigram & counts.is_ref  # One row per distinct word of a reference.
  num_words = int(counts.key.max(initial=-1)) + 1
  pair, refs_with = np.unique(counts.clip[ref] * num_words + counts.key[ref], return_counts=True)
  ref_clip = pair // max(num_words, 1)
  refs_per_clip = np.bincount(counts.ref_clip, minlength=counts.num_clips)
  share = refs_with / refs_per_clip[ref_clip]
  with np.errstate(divide='ignore'):
    # Finite stand-in for log(0), so that 0 x it is 0 in `vocab_scores`.
    log_miss = np.maximum(np.log(np.clip(1.0 - share, 0.0, 1.0)), _LOG_ZERO)
  return VocabData(
    counts.clip[cand],
    counts.key[cand],
    ref_clip,
    pair % max(num_words, 1),
    log_miss,
    num_words,
    counts.num_clips,
  )


def vocab_data(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> VocabData:
  """Word statistics of tokenized candidates [n] and references [n][r]."""
  return vocab_data_from_counts(ngrams.text_pair_counts(candidates, references, 1))


def vocab_scores(data: VocabData, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Candidate vocabulary and its ratio to the expected reference vocabulary.

  Args:
    data: from `vocab_data`.
    weights: [b, n] how many times each clip is taken (ones: the set itself).

  Returns:
    (vocab [b], vocab_ratio [b]).
  """
  weights = np.asarray(weights, np.float64)
  if data.num_words == 0:
    return np.zeros(len(weights)), np.zeros(len(weights))
  rows = np.arange(len(weights))[:, None] * data.num_words
  size = len(weights) * data.num_words
  taken = np.bincount((rows + data.cand_word).ravel(), weights[:, data.cand_clip].ravel(), size)
  vocab = (taken.reshape(-1, data.num_words) > 0).sum(-1).astype(np.float64)
  # A clip taken m times draws m references: P(miss) multiplies m times.
  log_miss = weights[:, data.ref_clip] * data.log_ref_miss
  log_miss = np.bincount((rows + data.ref_word).ravel(), log_miss.ravel(), size)
  ref_vocab = (1.0 - np.exp(log_miss.reshape(-1, data.num_words))).sum(-1)
  return vocab, vocab / np.maximum(ref_vocab, 1e-12)
