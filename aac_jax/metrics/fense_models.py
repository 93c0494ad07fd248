"""Loads FENSE's two BERT models from the user's folders and runs them in JAX.

- Sentence-BERT: the sentence-transformers folder of
  `sentence-transformers/paraphrase-TinyBERT-L6-v2` as downloaded
  (`config.json`, `model.safetensors`, tokenizer files, `modules.json`,
  `sentence_bert_config.json`, `1_Pooling/config.json`).
- Error checker: the folder `tools/convert_checkpoint.py fense` makes from
  FENSE's `echecker_clotho_audiocaps_base.ckpt` and the `bert-base-uncased`
  tokenizer (`echecker.json`, `config.json`, `model.safetensors`, tokenizer).

Word pieces come from the Hugging Face `tokenizers` package reading the
folder's own `tokenizer.json` (or `vocab.txt`); weights from safetensors,
read as numpy. Neither torch nor transformers is imported. A folder that is
missing or incomplete raises `ModelUnavailable` whose message says what to
download or convert.
"""

import dataclasses
import json
import os
import pathlib
import re
from collections.abc import Callable, Sequence

import jax
import numpy as np

from aac_jax.metrics import bert

SBERT_NAME = 'paraphrase-TinyBERT-L6-v2'
ECHECKER_NAME = 'echecker_clotho_audiocaps_base'
# Folder holding both models under the names above.
ENV_DIR = 'AAC_FENSE_DIR'
SBERT_URL = 'https://huggingface.co/sentence-transformers/paraphrase-TinyBERT-L6-v2'
ECHECKER_URL = 'https://github.com/blmoistawinde/fense/releases/download/V0.1/echecker_clotho_audiocaps_base.ckpt'
BERT_BASE_URL = 'https://huggingface.co/google-bert/bert-base-uncased'
CONVERT_HINT = (
  f'download {ECHECKER_URL} and the bert-base-uncased tokenizer folder ({BERT_BASE_URL}: '
  'config.json, vocab.txt, tokenizer.json, tokenizer_config.json), then run '
  'python tools/convert_checkpoint.py fense --echecker echecker_clotho_audiocaps_base.ckpt '
  f'--bert_dir bert-base-uncased --output ${ENV_DIR}/{ECHECKER_NAME}'
)
SBERT_HINT = (
  f'download the folder {SBERT_URL} (git clone, or huggingface-cli download '
  f'sentence-transformers/{SBERT_NAME} --local-dir ${ENV_DIR}/{SBERT_NAME})'
)
# FENSE's error checker reads at most 64 word pieces (aac-metrics `max_len`).
ECHECKER_MAX_LENGTH = 64


class ModelUnavailable(Exception):
  """A FENSE model cannot be loaded; the message says what to download."""


def resolve_model_dir(path: str | os.PathLike | None, name: str, hint: str) -> pathlib.Path:
  """The model folder: `path` if given, else `$AAC_FENSE_DIR/<name>`.

  Raises:
    ModelUnavailable: no such folder.
  """
  if path:
    folder = pathlib.Path(path).expanduser()
  elif os.environ.get(ENV_DIR):
    folder = pathlib.Path(os.environ[ENV_DIR]).expanduser() / name
  else:
    raise ModelUnavailable(f'no {name} folder given (flag/config, or ${ENV_DIR}): {hint}')
  if not folder.is_dir():
    raise ModelUnavailable(f'{name} folder {folder} does not exist: {hint}')
  return folder


def _read_json(path: pathlib.Path, hint: str) -> dict:
  if not path.is_file():
    raise ModelUnavailable(f'{path} is missing: {hint}')
  return json.loads(path.read_text(encoding='utf-8'))


def load_wordpiece(folder: pathlib.Path, max_length: int, hint: str):
  """The folder's BERT word-piece tokenizer, truncating to `max_length`, no padding.

  Reads `tokenizer.json` where present, else `vocab.txt` with
  `tokenizer_config.json`'s `do_lower_case` (default True), as
  transformers' fast BERT tokenizer does.
  """
  try:
    import tokenizers
    from tokenizers.implementations import BertWordPieceTokenizer
  except ImportError as e:
    raise ModelUnavailable(
      f'the tokenizers package is missing: pip install "aac_jax[fense]" ({e})'
    ) from e
  if (folder / 'tokenizer.json').is_file():
    tokenizer = tokenizers.Tokenizer.from_file(str(folder / 'tokenizer.json'))
  elif (folder / 'vocab.txt').is_file():
    settings = {}
    if (folder / 'tokenizer_config.json').is_file():
      settings = _read_json(folder / 'tokenizer_config.json', hint)
    lowercase = settings.get('do_lower_case', True)
    tokenizer = BertWordPieceTokenizer(str(folder / 'vocab.txt'), lowercase=lowercase)
  else:
    raise ModelUnavailable(f'{folder} has neither tokenizer.json nor vocab.txt: {hint}')
  tokenizer.no_padding()
  tokenizer.enable_truncation(max_length)
  return tokenizer


