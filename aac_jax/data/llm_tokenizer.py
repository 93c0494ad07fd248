"""A language model's own tokenizer, read from its `tokenizer.json` (`tokenizers`, no transformers).

The ids are those of the checkpoint (transformers' fast tokenizer reads the
same file), so captions and prompts feed a converted Llama / Qwen2 decoder
(`aac_jax.convert.llm`) as it was trained.
"""

import os

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
