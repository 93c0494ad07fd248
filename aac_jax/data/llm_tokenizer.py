"""A language model's own tokenizer, read from its `tokenizer.json` (`tokenizers`, no transformers).

The ids are those of the checkpoint (transformers' fast tokenizer reads the
same file), so captions and prompts feed a converted Llama / Qwen2 decoder
(`aac_jax.convert.llm`) as it was trained.
"""

import json
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

TOKENIZER_FILE = 'tokenizer.json'


class LlmTokenizer:
  """`encode(text) -> ids`, `decode(ids) -> text` with a checkpoint's tokenizer."""

  def __init__(self, tokenizer):
    self._tokenizer = tokenizer

  @classmethod
  def load(cls, folder: str) -> 'LlmTokenizer':
    """From `folder/tokenizer.json` (a Hugging Face or converted folder)."""
    try:
      import tokenizers
    except ImportError as error:
      raise ImportError(
        'the llm tokenizer needs `pip install tokenizers` (aac_jax[fense] has it)'
      ) from error
    path = os.path.join(folder, TOKENIZER_FILE)
    if not os.path.isfile(path):
      raise FileNotFoundError(f'{path} is missing: the language model folder has no tokenizer')
    return cls(tokenizers.Tokenizer.from_file(path))

  @classmethod
  def from_str(cls, text: str) -> 'LlmTokenizer':
    """From the text of a `tokenizer.json`."""
    import tokenizers

    return cls(tokenizers.Tokenizer.from_str(text))

  def to_str(self) -> str:
    """The `tokenizer.json` text."""
    return self._tokenizer.to_str()

  def special_ids(self) -> list[int]:
    """Ids of the added tokens marked special, ascending."""
    added = self._tokenizer.get_added_tokens_decoder()
    return sorted(i for i, token in added.items() if token.special)

  @property
  def vocab_size(self) -> int:
    """Ids the tokenizer knows (special tokens included)."""
    return self._tokenizer.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
    """Token ids of `text` (with the post-processor's specials if `add_special_tokens`)."""
    return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

  def decode(self, ids: list[int]) -> str:
    """Text of `ids`, special tokens dropped."""
    return self._tokenizer.decode(list(ids), skip_special_tokens=True)

  def token_id(self, token: str) -> int:
    """Id of one token (e.g. an end-of-text marker); ValueError if unknown."""
    found = self._tokenizer.token_to_id(token)
    if found is None:
      raise ValueError(f'token {token!r} is not in the tokenizer')
    return found


CAPTION_FORMAT = 'aac_jax.llm_caption_tokenizer'
ROLES = ('pad', 'bos', 'eos', 'unk')  # Run ids 0..3 (docs/CONTRACTS.md), in this order.


def special_partners(
  tokenizer: LlmTokenizer, token_ids: dict[str, Any], vocab_size: int
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
  (`special_partners`), and the ids those held take the partners' places
  (`run_order`). The converted weights are loaded in the same order
  (`aac_jax.models.llm.reorder_vocab`), so the model sees each token as the
  checkpoint did. Captions are tokenised as written (no normalisation), as
  the checkpoint's own tokenizer does. Saved as JSON in the run's
  `vocab.txt` (`aac_jax.data.tokenizer.load_vocab` reads either kind).
  """

  def __init__(self, llm: LlmTokenizer, partners: tuple[int, ...], vocab_size: int):
    self._llm = llm
    self.partners = tuple(int(p) for p in partners)
    self._vocab_size = int(vocab_size)
    self.order = run_order(self.partners, self._vocab_size)
    self._run_ids = np.argsort(self.order)

  @classmethod
  def from_folder(cls, folder: str) -> 'CaptionTokenizer':
    """From a converted language-model folder (`tokenizer.json` + `settings.json`)."""
    from aac_jax.models import pretrained_store  # The data package needs models only here.

    settings = pretrained_store.load_settings(folder)
    if 'token_ids' not in settings:
      raise ValueError(
        f'{folder} names no special token ids (converted before they were kept): convert it '
        'again with python tools/convert_checkpoint.py llm --input HF_FOLDER --output DIR'
      )
    llm = LlmTokenizer.load(folder)
    vocab_size = settings['llm']['vocab_size']
    return cls(llm, special_partners(llm, settings['token_ids'], vocab_size), vocab_size)

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
    llm = LlmTokenizer.from_str(record['tokenizer'])
    return cls(llm, tuple(record['partners']), record['vocab_size'])

  def save(self, path: str | os.PathLike) -> None:
    """Writes `to_json()` atomically (`aac_jax.files`)."""
    from aac_jax import files

    files.write_text(path, self.to_json() + '\n')

  @property
  def vocab_size(self) -> int:
    """The language model's token ids (may exceed the tokenizer's: padded embeddings)."""
    return self._vocab_size

  @property
  def tokens(self) -> list[str]:
    """The text of each run id (index = id; '' for ids the tokenizer lacks)."""
    known = self._llm.vocab_size
    return [self._llm.decode([int(i)]).strip() if i < known else '' for i in self.order]

  def llm_ids(self, run_ids: list[int]) -> list[int]:
    """The checkpoint's ids of run ids."""
    return [int(self.order[i]) for i in run_ids]

  def encode(self, caption: str) -> list[int]:
    """Run ids of `caption` (no BOS/EOS)."""
    ids = np.asarray(self._llm.encode(caption.strip()), np.int64)
    return self._run_ids[ids].tolist()

  def decode(self, ids: Iterable[int]) -> str:
    """Text of run ids; stops at EOS, skips PAD and BOS (as the word tokenizer)."""
    from aac_jax.data import tokenizer as tokenizer_lib

    kept = []
    for i in ids:
      i = int(i)
      if i == tokenizer_lib.EOS_ID:
        break
      if i not in (tokenizer_lib.PAD_ID, tokenizer_lib.BOS_ID):
        kept.append(int(self.order[i]))
    return self._llm.decode([i for i in kept if i < self._llm.vocab_size]).strip()

  def encode_targets(self, caption: str, max_tokens: int) -> np.ndarray:
    """`[max_tokens]` int32 `[w1 .. wn, EOS, PAD ...]` (`tokenizer.fixed_length_targets`)."""
    from aac_jax.data import tokenizer as tokenizer_lib

    return tokenizer_lib.fixed_length_targets(self.encode(caption), max_tokens)
