"""The published CoNeTTE folder (Hugging Face `Labbeti/conette`) -> aac_jax pieces.

The folder holds `config.json` (`CoNeTTEConfig`: sizes, beam settings, task
names and, in `tokenizer_state`, the tokenizer's text state) and the weights
of `CoNeTTEModel.state_dict()` as `pytorch_model.bin` (`torch.save`) or
`model.safetensors`. Keys: `preprocessor.encoder.*` (ConvNeXt-Tiny),
`model.projection.2.*` (frame projection), `model.decoder.*`
(`AACTransformerDecoder`), the buffers `model.task_id_to_token_id`,
`model.forbid_rep_mask` and `model.decoder.pos_encoding.pos_embedding`, and
`_extra_state_` (the pickled tokenizer state, read only where `config.json`
lacks it, with an unpickler that accepts plain containers only).

CoNeTTE's token ids are kept: its tokenizer puts `<pad> <bos> <eos> <unk>`
at ids 0-3, which is aac_jax's contract (docs/CONTRACTS.md); the task tokens
`<bos_{task}>` are ordinary vocabulary entries at the end.
"""

import dataclasses
import io
import json
import pathlib
import pickle
from collections.abc import Mapping
from typing import Any

import numpy as np

from aac_jax.data import tokenizer as tokenizer_lib
from aac_jax.models import conette_decoder

WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')
CONFIG_FILE = 'config.json'
DECODER = 'model.decoder.'
PROJECTION = 'model.projection.2.'
ENCODER = 'preprocessor.encoder.'
# Buffers read here (not parameters).
TASK_IDS_KEY = 'model.task_id_to_token_id'
FORBID_KEY = 'model.forbid_rep_mask'
POSITIONS_KEY = DECODER + 'pos_encoding.pos_embedding'
EXTRA_STATE_KEY = '_extra_state_'


class ConetteFormatError(ValueError):
  """The folder is not a CoNeTTE model folder of the expected layout."""


@dataclasses.dataclass
class PublishedModel:
  """What the folder holds, torch-free.

  Attributes:
    config: `config.json` as a dict.
    state: `{key: numpy array}` of the weights file.
    source: the weights file name.
  """

  config: dict
  state: dict
  source: str


def read_folder(folder: str | pathlib.Path) -> PublishedModel:
  """Reads `config.json` and the weights file of a downloaded CoNeTTE folder.

  Raises:
    ConetteFormatError: a file is missing (the message names what to download).
  """
  folder = pathlib.Path(folder)
  config_path = folder / CONFIG_FILE
  weights = [folder / name for name in WEIGHT_FILES if (folder / name).is_file()]
  if not config_path.is_file() or not weights:
    raise ConetteFormatError(
      f'{folder} is not a CoNeTTE model folder: it needs {CONFIG_FILE} and one of '
      f'{WEIGHT_FILES} (download the files of https://huggingface.co/Labbeti/conette)'
    )
  config = json.loads(config_path.read_text(encoding='utf-8'))
  return PublishedModel(config, _read_weights(weights[0]), weights[0].name)


def _read_weights(path: pathlib.Path) -> dict:
  if path.suffix == '.safetensors':
    from safetensors.numpy import load_file

    return dict(load_file(str(path)))
  from aac_jax.convert import torch_file

  return torch_file.read_state_dict(str(path), None)


class _PlainUnpickler(pickle.Unpickler):
  """Builds dicts, lists, strings and numbers only; any class reference is refused."""

  def find_class(self, module, name):
    raise ConetteFormatError(f'refusing to unpickle {module}.{name} from {EXTRA_STATE_KEY}')


def _tokenizer_state(model: PublishedModel) -> Mapping[str, Any]:
  """The tokenizer's text state: `config.json`, else the weights' `_extra_state_`."""
  state = model.config.get('tokenizer_state')
  if not state and EXTRA_STATE_KEY in model.state:
    blob = np.asarray(model.state[EXTRA_STATE_KEY], np.uint8).tobytes()
    extra = _PlainUnpickler(io.BytesIO(blob)).load()
    state = next((v for k, v in extra.items() if k.endswith('_extra_state')), None)
  if not state or 'tokenizer' not in state or 'itos' not in state['tokenizer']:
    raise ConetteFormatError('no tokenizer state in config.json nor in the weights file')
  return state['tokenizer']


