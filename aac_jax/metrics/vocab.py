"""Vocabulary of the predicted captions, and its ratio to the references'.

As aac-metrics 0.6.0's `vocab`, on the PTB-tokenized captions split on
spaces: `vocab` is the number of distinct words over all candidates, and
`vocab_ratio` divides it by the vocabulary a set of human captions of the
same clips has, one reference drawn per clip. aac-metrics estimates that
mean by drawing R sets (seeded); here it is the exact expectation,
sum over words of P(the word occurs in at least one drawn reference), so it
does not depend on a seed (the two differ by the sampling noise of R draws).
Both come from per-clip word sets, so the bootstrap resamples them exactly.
"""

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

_LOG_ZERO = -1e6


class VocabData(NamedTuple):
  """Per-clip word statistics.

  Attributes:
    cand_words: bool [n, cand_vocab], word w occurs in clip i's candidate.
    log_ref_miss: float64 [n, ref_vocab], log of the share of clip i's
      references without word w (-1e6 when all have it).
  """

  cand_words: np.ndarray
  log_ref_miss: np.ndarray


def vocab_data(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> VocabData:
  """Word statistics of tokenized candidates [n] and references [n][r]."""
  n = len(candidates)
  cand_vocab = {w: i for i, w in enumerate(sorted({w for c in candidates for w in c.split()}))}
  cand_words = np.zeros((n, len(cand_vocab)), bool)
  for i, c in enumerate(candidates):
    cand_words[i, [cand_vocab[w] for w in set(c.split())]] = True
  ref_vocab = {
    w: j for j, w in enumerate(sorted({w for rs in references for r in rs for w in r.split()}))
  }
  share = np.zeros((n, len(ref_vocab)))
  for i, refs in enumerate(references):
    for r in refs:
      share[i, [ref_vocab[w] for w in set(r.split())]] += 1.0 / len(refs)
  with np.errstate(divide='ignore'):
    # Finite stand-in for log(0), so that 0 x it is 0 in `vocab_scores`.
    log_miss = np.maximum(np.log(np.clip(1.0 - share, 0.0, 1.0)), _LOG_ZERO)
  return VocabData(cand_words, log_miss)


def vocab_scores(data: VocabData, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Candidate vocabulary and its ratio to the expected reference vocabulary.

  Args:
    data: from `vocab_data`.
    weights: [b, n] how many times each clip is taken (ones: the set itself).

  Returns:
    (vocab [b], vocab_ratio [b]).
  """
  weights = weights.astype(np.float64)
  vocab = ((weights @ data.cand_words) > 0).sum(-1).astype(np.float64)
  # A clip taken m times draws m references: P(miss) multiplies m times.
  log_miss = weights @ data.log_ref_miss
  ref_vocab = (1.0 - np.exp(log_miss)).sum(-1)
  return vocab, vocab / np.maximum(ref_vocab, 1e-12)