def load_safetensors(
  folder: pathlib.Path, hint: str, convert_command: str = ''
) -> dict[str, np.ndarray]:
  """The folder's `model.safetensors` as numpy arrays (no torch).

  `convert_command` is named when the folder holds PyTorch weights instead.
  """
  path = folder / 'model.safetensors'
  if not path.is_file():
    found = [p.name for p in folder.glob('*.bin')] + [p.name for p in folder.glob('*.ckpt')]
    how = f' with `{convert_command}`' if convert_command else ''
    extra = f' (found {found}: convert it first{how})' if found else ''
    raise ModelUnavailable(f'{path} is missing{extra}: {hint}')
  try:
    from safetensors.numpy import load_file
  except ImportError as e:
    raise ModelUnavailable(
      f'the safetensors package is missing: pip install "aac_jax[fense]" ({e})'
    ) from e
  return load_file(str(path))


# Padded sizes: powers of two and their midpoints 1.5 x 2**k (at most a third
# of a padded batch is filler), so a few shapes are compiled.
_SIZES = tuple(sorted({b << k for b in (2, 3) for k in range(14)}))
MIN_LENGTH = 16  # Fewest word pieces a batch is padded to.
MIN_ROWS = 8  # Fewest rows a batch is padded to.


def _size_at_least(n: int) -> int:
  return next(b for b in _SIZES if b >= n)


def bucket_length(length: int, max_length: int) -> int:
  """Padded length of a batch whose longest sentence has `length` word pieces."""
  return min(max_length, _size_at_least(max(length, MIN_LENGTH)))


def bucket_rows(rows: int, batch_size: int) -> int:
  """Padded rows of a batch of `rows` sentences, at most `batch_size`."""
  return min(batch_size, _size_at_least(max(rows, MIN_ROWS)))


def batch_bounds(num_sentences: int, batch_size: int) -> list[tuple[int, int]]:
  """`(start, stop)` of each batch of length-sorted sentences; the partial batch first.

  The short sentences go into the partial batch, so its padding (rows and
  length) costs least.
  """
  if num_sentences == 0:
    return []
  first = num_sentences % batch_size or batch_size
  starts = [0, *range(first, num_sentences, batch_size)]
  return [(a, min(a + (first if a == 0 else batch_size), num_sentences)) for a in starts]