def read_tokens(model: PublishedModel) -> list[str]:
  """The vocabulary, index = CoNeTTE's token id.

  Raises:
    ConetteFormatError: ids with gaps, specials not at 0-3, or tokens that a
      one-token-per-line vocabulary file cannot hold.
  """
  itos = {int(i): str(token) for i, token in _tokenizer_state(model)['itos'].items()}
  tokens = [itos.get(i) for i in range(len(itos))]
  if None in tokens:
    raise ConetteFormatError(f'token ids are not 0..{len(itos) - 1}')
  if tuple(tokens[:4]) != tokenizer_lib.SPECIAL_TOKENS:
    raise ConetteFormatError(
      f'CoNeTTE ids 0-3 are {tokens[:4]}, not {tokenizer_lib.SPECIAL_TOKENS} (aac_jax PAD, BOS, '
      'EOS, UNK ids; docs/CONTRACTS.md)'
    )
  bad = [t for t in tokens if not t or '\n' in t or t != t.strip()]
  if bad:
    raise ConetteFormatError(f'tokens a vocabulary file cannot hold: {bad[:5]}')
  return tokens


def task_tokens(model: PublishedModel, tokens: list[str]) -> dict[str, int]:
  """`{task name: token id}` in `config.json`'s task order (the first is the default)."""
  names = list(model.config.get('task_names', []))
  ids = [int(i) for i in np.asarray(model.state.get(TASK_IDS_KEY, []))]
  if len(ids) != len(names):
    raise ConetteFormatError(f'{len(names)} task names but {TASK_IDS_KEY} holds {len(ids)} ids')
  for name, i in zip(names, ids, strict=True):
    if tokens[i] != f'<bos_{name}>':
      raise ConetteFormatError(f'task {name!r} has token {tokens[i]!r}, expected <bos_{name}>')
  return dict(zip(names, ids, strict=True))


def repeatable_tokens(model: PublishedModel, tokens: list[str]) -> list[str]:
  """The tokens CoNeTTE's forbid-repetition mask lets repeat (its stop words)."""
  mask = np.asarray(model.state.get(FORBID_KEY, np.zeros(len(tokens), bool)), bool)
  if mask.shape != (len(tokens),):
    raise ConetteFormatError(f'{FORBID_KEY} has shape {mask.shape}, vocabulary {len(tokens)}')
  return [token for token, banned in zip(tokens, mask, strict=True) if not banned]


def _dense(state: Mapping[str, np.ndarray], key: str) -> dict:
  return {'kernel': state[key + '.weight'].T, 'bias': state[key + '.bias']}


def _norm(state: Mapping[str, np.ndarray], key: str) -> dict:
  return {'scale': state[key + '.weight'], 'bias': state[key + '.bias']}


def _attention(state: Mapping[str, np.ndarray], key: str, heads: int) -> dict:
  """`nn.MultiheadAttention` (packed q/k/v) -> `layers` query/key/value/out."""
  weight, bias = state[key + '.in_proj_weight'], state[key + '.in_proj_bias']
  dim = weight.shape[1]
  head_dim = dim // heads
  out = {}
  for name, w, b in zip(
    ('query', 'key', 'value'), np.split(weight, 3), np.split(bias, 3), strict=True
  ):
    out[name] = {'kernel': w.T.reshape(dim, heads, head_dim), 'bias': b.reshape(heads, head_dim)}
  out_weight = state[key + '.out_proj.weight']
  out['out'] = {
    'kernel': out_weight.T.reshape(heads, head_dim, dim),
    'bias': state[key + '.out_proj.bias'],
  }
  return out


def _layer(state: Mapping[str, np.ndarray], prefix: str, heads: int) -> dict:
  return {
    'self_attention': _attention(state, prefix + 'self_attn', heads),
    'self_norm': _norm(state, prefix + 'norm1'),
    'cross_attention': _attention(state, prefix + 'multihead_attn', heads),
    'cross_norm': _norm(state, prefix + 'norm2'),
    'ff_in': _dense(state, prefix + 'linear1'),
    'ff_out': _dense(state, prefix + 'linear2'),
    'ff_norm': _norm(state, prefix + 'norm3'),
  }


