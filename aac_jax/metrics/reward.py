"""Batched CIDEr-D reward for self-critical sequence training (SCST).

The document frequencies come from a fixed reference corpus (usually every
reference of the training split), counted once per clip as in CIDEr-D, with
N = its number of clips; they are computed once, at construction. A batch
of (candidate, references) pairs is then scored with the vectorised CIDEr-D
of `cider.py`: same n-gram weights, clipping, length penalty and scaling, so
with the evaluation set itself as the corpus the reward equals
`cider.cider_d_scores` on the same words.

Entry points: `score(candidates, references)` takes captions;
`score_clips(candidates, clip_index)` scores against the corpus's own
references by clip (no reference is tokenized again: the SCST case);
`score_ids` / `from_token_ids` work on decoder token ids (special ids as in
docs/CONTRACTS.md) and skip text altogether: their n-grams are n-grams of
ids, which are word n-grams only for a word vocabulary
(`aac_jax.data.tokenizer.Tokenizer`). With a subword vocabulary (a language
model's BPE, `CaptionTokenizer`) they would count pieces ("barking" ->
"b ar k in g"), so score the decoded text instead, as SCST does
(`aac_jax.scst.rewards.score_rollout`).

Tokenization: training-time rewards score the model's own words, which are
already DCASE-normalised (lower case, no punctuation), so captions are
split with `aac_jax.data.text.caption_words` (fast, no PTB emulation) by
default, and the words of every caption seen are cached; pass `tokenize=`
to change it. The reward is therefore CIDEr-D on DCASE words, not on PTB
tokens as in evaluation (the two differ on punctuation-bearing tokens such
as "dog's" -> "dogs" vs "dog 's").

n-grams are identified by packing word ids into uint64 keys (exact for ids
below 2**16, see `ngrams.py`).
"""

import functools
from collections.abc import Callable, Sequence

import numpy as np

from aac_jax.data import text
from aac_jax.metrics import cider, ngrams

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2  # docs/CONTRACTS.md


def strip_ids(ids, eos_id: int = EOS_ID) -> ngrams.Sentences:
  """Words of decoded sequences: up to the first EOS, without PAD and BOS.

  Args:
    ids: int [m, length] array, or m sequences of ids (ragged).
    eos_id: end-of-sequence id.

  Returns:
    The m sentences (some may be empty).
  """
  if not isinstance(ids, np.ndarray):
    rows = [np.asarray(r, np.int64).reshape(-1) for r in ids]
    width = max((len(r) for r in rows), default=0)
    padded = np.full((len(rows), width), PAD_ID, np.int64)
    for i, r in enumerate(rows):
      padded[i, : len(r)] = r
    ids = padded
  ids = np.asarray(ids, np.int64).reshape(len(ids), -1)
  keep = (np.cumsum(ids == eos_id, axis=1) == 0) & (ids != PAD_ID) & (ids != BOS_ID)
  return ngrams.Sentences(ids[keep], keep.sum(axis=1).astype(np.int64))


def _flatten_references(references, eos_id: int) -> tuple[ngrams.Sentences, np.ndarray]:
  """Strips [n, refs, length] ids (or ragged lists); drops empty references."""
  if isinstance(references, np.ndarray):
    per_clip = [references.shape[1]] * references.shape[0]
    flat = references.reshape(-1, references.shape[-1])
  else:
    per_clip = [len(clip) for clip in references]
    flat = [r for clip in references for r in clip]
  sents = strip_ids(flat, eos_id)
  ref_clip = np.repeat(np.arange(len(per_clip)), per_clip)
  keep = sents.lengths > 0
  word_keep = np.repeat(keep, sents.lengths)
  return ngrams.Sentences(sents.words[word_keep], sents.lengths[keep]), ref_clip[keep]


