"""Vectorised n-gram counting shared by BLEU, CIDEr-D and the SCST reward.

Sentences are lists of word ids. All their n-grams (orders 1..max_n) become
one flat table of "entries": (sentence, order, key, count), one row per
distinct n-gram of a sentence, with `key` a dense id (0..K-1) that is equal
for equal n-grams. `PairCounts` holds the entries of candidates (one per
clip) and of their references, sorted together by (clip, key) so that BLEU's
clipping and CIDEr-D's clipped dot products are plain numpy reductions.

Dense ids are the ranks of n-gram keys and only mean something within one
call. Evaluation builds them order by order from (prefix id, word) pairs
('local', exact for any vocabulary, sorted like the packed keys). The
packed keys are the word ids of an n-gram packed into one uint64 ('packed',
exact while word ids are below 2**16). The reward needs identities that hold across calls (its document
frequencies are precomputed): it keeps the packed keys (`key_values`), and
above 2**16 words uses a multiplicative hash instead ('hashed': a collision
is then possible in principle, with probability about k**2 / 2**64 for k
distinct n-grams).
"""

import dataclasses
import itertools
import operator
from collections.abc import Sequence

import numpy as np

_PACK_BASE = np.uint64(1 << 16)
_HASH_MULT = np.uint64(0x9E3779B97F4A7C15)


@dataclasses.dataclass(frozen=True)
class Sentences:
  """Sentences as one flat array of word ids.

  Attributes:
    words: int64 [total_words], word ids >= 1.
    lengths: int64 [num_sentences], words per sentence.
  """

  words: np.ndarray
  lengths: np.ndarray


def encode(token_lists: Sequence[Sequence[str]], vocab: dict[str, int]) -> Sentences:
  """Maps words to ids (>= 1), adding unseen words to `vocab` in place.

  Args:
    token_lists: sentences as lists of words.
    vocab: word -> id.

  Returns:
    The flat `Sentences`.
  """
  flat = [w for tokens in token_lists for w in tokens]
  lengths = np.fromiter(map(len, token_lists), np.int64, len(token_lists))
  return Sentences(_word_ids(flat, vocab), lengths)


def _word_ids(flat: list[str], vocab: dict[str, int]) -> np.ndarray:
  """int64 ids of `flat`, adding unseen words to `vocab` (ids from len(vocab) + 1 on)."""
  for word in dict.fromkeys(flat):
    if word not in vocab:
      vocab[word] = len(vocab) + 1
  if len(flat) < 2:  # itemgetter returns a tuple from two items on.
    return np.fromiter(map(vocab.__getitem__, flat), np.int64, len(flat))
  # One C call for all look-ups (faster than mapping __getitem__).
  return np.array(operator.itemgetter(*flat)(vocab), np.int64)


def encode_texts(
  texts: Sequence[str], vocab: dict[str, int], single_spaced: bool = False
) -> Sentences:
  """`encode` of whitespace-split texts (faster than splitting one by one).

  Args:
    texts: the sentences.
    vocab: word -> id, updated in place.
    single_spaced: the caller knows that words are separated by exactly one
      space and no other whitespace occurs (word counts are then counted
      from the spaces).

  Returns:
    The flat `Sentences`.
  """
  flat = ' '.join(texts).split()
  words = _word_ids(flat, vocab)
  if single_spaced:
    lengths = np.fromiter(map(str.count, texts, itertools.repeat(' ')), np.int64, len(texts))
    lengths += np.fromiter(map(bool, texts), np.int64, len(texts))
  else:
    lengths = np.fromiter(map(len, map(str.split, texts)), np.int64, len(texts))
  return Sentences(words, lengths)


def split_sentences(sents: Sentences, n: int) -> tuple[Sentences, Sentences]:
  """The first `n` sentences and the rest."""
  cut = int(sents.lengths[:n].sum())
  return Sentences(sents.words[:cut], sents.lengths[:n]), Sentences(
    sents.words[cut:], sents.lengths[n:]
  )


def from_ids(sequences: Sequence[np.ndarray]) -> Sentences:
  """`Sentences` from integer id sequences (ids must be >= 1)."""
  lengths = np.fromiter(map(len, sequences), np.int64, len(sequences))
  words = np.concatenate([np.asarray(s, np.int64) for s in sequences]) if sequences else []
  return Sentences(np.asarray(words, np.int64), lengths)


def key_mode(max_word_id: int, max_n: int) -> str:
  """'packed' where word ids fit 16 bits each in a uint64, else 'hashed'."""
  return 'packed' if max_word_id < (1 << 16) and max_n <= 4 else 'hashed'


