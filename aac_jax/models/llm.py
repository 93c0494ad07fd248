"""Decoder-only language model of the Llama / Qwen2 family, with optional LoRA.

The layout of Hugging Face's `LlamaForCausalLM` and `Qwen2ForCausalLM`:
token embedding, `num_layers` pre-norm blocks (RMSNorm, grouped-query
self-attention with rotary positions, RMSNorm, SwiGLU feed-forward), a final
RMSNorm and the output projection (tied to the embedding or its own
`lm_head`). Qwen2 adds biases to the query, key and value projections.
Parameter names follow the checkpoints (`layers_3/self_attn/q_proj/kernel`,
kernels `[in, out]`), so `aac_jax.convert.llm` maps them one to one.

Positions are explicit (`[batch, length]`), so a prefix with padded rows
(audio frames of different lengths) gives real tokens the positions they
would have without the padding. With `decode=True` the keys and values live
in the `cache` collection (see `Attention`).
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from aac_jax.models import layers, partitioning

LORA_TARGETS = ('q', 'k', 'v', 'o', 'gate', 'up', 'down')
ROPE_TYPES = ('default', 'linear', 'llama3')
_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class LlmConfig:
  """Sizes of a Llama / Qwen2 decoder (the fields of its `config.json`) and its LoRA.

  Attributes:
    vocab_size: token ids.
    hidden_size: model width.
    num_layers: decoder blocks.
    num_heads: query heads.
    num_kv_heads: key/value heads (grouped-query attention; divides num_heads).
    head_dim: width of one head.
    intermediate_size: SwiGLU hidden width.
    rms_norm_eps: RMSNorm epsilon.
    rope_theta: rotary base.
    rope_scaling: `(('rope_type', name), (key, value), ...)`: 'default',
      'linear' (`factor`) or 'llama3' (`factor`, `low_freq_factor`,
      `high_freq_factor`, `original_max_position_embeddings`).
    attention_bias: biases on q, k and v (Qwen2).
    tie_embeddings: output projection = transposed token embedding.
    initializer_range: stddev of the random initialisation.
    lora_rank: LoRA rank (0 = no adapters).
    lora_alpha: LoRA scale numerator (updates scaled by alpha / rank).
    lora_dropout: dropout on the adapters' input (training).
    lora_targets: projections with adapters (subset of `LORA_TARGETS`).
    compute_dtype: 'float32' or 'bfloat16'.
    base_dtype: storage dtype of the base weights (embedding, norms,
      projections; 'float32' or 'bfloat16'); LoRA adapters stay float32.
    deterministic: no dropout.
    decode: keys and values cached (`cache` collection).
  """

  vocab_size: int
  hidden_size: int = 64
  num_layers: int = 2
  num_heads: int = 4
  num_kv_heads: int = 2
  head_dim: int = 16
  intermediate_size: int = 128
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  rope_scaling: tuple = (('rope_type', 'default'),)
  attention_bias: bool = False
  tie_embeddings: bool = True
  initializer_range: float = 0.02
  lora_rank: int = 0
  lora_alpha: float = 16.0
  lora_dropout: float = 0.0
  lora_targets: tuple[str, ...] = ('q', 'v')
  compute_dtype: str = 'float32'
  base_dtype: str = 'float32'
  deterministic: bool = True
  decode: bool = False

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f'num_heads {self.num_heads} not a multiple of {self.num_kv_heads}')
    if self.head_dim % 2:
      raise ValueError(f'head_dim must be even for rotary positions, got {self.head_dim}')
    if self.rope_type not in ROPE_TYPES:
      raise ValueError(f'rope_scaling type {self.rope_type!r} not supported; known: {ROPE_TYPES}')
    for name in ('compute_dtype', 'base_dtype'):
      if getattr(self, name) not in _DTYPES:
        raise ValueError(f'{name} must be one of {sorted(_DTYPES)}, got {getattr(self, name)!r}')
    unknown = set(self.lora_targets) - set(LORA_TARGETS)
    if unknown:
      raise ValueError(f'lora_targets {sorted(unknown)} unknown; known: {LORA_TARGETS}')

  @property
  def rope_type(self) -> str:
    return dict(self.rope_scaling).get('rope_type', 'default')

  @property
  def dtype(self) -> Any:
    return _DTYPES[self.compute_dtype]

  @property
  def param_dtype(self) -> Any:
    """The base weights' storage dtype (`base_dtype`)."""
    return _DTYPES[self.base_dtype]

  def replace(self, **changes) -> 'LlmConfig':
    return dataclasses.replace(self, **changes)