class CiderDReward:
  """CIDEr-D with document frequencies precomputed on a reference corpus.

  Example:
    reward = CiderDReward(train_references)  # list of lists of captions
    r = reward.score(sampled_captions, references_of_each)  # float64 [n]
    r = reward.score_clips(sampled_captions, train_clip_index)  # same, faster
  """

  def __init__(
    self,
    reference_corpus: Sequence[Sequence[str]],
    *,
    max_n: int = 4,
    sigma: float = cider.SIGMA,
    tokenize: Callable[[str], list[str]] = text.caption_words,
  ):
    """Counts document frequencies over a corpus of caption strings.

    Args:
      reference_corpus: per clip, its reference captions.
      max_n: highest n-gram order.
      sigma: width of the length penalty.
      tokenize: caption -> words, for the corpus and every scored caption.
    """
    self._max_n, self._sigma = max_n, sigma
    # References come back every epoch: remember their words.
    self._tokenize = functools.lru_cache(maxsize=1 << 18)(lambda c: tuple(tokenize(c)))
    self._vocab: dict[str, int] = {}
    words = [[self._tokenize(c) for c in refs] for refs in reference_corpus]
    sents = ngrams.encode([w for refs in words for w in refs], self._vocab)
    # Room for words first seen in scored batches (see `score`).
    self._mode = ngrams.key_mode(2 * len(self._vocab), max_n)
    ref_clip = np.repeat(np.arange(len(words)), [len(refs) for refs in words])
    self._fit(sents, ref_clip, len(words))

  @classmethod
  def from_token_ids(
    cls,
    reference_corpus: Sequence[Sequence[Sequence[int]]],
    *,
    max_n: int = 4,
    sigma: float = cider.SIGMA,
    eos_id: int = EOS_ID,
    vocab_size: int | None = None,
  ) -> 'CiderDReward':
    """Counts document frequencies over a corpus of token-id sequences.

    Args:
      reference_corpus: per clip, its references as id sequences: an int
        [clips, refs, length] array or ragged lists (see `strip_ids`).
        References empty after stripping are skipped.
      max_n: highest n-gram order.
      sigma: width of the length penalty.
      eos_id: end-of-sequence id.
      vocab_size: largest id + 1 that will ever be scored (default: from the
        corpus); ids of 2**16 and above switch to hashed keys.

    Returns:
      A reward scorer whose `score_ids` takes id arrays.
    """
    self = cls.__new__(cls)
    self._max_n, self._sigma, self._tokenize, self._vocab = max_n, sigma, None, None
    self._eos_id = eos_id
    sents, ref_clip = _flatten_references(reference_corpus, eos_id)
    largest = vocab_size if vocab_size is not None else int(sents.words.max(initial=0)) + 1
    self._mode = ngrams.key_mode(largest - 1, max_n)
    self._fit(sents, ref_clip, len(reference_corpus))
    return self

  def _fit(self, sents: ngrams.Sentences, ref_clip: np.ndarray, num_clips: int) -> None:
    """Stores sorted n-gram keys with their document frequencies."""
    # The corpus references, for `score_clips`: flat words, by clip.
    self._corpus = sents
    self._corpus_first = np.searchsorted(ref_clip, np.arange(num_clips + 1))
    self._word_start = np.append(0, np.cumsum(sents.lengths))
    empty = ngrams.Sentences(np.zeros(0, np.int64), np.zeros(0, np.int64))
    counts = ngrams.pair_counts(empty, sents, ref_clip, self._max_n, self._mode)
    # Rows are sorted by (clip, key): each group is one n-gram of one clip.
    df = np.bincount(counts.key[counts.first], minlength=len(counts.key_values))
    self._keys, self._df = counts.key_values, np.append(df.astype(np.float64), 0.0)
    self._log_n = np.log(float(max(num_clips, 1)))

  @property
  def num_ngrams(self) -> int:
    """Distinct n-grams in the reference corpus."""
    return len(self._keys)

  def _idf(self, key_values: np.ndarray) -> np.ndarray:
    index = np.searchsorted(self._keys, key_values)
    found = np.zeros(len(key_values), bool)
    inside = index < len(self._keys)
    found[inside] = self._keys[index[inside]] == key_values[inside]
    df = self._df[np.where(found, index, len(self._keys))]  # Last entry: df 0.
    return self._log_n - np.log(np.maximum(1.0, df))

  def _score(self, cands: ngrams.Sentences, refs: ngrams.Sentences, ref_clip) -> np.ndarray:
    if np.bincount(ref_clip, minlength=len(cands.lengths)).min(initial=1) == 0:
      raise ValueError('every candidate needs at least one reference')
    counts = ngrams.pair_counts(cands, refs, ref_clip, self._max_n, self._mode)
    return cider.cider_d_from_counts(counts, self._idf(counts.key_values), self._max_n, self._sigma)

  def score(self, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
    """CIDEr-D of each candidate against its own references.

    Args:
      candidates: [n] captions.
      references: [n] lists of reference captions.

    Returns:
      float64 [n] rewards.
    """
    if self._vocab is None:
      raise TypeError('this scorer was built from token ids: use score_ids')
    if len(candidates) != len(references):
      raise ValueError(f'{len(candidates)} candidates but {len(references)} reference lists')
    # Unseen words get ids for this call only, so the vocabulary stays fixed.
    vocab = dict(self._vocab)
    cands = ngrams.encode([self._tokenize(c) for c in candidates], vocab)
    refs = ngrams.encode([self._tokenize(r) for rs in references for r in rs], vocab)
    ref_clip = np.repeat(np.arange(len(references)), [len(r) for r in references])
    return self._score(cands, refs, ref_clip)

  def _corpus_references(self, clip_index) -> tuple[ngrams.Sentences, np.ndarray]:
    """The stored corpus references of the given clips, and their positions."""
    clip_index = np.asarray(clip_index, np.int64).reshape(-1)
    counts = self._corpus_first[clip_index + 1] - self._corpus_first[clip_index]
    sentence = np.repeat(self._corpus_first[clip_index], counts)
    sentence += np.arange(len(sentence)) - np.repeat(np.cumsum(counts) - counts, counts)
    lengths = self._corpus.lengths[sentence]
    word = np.repeat(self._word_start[sentence], lengths)
    word += np.arange(len(word)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    ref_clip = np.repeat(np.arange(len(clip_index)), counts)
    return ngrams.Sentences(self._corpus.words[word], lengths), ref_clip

  def score_clips(self, candidates, clip_index) -> np.ndarray:
    """CIDEr-D against the corpus references of given clips (fastest path).

    For SCST, where the references are those of the training clips the
    scorer was built from: no reference is tokenized or encoded again.

    Args:
      candidates: [n] captions (scorer built from text) or token ids (built
        with `from_token_ids`; see `score_ids`).
      clip_index: int [n], corpus clip of each candidate.

    Returns:
      float64 [n] rewards.
    """
    if self._vocab is not None:
      vocab = dict(self._vocab)
      cands = ngrams.encode([self._tokenize(c) for c in candidates], vocab)
    else:
      cands = strip_ids(candidates, self._eos_id)
    refs, ref_clip = self._corpus_references(clip_index)
    if len(cands.lengths) != len(np.asarray(clip_index).reshape(-1)):
      raise ValueError(f'{len(cands.lengths)} candidates but {np.size(clip_index)} clip indices')
    return self._score(cands, refs, ref_clip)

  def score_ids(self, candidates, references) -> np.ndarray:
    """CIDEr-D of decoded token ids.

    Args:
      candidates: int [n, length] (or n sequences) of token ids; each is cut
        at its first EOS, PAD and BOS are dropped.
      references: int [n, refs, length] (or n lists of sequences); references
        that are empty after stripping (all PAD) are ignored.

    Returns:
      float64 [n] rewards.
    """
    if self._vocab is not None:
      raise TypeError('this scorer was built from captions: use score')
    cands = strip_ids(candidates, self._eos_id)
    refs, ref_clip = _flatten_references(references, self._eos_id)
    if len(references) != len(cands.lengths):
      raise ValueError(f'{len(cands.lengths)} candidates but {len(references)} reference lists')
    return self._score(cands, refs, ref_clip)