def _ngram_keys(sents: Sentences, max_n: int, mode: str) -> tuple[np.ndarray, ...]:
  """Keys of all n-gram occurrences.

  Args:
    sents: the sentences.
    max_n: highest order.
    mode: 'packed' or 'hashed' (uint64 keys, the same in every call and
      unique across orders) or 'local' (int64 ids unique within an order and
      this call only).

  Returns:
    (sentence, order, per-order list of keys) per occurrence.
  """
  lengths = sents.lengths
  sentence = np.repeat(np.arange(len(lengths)), lengths)
  starts_of = np.cumsum(lengths) - lengths
  remaining = lengths[sentence] - (np.arange(len(sentence)) - starts_of[sentence])
  if mode == 'packed' and int(sents.words.max(initial=0)) >= (1 << 16):
    raise ValueError('word ids must be below 2**16 for packed n-gram keys')
  words = sents.words.astype(np.uint64) if mode != 'local' else sents.words
  base = int(sents.words.max(initial=0)) + 1
  prev = np.zeros(len(words), words.dtype)
  out_s, out_o, out_k = [], [], []
  with np.errstate(over='ignore'):
    for n in range(1, max_n + 1):
      starts = np.flatnonzero(remaining >= n)
      last = words[starts + n - 1]
      if mode == 'packed':
        key = prev[starts] * _PACK_BASE + last
      elif mode == 'hashed':
        key = (prev[starts] + np.uint64(n)) * _HASH_MULT + last
      else:  # Local ids of the (n-1)-gram prefix, extended by one word.
        key = dense_ranks(prev[starts] * base + last)
      out_s.append(sentence[starts])
      out_o.append(np.full(len(starts), n - 1, np.int64))
      out_k.append(key)
      prev = np.zeros(len(words), words.dtype)
      prev[starts] = key
  return np.concatenate(out_s), np.concatenate(out_o), out_k


@dataclasses.dataclass(frozen=True)
class PairCounts:
  """n-gram entries of candidates and references, sorted by (clip, key).

  Row arrays [m] (one row per distinct n-gram of a sentence); within a
  (clip, key) group the candidate row, if any, comes first.

  Attributes:
    is_ref: bool [m].
    sentence: int64 [m], candidate index (= clip) or reference index.
    clip: int64 [m].
    key: int64 [m], dense n-gram id in [0, num_keys).
    order: int64 [m], n - 1.
    count: float64 [m], occurrences in the sentence.
    group: int64 [m], (clip, key) group of the row.
    first: int64 [g], first row of each group.
    cand_len: int64 [n], candidate word counts.
    ref_len: int64 [r], reference word counts.
    ref_clip: int64 [r], clip of each reference.
    key_values: uint64 [num_keys] packed key of each dense id (packed only).
  """

  is_ref: np.ndarray
  sentence: np.ndarray
  clip: np.ndarray
  key: np.ndarray
  order: np.ndarray
  count: np.ndarray
  group: np.ndarray
  first: np.ndarray
  cand_len: np.ndarray
  ref_len: np.ndarray
  ref_clip: np.ndarray
  key_values: np.ndarray | None

  @property
  def num_clips(self) -> int:
    return len(self.cand_len)


def pair_counts(
  cands: Sentences, refs: Sentences, ref_clip: np.ndarray, max_n: int, mode: str | None = None
) -> PairCounts:
  """Counts and aligns the n-grams of candidates and their references.

  Args:
    cands: [n] candidates; candidate i belongs to clip i.
    refs: [r] references.
    ref_clip: int64 [r], clip of each reference.
    max_n: highest n-gram order.
    mode: key scheme, see `_ngram_keys`; None: 'local' (exact for any
      vocabulary, the fastest; dense ids equal to 'packed' ones where both
      apply). With 'packed' or 'hashed', `key_values` gives the
      call-independent key of each dense id.

  Returns:
    The `PairCounts`.
  """
  n = len(cands.lengths)
  both = Sentences(
    np.concatenate([cands.words, refs.words]), np.concatenate([cands.lengths, refs.lengths])
  )
  mode = 'local' if mode is None else mode
  sentence, order, keys = _ngram_keys(both, max_n, mode)
  key_values, key = _dense_keys(keys, mode)
  num_keys = int(key.max(initial=-1)) + 1
  order_of_key = np.zeros(num_keys, np.int64)
  order_of_key[key] = order
  clip = np.concatenate([np.arange(n), np.asarray(ref_clip, np.int64)])[sentence]
  is_ref = (sentence >= n).astype(np.int64)
  sentence, is_ref, clip, key, counts = _count_runs(
    sentence, is_ref, key, clip, n, num_keys, len(both.lengths)
  )
  group, first = group_starts(clip, key)
  is_ref = is_ref.astype(bool)
  return PairCounts(
    is_ref=is_ref,
    sentence=np.where(is_ref, sentence - n, sentence),
    clip=clip,
    key=key,
    order=order_of_key[key],
    count=counts.astype(np.float64),
    group=group,
    first=first,
    cand_len=cands.lengths,
    ref_len=refs.lengths,
    ref_clip=np.asarray(ref_clip, np.int64),
    key_values=key_values,
  )


