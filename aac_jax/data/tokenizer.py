"""Word-level caption tokenizer with the special ids of docs/CONTRACTS.md.

The vocabulary is built from the training captions after DCASE normalisation
(`aac_jax.data.text.normalize_caption`), keeping words seen at least
`min_count` times. It is saved as plain text, one token per line, the line
index being the id, so a run can always be decoded with the file beside it.
"""

import collections
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from aac_jax import files
from aac_jax.data import llm_tokenizer, mixture, sources, text

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
UNK_ID = 3
SPECIAL_TOKENS = ('<pad>', '<bos>', '<eos>', '<unk>')
VOCAB_FILENAME = 'vocab.txt'


class Tokenizer:
  """Maps normalised caption words to ids and back."""

  def __init__(self, tokens: Sequence[str]):
    """Wraps a full token list (specials first, then words; index = id).

    Args:
      tokens: `SPECIAL_TOKENS` followed by distinct words.

    Raises:
      ValueError: where the specials are missing or a token repeats.
    """
    tokens = list(tokens)
    if tuple(tokens[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
      raise ValueError(f'vocabulary must start with {SPECIAL_TOKENS}, got {tokens[:4]}')
    if len(set(tokens)) != len(tokens):
      raise ValueError('vocabulary has repeated tokens')
    self._tokens = tokens
    self._ids = {token: i for i, token in enumerate(tokens)}

  @classmethod
  def build(
    cls, captions: Iterable[str], min_count: int = 1, extra_tokens: Sequence[str] = ()
  ) -> 'Tokenizer':
    """Builds the vocabulary of `captions`.

    Args:
      captions: raw caption strings (normalised here).
      min_count: words seen fewer times become `<unk>` when encoding.
      extra_tokens: tokens appended after the words (a mixture's task
        tokens `<bos_{task}>`, as CoNeTTE places them); never produced by
        `encode`, since captions are normalised first.

    Returns:
      A tokenizer whose words are ordered by decreasing count, ties broken
      alphabetically, so the same captions always give the same ids.
    """
    counts = collections.Counter()
    for caption in captions:
      counts.update(text.caption_words(caption))
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return cls(SPECIAL_TOKENS + tuple(words) + tuple(extra_tokens))

  @classmethod
  def load(cls, path: str | os.PathLike) -> 'Tokenizer':
    """Reads a vocabulary file written by `save`."""
    lines = epath.Path(path).read_text(encoding='utf-8').split('\n')
    if lines and lines[-1] == '':
      lines.pop()
    return cls(lines)

  def save(self, path: str | os.PathLike) -> None:
    """Writes the vocabulary, one token per line, atomically (`aac_jax.files`).

    Several processes may save the same vocabulary at once: readers never see
    half a file.
    """
    files.write_text(path, ''.join(token + '\n' for token in self._tokens))

  @property
  def vocab_size(self) -> int:
    """Number of ids, specials included."""
    return len(self._tokens)

  @property
  def tokens(self) -> list[str]:
    """All tokens; index = id."""
    return list(self._tokens)

  def encode(self, caption: str) -> list[int]:
    """Normalises `caption` and maps its words to ids (no BOS/EOS)."""
    return [self._ids.get(word, UNK_ID) for word in text.caption_words(caption)]

  def decode(self, ids: Iterable[int]) -> str:
    """Maps ids back to words; stops at EOS, skips PAD and BOS."""
    words = []
    for i in ids:
      i = int(i)
      if i == EOS_ID:
        break
      if i in (PAD_ID, BOS_ID):
        continue
      words.append(self._tokens[i])
    return ' '.join(words)

  def encode_targets(self, caption: str, max_tokens: int) -> np.ndarray:
    """Tokenizes a caption into fixed-length training targets.

    Args:
      caption: raw caption text.
      max_tokens: output length, EOS included.

    Returns:
      `[max_tokens]` int32: `[w1 .. wn, EOS, PAD ...]`; a caption longer than
      `max_tokens - 1` words is truncated and still ends with EOS.
    """
    return fixed_length_targets(self.encode(caption), max_tokens)


def fixed_length_targets(ids: Sequence[int], max_tokens: int) -> np.ndarray:
  """`[max_tokens]` int32 `[ids .., EOS, PAD ...]`, `ids` cut to `max_tokens - 1`."""
  ids = list(ids)[: max_tokens - 1] + [EOS_ID]
  targets = np.full((max_tokens,), PAD_ID, dtype=np.int32)
  targets[: len(ids)] = ids
  return targets


def load_vocab(path: str | os.PathLike):
  """A run's tokenizer from its `vocab.txt`: the word list, or a language model's.

  A run whose decoder is a converted language model keeps that model's
  tokenizer there as one JSON document
  (`CaptionTokenizer`); every other run, the
  word list of `Tokenizer.save`.
  """
  content = epath.Path(path).read_text(encoding='utf-8')
  if content.startswith('{'):
    return CaptionTokenizer.from_json(content)
  return Tokenizer.load(path)


CAPTION_FORMAT = 'aac_jax.llm_caption_tokenizer'
ROLES = ('pad', 'bos', 'eos', 'unk')  # Run ids 0..3 (docs/CONTRACTS.md), in this order.


def special_partners(
  tokenizer: llm_tokenizer.LlmTokenizer, token_ids: dict[str, Any], vocab_size: int
) -> tuple[int, ...]:
  """The language model's ids that play the run's PAD, BOS, EOS and UNK (run ids 0..3).

  EOS is the checkpoint's `eos_token_id` (the first of a list); BOS and PAD
  its `bos_token_id` / `pad_token_id` where they are set and not taken yet,
  else the first free special token of `tokenizer.json` (Qwen2 has no BOS:
  `<|im_start|>` then); UNK is id 3 itself unless taken (a byte-level
  tokenizer never produces an unknown token).

  Args:
    tokenizer: the checkpoint's tokenizer.
    token_ids: `bos_token_id`, `eos_token_id`, `pad_token_id` of its `config.json`.
    vocab_size: the language model's token ids.

  Raises:
    ValueError: no EOS, or no special token left for a role.
  """
  eos = token_ids.get('eos_token_id')
  eos = eos[0] if isinstance(eos, list) and eos else eos
  if not isinstance(eos, int):
    raise ValueError('the language model names no eos_token_id in its config.json')
  wanted = {
    'pad': token_ids.get('pad_token_id'),
    'bos': token_ids.get('bos_token_id'),
    'eos': eos,
    'unk': 3,
  }
  taken = {eos}
  partners = {'eos': eos}
  free = [i for i in tokenizer.special_ids() if i < vocab_size]
  for role in ('bos', 'pad', 'unk'):
    choice = wanted[role]
    if not isinstance(choice, int) or choice in taken or choice >= vocab_size:
      choice = next((i for i in free if i not in taken), None)
    if choice is None:
      raise ValueError(f'the tokenizer has no special token left to play {role.upper()}')
    partners[role] = choice
    taken.add(choice)
  return tuple(partners[role] for role in ROLES)


def run_order(partners: tuple[int, ...], vocab_size: int) -> np.ndarray:
  """`order[run_id] = language-model id`: a permutation with `order[:4] = partners`.

  Every other id keeps its number where it can; the ids 0..3 that are not
  partners take the run ids the partners left.
  """
  order = np.arange(vocab_size)
  order[: len(partners)] = partners
  moved = sorted(set(range(len(partners))) - set(partners))
  freed = sorted(p for p in partners if p >= len(partners))
  order[freed] = moved
  return order


class CaptionTokenizer:
  """The run's tokenizer of a language-model decoder: a checkpoint's ids, specials swapped in.

  Run ids 0..3 are PAD, BOS, EOS, UNK as everywhere in aac_jax
  (docs/CONTRACTS.md); they are the checkpoint's ids `partners`
  (`special_partners`; `aac_jax.models.llm_bridge.caption_tokenizer` builds
  one from a converted folder), and the ids those held take the partners'
  places (`run_order`). The converted weights are loaded in the same order
  (`aac_jax.models.llm.reorder_vocab`), so the model sees each token as the
  checkpoint did. Captions are tokenised as written (no normalisation), as
  the checkpoint's own tokenizer does. Saved as JSON in the run's
  `vocab.txt` (`load_vocab` reads either kind).
  """

  def __init__(self, llm: llm_tokenizer.LlmTokenizer, partners: tuple[int, ...], vocab_size: int):
    self._llm = llm
    self.partners = tuple(int(p) for p in partners)
    self._vocab_size = int(vocab_size)
    self.order = run_order(self.partners, self._vocab_size)
    self._run_ids = np.argsort(self.order)
    self._tokens = None

  def to_json(self) -> str:
    """The whole tokenizer as one JSON document (what `save` writes)."""
    return json.dumps(
      {
        'format': CAPTION_FORMAT,
        'vocab_size': self._vocab_size,
        'partners': list(self.partners),
        'tokenizer': self._llm.to_str(),
      }
    )

  @classmethod
  def from_json(cls, text: str) -> 'CaptionTokenizer':
    """Reads `to_json`'s document."""
    record = json.loads(text)
    if record.get('format') != CAPTION_FORMAT:
      raise ValueError(f'not a {CAPTION_FORMAT} document')
    llm = llm_tokenizer.LlmTokenizer.from_str(record['tokenizer'])
    return cls(llm, tuple(record['partners']), record['vocab_size'])

  def save(self, path: str | os.PathLike) -> None:
    """Writes `to_json()` atomically (`aac_jax.files`)."""
    files.write_text(path, self.to_json() + '\n')

  @property
  def vocab_size(self) -> int:
    """The language model's token ids (may exceed the tokenizer's: padded embeddings)."""
    return self._vocab_size

  @property
  def tokens(self) -> list[str]:
    """The text of each run id (index = id; '' for ids the tokenizer lacks).

    Decoded once (a Qwen vocabulary has 151,936 ids; every validation asks).
    """
    if self._tokens is None:
      known = self._llm.vocab_size
      self._tokens = [self._llm.decode([int(i)]).strip() if i < known else '' for i in self.order]
    return list(self._tokens)

  def llm_ids(self, run_ids: list[int]) -> list[int]:
    """The checkpoint's ids of run ids."""
    return [int(self.order[i]) for i in run_ids]

  def encode(self, caption: str) -> list[int]:
    """Run ids of `caption` (no BOS/EOS)."""
    ids = np.asarray(self._llm.encode(caption.strip()), np.int64)
    return self._run_ids[ids].tolist()

  def decode(self, ids: Iterable[int]) -> str:
    """Text of run ids; stops at EOS, skips PAD and BOS (as the word tokenizer)."""
    kept = []
    for i in ids:
      i = int(i)
      if i == EOS_ID:
        break
      if i not in (PAD_ID, BOS_ID):
        kept.append(int(self.order[i]))
    return self._llm.decode([i for i in kept if i < self._llm.vocab_size]).strip()

  def encode_targets(self, caption: str, max_tokens: int) -> np.ndarray:
    """`[max_tokens]` int32 `[w1 .. wn, EOS, PAD ...]` (`fixed_length_targets`)."""
    return fixed_length_targets(self.encode(caption), max_tokens)


def with_task_tokens(decoder_inputs, task_tokens):
  """Puts each example's task token at position 0 (CoNeTTE's `<bos_{task}>`).

  Args:
    decoder_inputs: `[b, ..., length]` from `shift_right` (BOS first).
    task_tokens: `[b]` int ids; -1 keeps BOS.

  Returns:
    `[b, ..., length]` int32 jax array.
  """
  decoder_inputs = jnp.asarray(decoder_inputs, dtype=jnp.int32)
  tokens = jnp.asarray(task_tokens, dtype=jnp.int32).reshape(
    (-1,) + (1,) * (decoder_inputs.ndim - 1)
  )
  first = jnp.where(tokens >= 0, tokens, decoder_inputs[..., :1])
  return decoder_inputs.at[..., :1].set(first)


def decoder_inputs(batch) -> jnp.ndarray:
  """Teacher-forcing decoder inputs of a train batch, `[b, L]` or `[b, R, L]`.

  `shift_right(batch['targets'])`, with each example's task token first
  where the batch holds `task_tokens` (a mixture, `aac_jax.data.mixture`).
  """
  inputs = shift_right(batch['targets'])
  if 'task_tokens' in batch:
    inputs = with_task_tokens(inputs, batch['task_tokens'])
  return inputs


def shift_right(targets):
  """Makes decoder inputs: BOS in front, the last position dropped.

  Args:
    targets: `[..., length]` int token ids.

  Returns:
    `[..., length]` int32 jax array `[BOS, t_0, ..., t_{length-2}]`.
  """
  targets = jnp.asarray(targets, dtype=jnp.int32)
  widths = [(0, 0)] * (targets.ndim - 1) + [(1, 0)]
  return jnp.pad(targets[..., :-1], widths, constant_values=BOS_ID)


def _vocab_cache_path(source, split: str, min_count: int) -> epath.Path:
  return epath.Path(sources.source_dir(source)) / f'vocab_{split}_min{min_count}.txt'


def _mixture_vocabulary(cfg: ml_collections.ConfigDict) -> Tokenizer:
  """The words of every mixture entry's captions, then the entries' task tokens."""
  entries = mixture.parse(cfg)
  captions = []
  for entry in entries:
    source = sources.open_source(mixture.entry_config(cfg, entry), entry.split)
    captions += [c for _, caps in sources.scan_ids_and_captions(source) for c in caps]
  extra = [mixture.task_token(task) for task in mixture.tasks(entries)]
  return Tokenizer.build(captions, cfg.vocab_min_count, extra_tokens=extra)


def load_or_build(cfg: ml_collections.ConfigDict, source, workdir: str | None = None) -> Tokenizer:
  """Returns the run's tokenizer, building the vocabulary once per dataset.

  Look-up order: `workdir/vocab.txt` (a resumed run keeps its ids), then the
  copy saved beside the dataset's files, then a fresh build from the
  captions of `source` with `cfg.vocab_min_count`. With `cfg.mixture` the
  words of every entry's split, then the entries' task tokens, saved in
  `workdir` only. The result is saved
  beside the data (best effort: the data folder may be read-only) and in
  `workdir`.

  Args:
    cfg: `config.dataset`.
    source: the open `cfg.train_split` (`aac_jax.data.sources.open_source`).
    workdir: the run's folder, or None.

  Returns:
    The tokenizer.
  """
  run_path = epath.Path(workdir) / VOCAB_FILENAME if workdir else None
  if run_path is not None and run_path.exists():
    return load_vocab(run_path)
  if cfg.mixture:
    tokenizer = _mixture_vocabulary(cfg)
    if run_path is not None:
      tokenizer.save(run_path)
    return tokenizer
  data_path = _vocab_cache_path(source, cfg.train_split, cfg.vocab_min_count)
  if data_path.exists():
    tokenizer = Tokenizer.load(data_path)
  else:
    captions = [c for _, caps in sources.scan_ids_and_captions(source) for c in caps]
    tokenizer = Tokenizer.build(captions, cfg.vocab_min_count)
    try:
      tokenizer.save(data_path)
    except OSError as e:
      logging.warning('Could not save the vocabulary beside the data (%s): %s', data_path, e)
  if run_path is not None:
    tokenizer.save(run_path)
  return tokenizer
