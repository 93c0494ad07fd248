"""BERT encoder in Flax Linen and the two FENSE heads.

The architecture is Hugging Face's `BertModel` (post-norm transformer,
absolute position embeddings, token-type embeddings), so the published
weights load by a renaming of their keys (`params_from_hf`):

- `SentenceEmbedder`: BERT, mean of the real tokens' last hidden states,
  L2-normalised (Sentence-BERT `paraphrase-TinyBERT-L6-v2`).
- `ErrorChecker`: BERT, last hidden state of `[CLS]`, one linear layer,
  sigmoid per class (FENSE's `echecker_clotho_audiocaps_*`).

Attention uses the key mask only: padded positions never change the real
positions' outputs, so batches may be padded to any length.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

_ACTIVATIONS = {
  'gelu': lambda x: jax.nn.gelu(x, approximate=False),
  'gelu_new': lambda x: jax.nn.gelu(x, approximate=True),
  'gelu_pytorch_tanh': lambda x: jax.nn.gelu(x, approximate=True),
  'relu': jax.nn.relu,
}
_PRECISIONS = {'highest': jax.lax.Precision.HIGHEST, 'default': jax.lax.Precision.DEFAULT}


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Sizes of a BERT encoder (Hugging Face `config.json` names in brackets).

  Attributes:
    vocab_size: word-piece vocabulary (`vocab_size`).
    hidden_size: model width (`hidden_size`).
    num_layers: transformer layers (`num_hidden_layers`).
    num_heads: attention heads (`num_attention_heads`).
    intermediate_size: feed-forward width (`intermediate_size`).
    max_positions: position embeddings (`max_position_embeddings`).
    type_vocab_size: token-type embeddings (`type_vocab_size`).
    layer_norm_eps: LayerNorm epsilon (`layer_norm_eps`).
    hidden_act: feed-forward activation (`hidden_act`).
    precision: matmul precision, 'highest' (float32 everywhere, the
      reference numbers) or 'default' (faster TF32/bf16 passes on GPU/TPU).
  """

  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  intermediate_size: int
  max_positions: int
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_act: str = 'gelu'
  precision: str = 'highest'

  @classmethod
  def from_hf(cls, hf: dict, precision: str = 'highest') -> 'BertConfig':
    """Reads a Hugging Face BERT `config.json` (as a dict)."""
    if hf.get('model_type', 'bert') != 'bert':
      raise ValueError(f'not a BERT config: model_type={hf.get("model_type")!r}')
    if hf.get('position_embedding_type', 'absolute') != 'absolute':
      raise ValueError(f'unsupported position_embedding_type {hf["position_embedding_type"]!r}')
    if hf.get('hidden_act', 'gelu') not in _ACTIVATIONS:
      raise ValueError(f'unsupported hidden_act {hf["hidden_act"]!r}')
    if precision not in _PRECISIONS:
      raise ValueError(f'precision must be one of {sorted(_PRECISIONS)}, got {precision!r}')
    return cls(
      vocab_size=hf['vocab_size'],
      hidden_size=hf['hidden_size'],
      num_layers=hf['num_hidden_layers'],
      num_heads=hf['num_attention_heads'],
      intermediate_size=hf['intermediate_size'],
      max_positions=hf['max_position_embeddings'],
      type_vocab_size=hf.get('type_vocab_size', 2),
      layer_norm_eps=hf.get('layer_norm_eps', 1e-12),
      hidden_act=hf.get('hidden_act', 'gelu'),
      precision=precision,
    )


def _dense(config: BertConfig, features: int, name: str) -> nn.Dense:
  return nn.Dense(features, precision=_PRECISIONS[config.precision], name=name)


class BertLayer(nn.Module):
  """One post-norm transformer layer."""

  config: BertConfig

  @nn.compact
  def __call__(self, x: jax.Array, mask_bias: jax.Array) -> jax.Array:
    """[batch, length, hidden], bias [batch, 1, 1, length] -> [batch, length, hidden]."""
    c = self.config
    b, length, d = x.shape
    head = d // c.num_heads
    prec = _PRECISIONS[c.precision]

    def heads(name: str) -> jax.Array:
      return _dense(c, d, name)(x).reshape(b, length, c.num_heads, head)

    q, k, v = heads('query'), heads('key'), heads('value')
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k, precision=prec) / math.sqrt(head)
    weights = jax.nn.softmax(logits + mask_bias, axis=-1)
    context = jnp.einsum('bhqk,bkhd->bqhd', weights, v, precision=prec).reshape(b, length, d)
    norm = lambda name: nn.LayerNorm(epsilon=c.layer_norm_eps, name=name)  # noqa: E731
    x = norm('attention_norm')(x + _dense(c, d, 'attention_output')(context))
    hidden = _ACTIVATIONS[c.hidden_act](_dense(c, c.intermediate_size, 'intermediate')(x))
    return norm('output_norm')(x + _dense(c, d, 'output')(hidden))


