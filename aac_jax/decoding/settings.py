"""Decoding settings: `config.decode` as a frozen (hashable, jit-static) dataclass."""

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

# Token ids of docs/CONTRACTS.md (aac_jax.data.tokenizer; a test checks they agree).
PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
NUM_SPECIAL_IDS = 4  # PAD, BOS, EOS, UNK.

# 'conette_beam': CoNeTTE's beam search (aac_jax.decoding.conette_beam).
METHODS = ('greedy', 'beam', 'sample', 'conette_beam')

# English function words: the words that `ban_repeated_content_words` lets
# repeat. Map them to ids with the tokenizer (see `make_repeat_ban_mask`).
FUNCTION_WORDS = frozenset(
  'a an the and or but nor so yet of in on at to from with without by for as into onto '
  'over under near through across along around behind between during after before '
  'while then than again also very too is are was were be been being has have had can '
  'could it its this that these those there their they them he she his her him some '
  'someone something another other others one two up down out off away back not no '
  'more most much many few several each both all'.split()
)


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
  """How to decode; mirrors `config.decode` (configs/base.py).

  Attributes:
    method: 'greedy', 'beam', 'sample' or 'conette_beam' (CoNeTTE's
      search: beams retire as they end, best mean log-probability; see
      `conette_beam`).
    max_len: maximum tokens per caption, EOS included (= output length).
    min_len: minimum words before EOS (EOS is banned at earlier steps).
    beam_size: beams per clip ('beam').
    length_penalty: alpha in the score logp / ((5 + len) / 6) ** alpha, len
      counting EOS ('beam').
    no_repeat_ngram_size: no n-gram of this size occurs twice in an output
      (0 = off).
    ban_repeated_content_words: a token outside the function words may occur
      only once (needs a repeat-ban mask, see `repeat_ban_mask_for`).
    repeatable_tokens: the tokens that may repeat under that ban; empty =
      `FUNCTION_WORDS` (special tokens may repeat too), else exactly these
      (every other token, special ones included, at most once: CoNeTTE's
      'content_words' mode with its stop-word list).
    temperature: divides the logits before sampling ('sample'; <= 0 = greedy).
    top_k: sample among the k most likely tokens (0 = off).
    top_p: sample from the smallest set with probability >= top_p (1 = off).
    pad_id: padding id written after EOS.
    bos_id: first decoder input.
    eos_id: end of caption.
    rerank: 'none', or 'clap': 'beam' keeps all `beam_size` finished beams,
      'sample' draws `beam_size` captions, and the caption with the best
      decoder score + `rerank_weight` x CLAP audio-text cosine is chosen
      (SLAM-AAC's CLAP-Refine; `aac_jax.decoding.rerank`, docs/clap.md).
    rerank_weight: weight of the CLAP cosine in that sum.
    rerank_clap_dir: the CLAP folder (`tools/convert_checkpoint.py clap`).
  """

  method: str = 'greedy'
  max_len: int = 24
  min_len: int = 1
  beam_size: int = 3
  length_penalty: float = 0.6
  no_repeat_ngram_size: int = 0
  ban_repeated_content_words: bool = False
  repeatable_tokens: tuple[str, ...] = ()
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  pad_id: int = PAD_ID
  bos_id: int = BOS_ID
  eos_id: int = EOS_ID
  rerank: str = 'none'
  rerank_weight: float = 1.0
  rerank_clap_dir: str = ''

  def __post_init__(self):
    # Config files give lists; the settings must stay hashable (jit-static).
    object.__setattr__(self, 'repeatable_tokens', tuple(self.repeatable_tokens))
    if self.method not in METHODS:
      raise ValueError(f'decode method must be one of {METHODS}, got {self.method!r}')
    if self.max_len < 1 or self.min_len >= self.max_len:
      raise ValueError(
        f'need 1 <= max_len and min_len < max_len, got {self.min_len}, {self.max_len}'
      )
    if self.beam_size < 1 or self.top_k < 0 or not 0.0 < self.top_p <= 1.0:
      raise ValueError(f'bad beam_size/top_k/top_p: {self.beam_size}, {self.top_k}, {self.top_p}')
    if self.no_repeat_ngram_size >= self.max_len:
      raise ValueError('no_repeat_ngram_size must be < max_len')
    _check_rerank(self)

  def replace(self, **changes) -> 'DecodeSettings':
    """Returns a copy with `changes` applied."""
    return dataclasses.replace(self, **changes)