def projection_params(state: Mapping[str, np.ndarray]) -> dict:
  """`encoder/projection` (the Dense of `encoder_projection`) from `model.projection.2`."""
  left = sorted(
    k for k in state if k.startswith('model.projection.') and not k.startswith(PROJECTION)
  )
  if left:
    raise ConetteFormatError(
      f'unexpected projection keys: {left} (expected the "lin768" projection)'
    )
  return _as_float32(_dense(_Tracked(state, set()), PROJECTION[:-1]))


def num_decoder_layers(state: Mapping[str, np.ndarray]) -> int:
  """Decoder layers in the weights (`model.decoder.layers.{i}.*`)."""
  indices = {
    int(k[len(DECODER) :].split('.')[1]) for k in state if k.startswith(DECODER + 'layers.')
  }
  if indices != set(range(len(indices))):
    raise ConetteFormatError(f'decoder layer indices {sorted(indices)} are not 0..n-1')
  return len(indices)


def decoder_params(state: Mapping[str, np.ndarray], heads: int) -> dict:
  """The `decoder` subtree of a `Captioner` with `decoder_style='conette'`.

  Args:
    state: the weights (numpy).
    heads: attention heads (`config.json` `nhead`).

  Returns:
    Nested dict of float32 arrays (shapes are checked against the model by
    the caller).

  Raises:
    ConetteFormatError: a decoder key is missing or left unused.
  """
  used = {POSITIONS_KEY}
  tracked = _Tracked(state, used)
  params = {
    'embed': {'embedding': tracked[DECODER + 'emb_layer.weight']},
    'classifier': _dense(tracked, DECODER + 'classifier'),
  }
  for i in range(num_decoder_layers(state)):
    params[f'layer{i}'] = _layer(tracked, f'{DECODER}layers.{i}.', heads)
  left = sorted(k for k in state if k.startswith(DECODER) and k not in used)
  if left:
    raise ConetteFormatError(f'unexpected decoder keys ({len(left)}): {left}')
  _check_positions(state)
  return _as_float32(params)


class _Tracked(Mapping):
  """A read-only view of the weights recording which keys were read."""

  def __init__(self, state: Mapping[str, np.ndarray], used: set):
    self._state, self._used = state, used

  def __getitem__(self, key: str) -> np.ndarray:
    if key not in self._state:
      raise ConetteFormatError(f'missing key {key!r}: not a CoNeTTE checkpoint of this layout')
    self._used.add(key)
    return self._state[key]

  def __iter__(self):
    return iter(self._state)

  def __len__(self) -> int:
    return len(self._state)


def _check_positions(state: Mapping[str, np.ndarray], checked: int = 64) -> None:
  """The stored position buffer must be the table the port computes (first positions).

  Far positions are left out: float32 sines of angles in the thousands differ
  between libraries, and captions never get there.
  """
  if POSITIONS_KEY not in state:
    return
  stored = np.asarray(state[POSITIONS_KEY], np.float32)
  stored = stored.reshape(stored.shape[0], stored.shape[-1])[:checked]
  ours = conette_decoder.interleaved_sinusoids(*stored.shape)
  if not np.allclose(stored, ours, atol=1e-5):
    raise ConetteFormatError(f'{POSITIONS_KEY} is not the sinusoid table of AACTransformerDecoder')


def _as_float32(tree: Any) -> Any:
  if isinstance(tree, Mapping):
    return {k: _as_float32(v) for k, v in tree.items()}
  return np.ascontiguousarray(tree, dtype=np.float32)