class BertEncoder(nn.Module):
  """Embeddings and transformer layers; returns the last hidden states."""

  config: BertConfig

  @nn.compact
  def __call__(
    self,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    token_type_ids: jax.Array,
    position_ids: jax.Array | None = None,
  ):
    """Encodes word-piece ids.

    Args:
      input_ids: int32 [batch, length].
      attention_mask: [batch, length], 1 for real tokens, 0 for padding.
      token_type_ids: int32 [batch, length].
      position_ids: int32 [batch, length]; None: 0, 1, 2, ... (BERT). RoBERTa
        counts from `pad_token_id + 1` (`metrics.clap.model`).

    Returns:
      float32 [batch, length, hidden].
    """
    c = self.config
    if position_ids is None:
      positions = jnp.arange(input_ids.shape[1])[None, :]
    else:
      positions = position_ids
    x = (
      nn.Embed(c.vocab_size, c.hidden_size, name='word_embeddings')(input_ids)
      + nn.Embed(c.max_positions, c.hidden_size, name='position_embeddings')(positions)
      + nn.Embed(c.type_vocab_size, c.hidden_size, name='token_type_embeddings')(token_type_ids)
    )
    x = nn.LayerNorm(epsilon=c.layer_norm_eps, name='embeddings_norm')(x)
    # Large finite value: a fully padded filler row stays finite.
    mask_bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, -1e9).astype(x.dtype)
    for i in range(c.num_layers):
      x = BertLayer(c, name=f'layer_{i}')(x, mask_bias)
    return x


class SentenceEmbedder(nn.Module):
  """Sentence-BERT: mean pooling over real tokens, then L2 normalisation."""

  config: BertConfig

  @nn.compact
  def __call__(self, input_ids, attention_mask, token_type_ids) -> jax.Array:
    """Same inputs as `BertEncoder`; returns unit vectors [batch, hidden]."""
    hidden = BertEncoder(self.config, name='encoder')(input_ids, attention_mask, token_type_ids)
    mask = attention_mask.astype(hidden.dtype)[..., None]
    pooled = (hidden * mask).sum(1) / jnp.maximum(mask.sum(1), 1e-9)
    norm = jnp.linalg.norm(pooled, axis=-1, keepdims=True)
    return pooled / jnp.maximum(norm, 1e-12)


class ErrorChecker(nn.Module):
  """FENSE's fluency-error classifier: [CLS] state -> linear -> sigmoid."""

  config: BertConfig
  num_classes: int

  def __call__(self, input_ids, attention_mask, token_type_ids) -> jax.Array:
    """Same inputs as `BertEncoder`; returns class probabilities [batch, classes]."""
    return jax.nn.sigmoid(self.logits(input_ids, attention_mask, token_type_ids))

  @nn.compact
  def logits(self, input_ids, attention_mask, token_type_ids) -> jax.Array:
    """Class logits [batch, classes] (training takes its loss from these)."""
    hidden = BertEncoder(self.config, name='encoder')(input_ids, attention_mask, token_type_ids)
    return _dense(self.config, self.num_classes, 'classifier')(hidden[:, 0])


# Hugging Face `BertLayer` sub-module -> our module name.
_LAYER_NAMES = {
  'attention.self.query': 'query',
  'attention.self.key': 'key',
  'attention.self.value': 'value',
  'attention.output.dense': 'attention_output',
  'attention.output.LayerNorm': 'attention_norm',
  'intermediate.dense': 'intermediate',
  'output.dense': 'output',
  'output.LayerNorm': 'output_norm',
}


def _linear(tensors: dict, key: str) -> dict:
  # torch Linear stores [out, in]; Flax Dense kernels are [in, out].
  return {'kernel': tensors[f'{key}.weight'].T, 'bias': tensors[f'{key}.bias']}


def _layer_norm(tensors: dict, key: str) -> dict:
  # Very old checkpoints name LayerNorm parameters gamma/beta.
  scale = tensors.get(f'{key}.weight', tensors.get(f'{key}.gamma'))
  bias = tensors.get(f'{key}.bias', tensors.get(f'{key}.beta'))
  if scale is None or bias is None:
    raise KeyError(f'{key}.weight')
  return {'scale': scale, 'bias': bias}