def dense_ranks(values: np.ndarray) -> np.ndarray:
  """Rank of each value among the distinct values: `np.unique`'s inverse, faster.

  The position of each value rides in the low bits of one sorted int64
  array: a plain sort, several times faster than the argsort of `np.unique`.

  Args:
    values: int64 [m], >= 0.

  Returns:
    int64 [m] in [0, number of distinct values).
  """
  size = len(values)
  bits = max(size - 1, 1).bit_length()
  if size == 0 or int(values.max()) >= 1 << (63 - bits):
    return np.unique(values, return_inverse=True)[1].reshape(-1).astype(np.int64)
  packed = np.sort((values << bits) | np.arange(size))
  ordered = packed >> bits
  new = np.empty(size, bool)
  new[0] = True
  np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
  ranks = np.empty(size, np.int64)
  ranks[packed & ((1 << bits) - 1)] = np.cumsum(new) - 1
  return ranks


def _dense_keys(keys: list[np.ndarray], mode: str) -> tuple[np.ndarray | None, np.ndarray]:
  """`(key_values or None, dense int64 id of every n-gram)` from per-order keys."""
  if mode != 'local':
    key_values, key = np.unique(np.concatenate(keys), return_inverse=True)
    return key_values, key.reshape(-1).astype(np.int64)
  offsets = np.cumsum([0] + [int(k.max(initial=-1)) + 1 for k in keys])
  return None, np.concatenate([k + o for k, o in zip(keys, offsets, strict=False)])


def _count_runs(sentence, is_ref, key, clip, num_clips: int, num_keys: int, num_sents: int):
  """Sorts n-gram occurrences by (clip, key, is_ref, sentence) and counts each run.

  One sort both counts and aligns.

  Returns:
    `(sentence, is_ref, clip, key, counts)`: the columns at each run, and the
    run lengths.
  """
  s_bits, k_bits = max(num_sents - 1, 1).bit_length(), max(num_keys - 1, 1).bit_length()
  if max(num_clips - 1, 1).bit_length() + k_bits + 1 + s_bits <= 62:
    # Bit fields (shifts, not divisions, to take them apart): clip | key | is_ref | sentence.
    combined = (((clip << k_bits) | key) << 1 | is_ref) << s_bits | sentence
    uniq, counts = np.unique(combined, return_counts=True)
    sentence, rest = uniq & ((1 << s_bits) - 1), uniq >> s_bits
    is_ref, rest = rest & 1, rest >> 1
    return sentence, is_ref, rest >> k_bits, rest & ((1 << k_bits) - 1), counts
  # Too many ids to pack into one int64: sort on four keys.
  perm = np.lexsort((sentence, is_ref, key, clip))
  sentence, is_ref, key, clip = sentence[perm], is_ref[perm], key[perm], clip[perm]
  _, run_start = group_starts(clip, key, is_ref, sentence)
  counts = np.diff(np.append(run_start, len(key)))
  sentence, is_ref, key, clip = (a[run_start] for a in (sentence, is_ref, key, clip))
  return sentence, is_ref, clip, key, counts


def group_starts(*columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Groups rows of lexicographically sorted columns by equal values.

  Args:
    *columns: equally long arrays, sorted lexicographically.

  Returns:
    (group index per row, first row of each group).
  """
  size = len(columns[0])
  new = np.zeros(size, bool)
  new[:1] = True
  for column in columns:
    new[1:] |= column[1:] != column[:-1]
  first = np.flatnonzero(new)
  return np.cumsum(new) - 1, first


def check_pairs(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> None:
  """Raises ValueError unless there is one non-empty reference list per candidate."""
  if len(candidates) != len(references):
    raise ValueError(f'{len(candidates)} candidates but {len(references)} reference lists')
  for i, refs in enumerate(references):
    if isinstance(refs, str) or len(refs) == 0:
      raise ValueError(f'clip {i}: references must be a non-empty list of strings')


def encode_pairs(
  candidates: Sequence[str], references: Sequence[Sequence[str]], vocab: dict[str, int]
) -> tuple[Sentences, Sentences, np.ndarray]:
  """Splits (on whitespace) and numbers tokenized candidates and references.

  Args:
    candidates: [n] tokenized candidates, one per clip.
    references: [n] lists of tokenized references (at least one per clip).
    vocab: word -> id, updated in place.

  Returns:
    (candidates, references flattened, int64 [r] clip of each reference).
  """
  check_pairs(candidates, references)
  cands = encode_texts(candidates, vocab)
  refs = encode_texts([r for rs in references for r in rs], vocab)
  ref_clip = np.repeat(np.arange(len(references)), [len(r) for r in references])
  return cands, refs, ref_clip


def text_pair_counts(
  candidates: Sequence[str], references: Sequence[Sequence[str]], max_n: int
) -> PairCounts:
  """`pair_counts` of tokenized captions (see `encode_pairs`)."""
  return pair_counts(*encode_pairs(candidates, references, {}), max_n)