RERANKERS = ('none', 'clap')


def _check_rerank(settings: DecodeSettings) -> None:
  if settings.rerank not in RERANKERS:
    raise ValueError(f'decode rerank must be one of {RERANKERS}, got {settings.rerank!r}')
  if settings.rerank == 'none':
    return
  if settings.method not in ('beam', 'sample'):
    raise ValueError(
      f"decode rerank={settings.rerank!r} needs method 'beam' or 'sample' (candidates), "
      f'got {settings.method!r}'
    )
  if not settings.rerank_clap_dir:
    raise ValueError('decode rerank=clap needs decode.rerank_clap_dir (a CLAP folder)')


def make_decode_settings(
  decode_cfg: Mapping[str, Any] | None = None, **overrides
) -> DecodeSettings:
  """Builds settings from `config.decode`, overridden per call.

  Args:
    decode_cfg: `config.decode` (a ConfigDict or any mapping), or None for
      the defaults.
    **overrides: fields to change, e.g. `method='beam', beam_size=5`.

  Returns:
    A `DecodeSettings`.

  Raises:
    ValueError: for a field `DecodeSettings` does not have.
  """
  values = dict(decode_cfg.items()) if decode_cfg is not None else {}
  values.update(overrides)
  known = {f.name for f in dataclasses.fields(DecodeSettings)}
  unknown = set(values) - known
  if unknown:
    raise ValueError(f'unknown decode settings: {sorted(unknown)}')
  return DecodeSettings(**values)


def model_decode_settings(
  decode_cfg: Mapping[str, Any] | None, max_decode_len: int, **overrides
) -> DecodeSettings:
  """`make_decode_settings`, checked against the model's decoder positions.

  The one place every user of a trained model (evaluation, SCST sampling,
  captioning, export) turns a decode config into settings.

  Args:
    decode_cfg: `config.decode` or `config.eval.decode` (None = defaults).
    max_decode_len: the model's `max_decode_len`.
    **overrides: fields to change (None values are ignored).

  Raises:
    ValueError: invalid settings, or `max_len` beyond the model's positions.
  """
  settings = make_decode_settings(
    decode_cfg, **{k: v for k, v in overrides.items() if v is not None}
  )
  if settings.max_len > max_decode_len:
    raise ValueError(
      f'decode max_len {settings.max_len} exceeds the model max_decode_len {max_decode_len}; '
      f'use a max_len <= {max_decode_len}'
    )
  return settings


def make_repeat_ban_mask(vocab_size: int, function_word_ids: Iterable[int] = ()) -> np.ndarray:
  """Which tokens `ban_repeated_content_words` forbids from repeating.

  Args:
    vocab_size: number of token ids.
    function_word_ids: ids that may repeat (e.g. the tokenizer's ids of
      `FUNCTION_WORDS`); special ids may always repeat.

  Returns:
    bool `[vocab_size]`, True for content words.
  """
  mask = np.ones((vocab_size,), dtype=bool)
  mask[:NUM_SPECIAL_IDS] = False
  ids = np.asarray(list(function_word_ids), dtype=np.int64)
  mask[ids[(ids >= 0) & (ids < vocab_size)]] = False
  return mask


def repeat_ban_mask_for(tokens: Sequence[str], settings: DecodeSettings) -> np.ndarray:
  """The repeat-ban mask of a vocabulary under `settings`.

  Args:
    tokens: the vocabulary (index = id).
    settings: `repeatable_tokens` decides which tokens may repeat.

  Returns:
    bool `[len(tokens)]`, True for tokens that may occur only once.
  """
  if settings.repeatable_tokens:
    repeatable = set(settings.repeatable_tokens)
    return np.array([token not in repeatable for token in tokens], dtype=bool)
  ids = [i for i, token in enumerate(tokens) if token in FUNCTION_WORDS]
  return make_repeat_ban_mask(len(tokens), ids)