def params_from_hf(tensors: dict[str, np.ndarray], config: BertConfig, prefix: str = '') -> dict:
  """`BertEncoder` parameters from a Hugging Face `BertModel` state dict.

  Args:
    tensors: name -> float array, as in `model.safetensors`.
    config: the encoder's sizes (checked against the arrays).
    prefix: prefix of the BERT keys, e.g. 'bert.' or 'encoder.'.

  Returns:
    The parameter tree (float32 numpy arrays).

  Raises:
    KeyError: a weight is missing; ValueError: a shape does not fit `config`.
  """
  t = {
    k[len(prefix) :]: np.asarray(v, np.float32) for k, v in tensors.items() if k.startswith(prefix)
  }
  emb = 'embeddings.'
  params = {
    name: {'embedding': t[f'{emb}{name}.weight']}
    for name in ('word_embeddings', 'position_embeddings', 'token_type_embeddings')
  }
  params['embeddings_norm'] = _layer_norm(t, f'{emb}LayerNorm')
  for i in range(config.num_layers):
    layer = f'encoder.layer.{i}.'
    params[f'layer_{i}'] = {
      ours: (_layer_norm if ours.endswith('norm') else _linear)(t, layer + theirs)
      for theirs, ours in _LAYER_NAMES.items()
    }
  if f'encoder.layer.{config.num_layers}.output.dense.weight' in t:
    raise ValueError(f'checkpoint has more than {config.num_layers} layers')
  _check_shapes(params, config)
  return params


def params_to_hf(params: dict, config: BertConfig, prefix: str = '') -> dict[str, np.ndarray]:
  """Hugging Face `BertModel` state dict of `BertEncoder` parameters (`params_from_hf` inverted).

  Args:
    params: the encoder's parameter tree.
    config: its sizes.
    prefix: prefix of the BERT keys, e.g. 'bert.' or 'encoder.'.

  Returns:
    name -> float32 numpy array, as saved in `model.safetensors`.
  """
  p = jax.tree.map(lambda a: np.asarray(a, np.float32), params)
  emb = f'{prefix}embeddings.'
  tensors = {
    f'{emb}{name}.weight': p[name]['embedding']
    for name in ('word_embeddings', 'position_embeddings', 'token_type_embeddings')
  }
  tensors[f'{emb}LayerNorm.weight'] = p['embeddings_norm']['scale']
  tensors[f'{emb}LayerNorm.bias'] = p['embeddings_norm']['bias']
  for i in range(config.num_layers):
    for theirs, ours in _LAYER_NAMES.items():
      key, leaf = f'{prefix}encoder.layer.{i}.{theirs}', p[f'layer_{i}'][ours]
      if ours.endswith('norm'):
        tensors[f'{key}.weight'], tensors[f'{key}.bias'] = leaf['scale'], leaf['bias']
      else:
        tensors[f'{key}.weight'], tensors[f'{key}.bias'] = leaf['kernel'].T, leaf['bias']
  return tensors


def config_to_hf(config: BertConfig) -> dict:
  """Hugging Face `config.json` fields of `config` (`BertConfig.from_hf` inverted)."""
  return {
    'model_type': 'bert',
    'vocab_size': config.vocab_size,
    'hidden_size': config.hidden_size,
    'num_hidden_layers': config.num_layers,
    'num_attention_heads': config.num_heads,
    'intermediate_size': config.intermediate_size,
    'max_position_embeddings': config.max_positions,
    'type_vocab_size': config.type_vocab_size,
    'layer_norm_eps': config.layer_norm_eps,
    'hidden_act': config.hidden_act,
  }


def _check_shapes(params: dict, config: BertConfig) -> None:
  ids = jax.ShapeDtypeStruct((1, 2), jnp.int32)
  expected = jax.eval_shape(BertEncoder(config).init, jax.random.key(0), ids, ids, ids)['params']
  want = {k: v.shape for k, v in traverse_util.flatten_dict(expected, sep='/').items()}
  got = {k: v.shape for k, v in traverse_util.flatten_dict(params, sep='/').items()}
  bad = [f'{k}: {got.get(k)} vs config {v}' for k, v in want.items() if got.get(k) != v]
  if bad:
    raise ValueError(f'checkpoint does not match its config.json: {bad[:3]}')