def encoder_params(state: Mapping[str, np.ndarray]) -> dict:
  """`encoder` subtree: the ConvNeXt tagger (CoNeTTE stem) and the frame projection.

  Raises:
    ConetteFormatError: the weights hold no encoder.
    mapping.ConversionError: its keys or shapes are not CoNeTTE's ConvNeXt.
  """
  from aac_jax.convert import convnext

  tagger_state = {k[len(ENCODER) :]: v for k, v in state.items() if k.startswith(ENCODER)}
  if not tagger_state:
    raise ConetteFormatError(f'no {ENCODER}* keys: the weights hold no audio encoder')
  tagger, _ = convnext.convert(tagger_state, stem='conette')
  for name in ('norm', 'head'):  # The AudioSet clip head: the captioner does not use it.
    tagger.pop(name)
  return {'tagger': tagger, 'projection': projection_params(state)}


def check_all_keys_used(state: Mapping[str, np.ndarray]) -> None:
  """Every key is the encoder's, the projection's, the decoder's or a known buffer."""
  known = (ENCODER, DECODER, PROJECTION)
  buffers = (TASK_IDS_KEY, FORBID_KEY, EXTRA_STATE_KEY)
  left = sorted(k for k in state if not k.startswith(known) and k not in buffers)
  if left:
    raise ConetteFormatError(f'unexpected keys in the weights ({len(left)}): {left}')


def fill_config(config, published: PublishedModel, tokens: list[str]) -> dict[str, int]:
  """Writes the checkpoint's sizes and decoding settings into an aac_jax config (in place).

  Args:
    config: a full config (e.g. `configs/conette.py`'s), changed in place.
    published: the read folder.
    tokens: its vocabulary.

  Returns:
    `{task name: token id}`; the first task is the default (`model.task_token_id`).
  """
  c = published.config
  tasks = task_tokens(published, tokens)
  m = config.model
  m.decoder_style = 'conette'
  m.decoder_dim = m.encoder_dim = int(c.get('d_model', 256))
  m.decoder_heads = int(c.get('nhead', 8))
  m.decoder_layers = num_decoder_layers(published.state)
  m.decoder_ff_dim = int(c.get('dim_feedforward', 2048))
  m.dropout = m.attention_dropout = float(c.get('decoder_dropout_p', 0.2))
  m.task_token_id = next(iter(tasks.values())) if tasks else -1
  if c.get('acti_name', 'gelu') != 'gelu' or c.get('proj_name', 'lin768') != 'lin768':
    raise ConetteFormatError('only acti_name=gelu and proj_name=lin768 (the published model)')
  repeatable = repeatable_tokens(published, tokens)
  # Captioning and scoring (validation, best checkpoint, test) alike: CoNeTTE's
  # validation and test steps decode with `generate` too.
  for d in (config.decode, config.eval.decode):
    d.method = 'conette_beam'
    d.beam_size = int(c.get('beam_size', 3))
    d.min_len = int(c.get('min_pred_size', 3))
    d.max_len = int(c.get('max_pred_size', 20)) + 1  # Room for EOS after max_pred_size tokens.
    d.ban_repeated_content_words = len(repeatable) < len(tokens)
    d.repeatable_tokens = repeatable
  m.max_decode_len = max(int(m.max_decode_len), config.decode.max_len)
  config.optim.label_smoothing = float(c.get('label_smoothing', config.optim.label_smoothing))
  return tasks


def convert_folder(input_dir: str, output_dir: str, config) -> dict[str, Any]:
  """The published folder -> an aac_jax run folder (see `run_folder`).

  Args:
    input_dir: the downloaded CoNeTTE folder.
    output_dir: the run folder to write.
    config: the base config (`configs/conette.py`), completed from the
      checkpoint (sizes, task token, decoding) and saved as `config.json`.

  Returns:
    A summary: `{'tasks': {name: id}, 'vocab_size', 'source', 'decode'}`.
  """
  from aac_jax.convert import run_folder

  published = read_folder(input_dir)
  tokens = read_tokens(published)
  check_all_keys_used(published.state)
  tasks = fill_config(config, published, tokens)
  params = {
    'encoder': encoder_params(published.state),
    'decoder': decoder_params(published.state, int(config.model.decoder_heads)),
  }
  run_folder.write_run_folder(output_dir, config, tokens, params)
  decode = {k: config.decode[k] for k in ('method', 'beam_size', 'min_len', 'max_len')}
  return {'tasks': tasks, 'vocab_size': len(tokens), 'source': published.source, 'decode': decode}