def rope_inv_freq(cfg: LlmConfig) -> np.ndarray:
  """Inverse rotary frequencies `[head_dim // 2]` float32, scaled as the checkpoint says.

  The facts of transformers' `modeling_rope_utils` ('default', 'linear',
  'llama3' of Llama 3.1), computed in float32 as there.
  """
  dim = cfg.head_dim
  exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
  inv_freq = (1.0 / np.power(np.float32(cfg.rope_theta), exponents)).astype(np.float32)
  params = dict(cfg.rope_scaling)
  if cfg.rope_type == 'linear':
    return (inv_freq / np.float32(params['factor'])).astype(np.float32)
  if cfg.rope_type == 'llama3':
    factor, low, high = params['factor'], params['low_freq_factor'], params['high_freq_factor']
    old_len = params['original_max_position_embeddings']
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
    return np.where(medium, smoothed, scaled).astype(np.float32)
  return inv_freq


class RMSNorm(nn.Module):
  """`x / rms(x) * scale`, computed in float32 (scale `[embed]`, initially ones)."""

  eps: float
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ones = partitioning.with_axes(nn.initializers.ones, ('embed',))
    scale = self.param('scale', ones, (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (scale.astype(jnp.float32) * normed.astype(self.dtype)).astype(self.dtype)


class LoraDense(nn.Module):
  """`x @ kernel (+ bias)`, plus a LoRA update `dropout(x) @ lora_a @ lora_b * alpha / rank`.

  `lora_a` `[in, rank]` starts random, `lora_b` `[rank, out]` at zero, so a
  fresh adapter leaves the output unchanged (LoRA, Hu et al. 2021).
  """

  features: int
  axes: tuple[str, str]
  cfg: LlmConfig
  use_bias: bool = False
  lora: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg, dtype, width = self.cfg, self.cfg.dtype, x.shape[-1]
    init = nn.initializers.normal(cfg.initializer_range)
    kernel = self.param(
      'kernel', partitioning.with_axes(init, self.axes), (width, self.features), cfg.param_dtype
    )
    y = jnp.dot(x.astype(dtype), kernel.astype(dtype))
    if self.use_bias:
      bias_init = partitioning.with_axes(nn.initializers.zeros_init(), (self.axes[1],))
      y = y + self.param('bias', bias_init, (self.features,), cfg.param_dtype).astype(dtype)
    if not (self.lora and cfg.lora_rank):
      return y
    a_init = partitioning.with_axes(nn.initializers.he_uniform(), (self.axes[0], None))
    b_init = partitioning.with_axes(nn.initializers.zeros_init(), (None, self.axes[1]))
    lora_a = self.param('lora_a', a_init, (width, cfg.lora_rank))
    lora_b = self.param('lora_b', b_init, (cfg.lora_rank, self.features))
    h = nn.Dropout(cfg.lora_dropout)(x, deterministic=cfg.deterministic).astype(dtype)
    update = jnp.dot(jnp.dot(h, lora_a.astype(dtype)), lora_b.astype(dtype))
    return y + update * jnp.asarray(cfg.lora_alpha / cfg.lora_rank, dtype)


def _attend_grouped(q, k, v, mask) -> jax.Array:
  """Grouped-query attention in float32 logits.

  Args:
    q: `[b, l, heads, d]`.
    k: `[b, s, kv_heads, d]`.
    v: `[b, s, kv_heads, d]`.
    mask: bool `[b, l, s]`.

  Returns:
    `[b, l, heads, d]`.
  """
  b, length, heads, d = q.shape
  groups = heads // k.shape[2]
  q = q.reshape(b, length, k.shape[2], groups, d) * jnp.asarray(d**-0.5, q.dtype)
  logits = jnp.einsum('blkgd,bskd->bkgls', q, k).astype(jnp.float32)
  logits = jnp.where(mask[:, None, None], logits, layers.MASK_VALUE)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum('bkgls,bskd->blkgd', weights, v).reshape(b, length, heads, d)


class Attention(nn.Module):
  """Grouped-query self-attention with rotary positions and a KV cache.

  With `decode=True` the first call (no cache yet) runs ordinary causal
  attention over its whole input and keeps `cache/cached_key`,
  `cached_value` `[b, length, kv_heads, head_dim]`, `key_valid` `[b,
  length]` and `cache_index` `[]` (set to `prefill`: the positions already
  final; later inputs there are overwritten). Each later call writes its
  tokens at `cache_index` and attends to everything valid before them.
  """

  cfg: LlmConfig

  @nn.compact
  def __call__(self, x, positions, key_valid, prefill: int = 0) -> jax.Array:
    """`x` `[b, l, embed]`, positions `[b, l]`, key_valid bool `[b, l]` -> `[b, l, embed]`."""
    cfg, (b, length) = self.cfg, x.shape[:2]
    targets = set(cfg.lora_targets)

    def proj(name, heads):
      dense = LoraDense(
        heads * cfg.head_dim,
        ('embed', 'heads'),
        cfg,
        cfg.attention_bias,
        name in targets,
        name=f'{name}_proj',
      )
      return dense(x).reshape(b, length, heads, cfg.head_dim)

    inv_freq = jnp.asarray(rope_inv_freq(cfg))
    q = layers.apply_rotary(proj('q', cfg.num_heads), positions, inv_freq)
    k = layers.apply_rotary(proj('k', cfg.num_kv_heads), positions, inv_freq)
    v = proj('v', cfg.num_kv_heads)
    steps = jnp.arange(length)
    mask = (steps[None, :] <= steps[:, None])[None] & key_valid[:, None, :]
    if cfg.decode:
      k, v, mask = self._cache(k, v, key_valid, mask, prefill)
    y = _attend_grouped(q, k, v, mask).reshape(b, length, cfg.num_heads * cfg.head_dim)
    return LoraDense(
      cfg.hidden_size, ('heads', 'embed'), cfg, False, 'o' in targets, name='o_proj'
    )(y)

  def _cache(self, k, v, key_valid, mask, prefill):
    initialized = self.has_variable('cache', 'cached_key')
    cached_k = self.variable('cache', 'cached_key', lambda: k)
    cached_v = self.variable('cache', 'cached_value', lambda: v)
    valid = self.variable('cache', 'key_valid', lambda: key_valid)
    index = self.variable('cache', 'cache_index', lambda: jnp.asarray(prefill, jnp.int32))
    if not initialized:
      return k, v, mask
    start, length = index.value, k.shape[1]
    k = lax.dynamic_update_slice(cached_k.value, k.astype(cached_k.value.dtype), (0, start, 0, 0))
    v = lax.dynamic_update_slice(cached_v.value, v.astype(cached_v.value.dtype), (0, start, 0, 0))
    cached_k.value, cached_v.value = k, v
    keys = valid.value
    keys = lax.dynamic_update_slice(keys, key_valid.astype(keys.dtype), (0, start))
    valid.value = keys
    index.value = start + length
    causal = jnp.arange(k.shape[1])[None, :] <= (start + jnp.arange(length))[:, None]
    return k, v, causal[None] & keys[:, None, :]


class Block(nn.Module):
  """Pre-norm block: RMSNorm, attention, residual; RMSNorm, SwiGLU, residual."""

  cfg: LlmConfig

  @nn.compact
  def __call__(self, x, positions, key_valid, prefill: int = 0) -> jax.Array:
    cfg = self.cfg
    y = RMSNorm(cfg.rms_norm_eps, cfg.dtype, cfg.param_dtype, name='input_layernorm')(x)
    x = x + Attention(cfg, name='self_attn')(y, positions, key_valid, prefill)
    y = RMSNorm(cfg.rms_norm_eps, cfg.dtype, cfg.param_dtype, name='post_attention_layernorm')(x)
    return x + SwiGlu(cfg, name='mlp')(y)


class SwiGlu(nn.Module):
  """`down(silu(gate(x)) * up(x))`."""

  cfg: LlmConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg, targets = self.cfg, set(self.cfg.lora_targets)
    width = cfg.intermediate_size
    gate = LoraDense(width, ('embed', 'mlp'), cfg, lora='gate' in targets, name='gate_proj')(x)
    up = LoraDense(width, ('embed', 'mlp'), cfg, lora='up' in targets, name='up_proj')(x)
    down = LoraDense(
      cfg.hidden_size, ('mlp', 'embed'), cfg, lora='down' in targets, name='down_proj'
    )
    return down(nn.silu(gate) * up)


class LanguageModel(nn.Module):
  """Token embedding, decoder blocks, final norm, output projection (see module doc).

  Methods: `embed(tokens)`, `hidden(x, positions, key_valid, prefill)`,
  `logits(hidden)` and `__call__(tokens, positions=None)` (all three).
  """

  cfg: LlmConfig

  def setup(self):
    cfg = self.cfg
    init = nn.initializers.normal(cfg.initializer_range)
    self.embed_tokens = nn.Embed(
      cfg.vocab_size,
      cfg.hidden_size,
      dtype=cfg.dtype,
      param_dtype=cfg.param_dtype,
      embedding_init=partitioning.with_axes(init, ('vocab', 'embed')),
    )
    self.blocks = [Block(cfg, name=f'layers_{i}') for i in range(cfg.num_layers)]
    self.norm = RMSNorm(cfg.rms_norm_eps, cfg.dtype, cfg.param_dtype)
    if not cfg.tie_embeddings:
      self.lm_head = partitioning.dense(
        cfg.vocab_size,
        ('embed', 'vocab'),
        use_bias=False,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        kernel_init=init,
      )

  def embed(self, tokens: jax.Array) -> jax.Array:
    """`[b, l]` int32 -> `[b, l, hidden]`."""
    return self.embed_tokens(tokens)

  def hidden(
    self, x: jax.Array, positions: jax.Array, key_valid: jax.Array, prefill: int = 0
  ) -> jax.Array:
    """Final-normed states.

    Args:
      x: `[b, l, hidden]` input embeddings.
      positions: `[b, l]` int32 rotary positions.
      key_valid: bool `[b, l]`: False for padding no token may attend to.
      prefill: with `decode=True`, the cache-creating call's positions that
        stay (the next token goes to `prefill`).

    Returns:
      `[b, l, hidden]`.
    """
    for block in self.blocks:
      x = block(x, positions, key_valid, prefill)
    return self.norm(x)

  def logits(self, hidden: jax.Array) -> jax.Array:
    """`[b, l, hidden]` -> float32 `[b, l, vocab]`."""
    if self.cfg.tie_embeddings:
      return self.embed_tokens.attend(hidden).astype(jnp.float32)
    return self.lm_head(hidden).astype(jnp.float32)

  def __call__(self, tokens: jax.Array, positions: jax.Array | None = None) -> jax.Array:
    """Logits `[b, l, vocab]` of tokens `[b, l]` (positions default to 0..l-1)."""
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    valid = jnp.ones(tokens.shape, bool)
    return self.logits(self.hidden(self.embed(tokens), positions, valid))


def merge_lora(params: Any, cfg: LlmConfig) -> Any:
  """Parameters with every adapter folded into its kernel (`kernel + a @ b * alpha / rank`).

  Args:
    params: a `LanguageModel`'s parameters (nested dicts).
    cfg: its config (rank and alpha).

  Returns:
    The parameters of the same model with `lora_rank=0` (float32 kernels
    where an adapter was merged).
  """
  if not isinstance(params, dict):
    return params
  if 'lora_a' in params:
    scale = cfg.lora_alpha / cfg.lora_rank
    merged = {k: v for k, v in params.items() if k not in ('lora_a', 'lora_b')}
    update = jnp.dot(params['lora_a'].astype(jnp.float32), params['lora_b'].astype(jnp.float32))
    merged['kernel'] = params['kernel'].astype(jnp.float32) + update * scale
    return merged
  return {k: merge_lora(v, cfg) for k, v in params.items()}


def is_lora_leaf(path: tuple) -> bool:
  """Whether a parameter path (`jax.tree_util` keys) ends in an adapter matrix."""
  last = path[-1]
  return getattr(last, 'key', None) in ('lora_a', 'lora_b')


def reorder_vocab(params: Any, order: np.ndarray) -> Any:
  """A `LanguageModel`'s parameters with token ids renumbered: new id `i` is old `order[i]`.

  Args:
    params: nested dicts (`embed_tokens/embedding` `[vocab, hidden]`,
      `lm_head/kernel` `[hidden, vocab]` when untied).
    order: int `[vocab]`, a permutation (`aac_jax.data.tokenizer.run_order`).

  Returns:
    The same model for the renumbered ids (rows, resp. columns, permuted).
  """
  out = dict(params)
  out['embed_tokens'] = dict(params['embed_tokens'])
  out['embed_tokens']['embedding'] = params['embed_tokens']['embedding'][order]
  if 'lm_head' in params:
    out['lm_head'] = dict(params['lm_head'], kernel=params['lm_head']['kernel'][:, order])
  return out
