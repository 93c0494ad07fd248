"""ROUGE-L with coco-caption's definition.

Per clip: the longest common subsequence (LCS) of the candidate with each
reference gives precision LCS/|c| and recall LCS/|r|; the best precision and
the best recall over the references (taken separately) combine into
F = (1 + b^2) P R / (R + b^2 P) with b = 1.2. Like pycocoevalcap, captions
are split on single spaces, so an empty caption is one empty token. LCS
lengths use the bit-parallel algorithm, vectorised over all (candidate,
reference) pairs with uint64 bit masks (candidates up to 63 tokens; longer
ones use Python integers).
"""

from collections.abc import Sequence

import numpy as np

from aac_jax.metrics import ngrams

BETA = 1.2


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
  """Length of the longest common subsequence of two token lists.

  Args:
    a: first tokens.
    b: second tokens.

  Returns:
    The LCS length.
  """
  if len(a) < len(b):
    a, b = b, a
  masks: dict[str, int] = {}
  for i, token in enumerate(b):
    masks[token] = masks.get(token, 0) | (1 << i)
  full = (1 << len(b)) - 1
  v = full
  for token in a:
    u = v & masks.get(token, 0)
    v = ((v + u) | (v - u)) & full
  return len(b) - v.bit_count()


def rouge_l_clip(candidate: str, references: Sequence[str], beta: float = BETA) -> float:
  """ROUGE-L of one tokenized candidate against its tokenized references."""
  if isinstance(references, str) or not references:
    raise ValueError('references must be a non-empty list of strings')
  cand = candidate.split(' ')
  precision, recall = 0.0, 0.0
  for reference in references:
    ref = reference.split(' ')
    lcs = lcs_length(ref, cand)
    precision = max(precision, lcs / len(cand))
    recall = max(recall, lcs / len(ref))
  if precision == 0 or recall == 0:
    return 0.0
  return (1 + beta**2) * precision * recall / (recall + beta**2 * precision)


def _padded(words: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """[num_sentences, max_length] ids from flat words (0 = padding)."""
  sentence = np.repeat(np.arange(len(lengths)), lengths)
  position = np.arange(len(words)) - (np.cumsum(lengths) - lengths)[sentence]
  out = np.zeros((len(lengths), int(lengths.max(initial=0))), np.int64)
  out[sentence, position] = words
  return out


def lcs_lengths(a: np.ndarray, b: np.ndarray, b_len: np.ndarray) -> np.ndarray:
  """LCS lengths of many pairs of id sequences at once (numpy, bit-parallel).

  Args:
    a: int64 [p, la] ids, 0-padded (ids > 0).
    b: int64 [p, lb] ids, 0-padded, lb <= 63 (they index the bits).
    b_len: int64 [p] lengths of the b sequences.

  Returns:
    int64 [p] LCS lengths.
  """
  # masks[p, i]: bits j where b[p, j] == a[p, i] (padding never matches).
  masks = np.zeros(a.shape, np.uint64)
  for j in range(b.shape[1]):
    column = b[:, j : j + 1]
    masks |= np.where((a == column) & (column > 0), np.uint64(1 << j), np.uint64(0))
  full = np.left_shift(np.uint64(1), b_len.astype(np.uint64)) - np.uint64(1)
  v = full.copy()
  with np.errstate(over='ignore'):
    for i in range(a.shape[1]):
      u = v & masks[:, i]
      v = ((v + u) | (v - u)) & full
  return b_len - np.bitwise_count(v).astype(np.int64)


def rouge_l_from_ids(
  cands: ngrams.Sentences, refs: ngrams.Sentences, ref_clip: np.ndarray, beta: float = BETA
) -> np.ndarray:
  """Per-clip ROUGE-L of word-id sentences.

  Args:
    cands: [n] candidates (ids > 0); an empty one must already be one token,
      as pycocoevalcap's split(' ') makes it.
    refs: [r] references, same convention.
    ref_clip: int64 [r] clip of each reference.
    beta: recall weight.

  Returns:
    float64 [n] scores.
  """
  n = len(cands.lengths)
  cand_pad, ref_pad = _padded(cands.words, cands.lengths), _padded(refs.words, refs.lengths)
  cand_len = cands.lengths[ref_clip]
  lcs = np.zeros(len(ref_clip), np.int64)
  short = np.flatnonzero(cand_len <= 63)
  width = int(cand_len[short].max(initial=0))
  lcs[short] = lcs_lengths(ref_pad[short], cand_pad[ref_clip[short], :width], cand_len[short])
  for i in np.flatnonzero(cand_len > 63):  # Very long candidates: Python integers.
    ref = ref_pad[i, : refs.lengths[i]].tolist()
    lcs[i] = lcs_length(ref, cand_pad[ref_clip[i], : cand_len[i]].tolist())
  precision, recall = np.zeros(n), np.zeros(n)
  np.maximum.at(precision, ref_clip, lcs / cand_len)
  np.maximum.at(recall, ref_clip, lcs / refs.lengths)
  ok = (precision != 0) & (recall != 0)
  denom = np.where(ok, recall + beta**2 * precision, 1.0)
  return np.where(ok, (1 + beta**2) * precision * recall / denom, 0.0)


def empty_as_token(sents: ngrams.Sentences, token: int) -> ngrams.Sentences:
  """Gives every empty sentence one token, as split(' ') gives [''] for ''."""
  empty = np.flatnonzero(sents.lengths == 0)
  if not len(empty):
    return sents
  at = (np.cumsum(sents.lengths) - sents.lengths)[empty]
  lengths = sents.lengths.copy()
  lengths[empty] = 1
  return ngrams.Sentences(np.insert(sents.words, at, token), lengths)


def _encode(captions: Sequence[str], vocab: dict[str, int]) -> ngrams.Sentences:
  """Splits on single spaces, as pycocoevalcap ('' is one empty token)."""
  return ngrams.encode([c.split(' ') for c in captions], vocab)


def rouge_l_scores(
  candidates: Sequence[str], references: Sequence[Sequence[str]], beta: float = BETA
) -> tuple[float, np.ndarray]:
  """Corpus (mean) and per-clip ROUGE-L, as pycocoevalcap's `Rouge`.

  Args:
    candidates: [n] tokenized candidates.
    references: [n] lists of tokenized references.
    beta: recall weight.

  Returns:
    (corpus score, per-clip scores [n]).
  """
  if len(candidates) != len(references):
    raise ValueError(f'{len(candidates)} candidates but {len(references)} reference lists')
  if any(isinstance(refs, str) or not refs for refs in references):
    raise ValueError('references must be non-empty lists of strings')
  if not candidates:
    return 0.0, np.zeros(0)
  vocab: dict[str, int] = {}
  cands = _encode(candidates, vocab)
  refs = _encode([r for rs in references for r in rs], vocab)
  ref_clip = np.repeat(np.arange(len(references)), [len(rs) for rs in references])
  per_clip = rouge_l_from_ids(cands, refs, ref_clip, beta)
  return float(per_clip.mean()), per_clip