@dataclasses.dataclass
class BertRunner:
  """One BERT model applied, jitted and batched, to many sentences.

  Sentences are de-duplicated, sorted by length and cut into batches of
  `batch_size` (the short remainder first); each batch is padded to a few
  bucket shapes (`bucket_rows` x `bucket_length`), so a small set or short
  captions do not pay for full batches and the model compiles a handful
  of times.

  Attributes:
    module: `bert.SentenceEmbedder` or `bert.ErrorChecker`.
    params: its parameters.
    tokenizer: a `tokenizers` tokenizer (truncating, not padding).
    max_length: longest word-piece sequence (truncation length).
    batch_size: sentences per forward pass.
    preprocess: text -> text before tokenization.
  """

  module: object
  params: dict
  tokenizer: object
  max_length: int
  batch_size: int = 128
  preprocess: Callable[[str], str] = lambda s: s

  def __post_init__(self):
    self.params = jax.device_put(self.params)
    self._apply = jax.jit(self.module.apply)

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    """Model outputs [len(texts), features] (float32), in the order of `texts`."""
    if not texts:
      return np.zeros((0, 0), np.float32)
    unique = list(dict.fromkeys(self.preprocess(t) for t in texts))
    encodings = self.tokenizer.encode_batch(unique)
    order = np.argsort([len(e.ids) for e in encodings], kind='stable')
    outputs, rows = [], []
    for start, stop in batch_bounds(len(order), self.batch_size):
      picked = order[start:stop]
      batch = [encodings[i] for i in picked]
      outputs.append(self._apply({'params': self.params}, *self._pad(batch)))
      rows.append(picked)
    result = np.empty((len(unique), outputs[0].shape[-1]), np.float32)
    for picked, out in zip(rows, outputs, strict=True):
      result[picked] = np.asarray(out)[: len(picked)]
    index = {t: i for i, t in enumerate(unique)}
    return result[[index[self.preprocess(t)] for t in texts]]

  def _pad(self, batch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, mask, type ids), each int32 [rows, length] (`bucket_rows`, `bucket_length`).

    Filler rows and positions are all 0.
    """
    length = bucket_length(max(len(e.ids) for e in batch), self.max_length)
    shape = (bucket_rows(len(batch), self.batch_size), length)
    ids, mask, types = (np.zeros(shape, np.int32) for _ in range(3))
    for row, e in enumerate(batch):
      n = len(e.ids)
      ids[row, :n], mask[row, :n], types[row, :n] = e.ids, e.attention_mask, e.type_ids
    return ids, mask, types


def _sbert_max_length(folder: pathlib.Path, config: bert.BertConfig, hint: str) -> int:
  """Truncation length as sentence-transformers sets it.

  `max_seq_length` of sentence_bert_config.json (the published folders),
  else the tokenizer's `model_max_length` (where sentence-transformers 5+
  saves it), at most the position embeddings.
  """
  limit = config.max_positions
  for name, key in (
    ('sentence_bert_config.json', 'max_seq_length'),
    ('tokenizer_config.json', 'model_max_length'),
  ):
    if (folder / name).is_file():
      value = _read_json(folder / name, hint).get(key)
      if value and value < 1e6:  # transformers writes ~1e30 for "no limit".
        return min(int(value), limit)
  return limit


def _check_sbert_modules(folder: pathlib.Path, hint: str) -> None:
  """Transformer, then mean pooling, then (optionally) Normalize: the one pipeline supported."""
  if not (folder / 'modules.json').is_file():
    return  # A plain transformers folder: sentence-transformers defaults to mean pooling.
  for module in _read_json(folder / 'modules.json', hint):
    kind = module['type'].rsplit('.', 1)[-1]
    if kind == 'Pooling':
      pooling = _read_json(folder / module['path'] / 'config.json', hint)
      mode = pooling.get('pooling_mode') or [
        k[len('pooling_mode_') :] for k, v in pooling.items() if k.startswith('pooling_mode_') and v
      ]
      if mode not in ('mean', ['mean_tokens']):
        raise ModelUnavailable(f'{folder}: only mean pooling is supported, found {mode}')
    elif kind not in ('Transformer', 'Normalize'):
      raise ModelUnavailable(f'{folder}: unsupported sentence-transformers module {kind}')


def _damaged(folder: pathlib.Path, error: Exception, hint: str) -> ModelUnavailable:
  return ModelUnavailable(f'{folder}: config and weights do not fit ({error!r}); {hint}')


def load_sentence_embedder(
  path: str | os.PathLike | None, batch_size: int = 128, precision: str = 'highest'
) -> BertRunner:
  """Sentence-BERT from a sentence-transformers folder (see module docstring)."""
  folder = resolve_model_dir(path, SBERT_NAME, SBERT_HINT)
  try:
    return _sentence_embedder(folder, batch_size, precision)
  except (KeyError, ValueError) as e:
    raise _damaged(folder, e, SBERT_HINT) from e


def _sentence_embedder(folder: pathlib.Path, batch_size: int, precision: str) -> BertRunner:
  _check_sbert_modules(folder, SBERT_HINT)
  config = bert.BertConfig.from_hf(_read_json(folder / 'config.json', SBERT_HINT), precision)
  convert = f'python tools/convert_checkpoint.py fense --sbert {folder} --output {folder}'
  tensors = load_safetensors(folder, SBERT_HINT, convert)
  prefix = 'bert.' if 'bert.embeddings.word_embeddings.weight' in tensors else ''
  params = {'encoder': bert.params_from_hf(tensors, config, prefix)}
  max_length = _sbert_max_length(folder, config, SBERT_HINT)
  settings = {}
  if (folder / 'sentence_bert_config.json').is_file():
    settings = _read_json(folder / 'sentence_bert_config.json', SBERT_HINT)
  # sentence-transformers strips each text (and lower-cases it where configured).
  preprocess = _strip_lower if settings.get('do_lower_case') else str.strip
  return BertRunner(
    bert.SentenceEmbedder(config),
    params,
    load_wordpiece(folder, max_length, SBERT_HINT),
    max_length,
    batch_size,
    preprocess,
  )


def _strip_lower(text: str) -> str:
  return text.strip().lower()


def echecker_text(text: str) -> str:
  """aac-metrics' text preprocessing for the error checker: no punctuation, lower case."""
  return re.sub(r'[^\w\s]', '', text).lower()


def load_error_checker(
  path: str | os.PathLike | None, batch_size: int = 128, precision: str = 'highest'
) -> BertRunner:
  """FENSE's error checker from a converted folder; outputs P(class) [n, classes]."""
  folder = resolve_model_dir(path, ECHECKER_NAME, CONVERT_HINT)
  try:
    return _error_checker(folder, batch_size, precision)
  except (KeyError, ValueError) as e:
    raise _damaged(folder, e, CONVERT_HINT) from e


def _error_checker(folder: pathlib.Path, batch_size: int, precision: str) -> BertRunner:
  meta = _read_json(folder / 'echecker.json', CONVERT_HINT)
  config = bert.BertConfig.from_hf(_read_json(folder / 'config.json', CONVERT_HINT), precision)
  tensors = load_safetensors(folder, CONVERT_HINT)
  params = {
    'encoder': bert.params_from_hf(tensors, config, 'encoder.'),
    'classifier': {'kernel': tensors['clf.weight'].T, 'bias': tensors['clf.bias']},
  }
  return BertRunner(
    bert.ErrorChecker(config, int(meta['num_classes'])),
    params,
    load_wordpiece(folder, ECHECKER_MAX_LENGTH, CONVERT_HINT),
    ECHECKER_MAX_LENGTH,
    batch_size,
    echecker_text,
  )
