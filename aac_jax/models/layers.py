"""Attention, feed-forward and position helpers shared by encoder and decoder.

Masks are boolean and broadcast to `[batch, heads, queries, keys]`; True
means the query may attend to the key. Paddings are floats, 1 = pad.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from aac_jax.models import partitioning

# Large but finite, so that a fully masked row gives a uniform (not NaN) softmax.
MASK_VALUE = -1e9


def maybe_remat(block: type[nn.Module], config: Any) -> type[nn.Module]:
  """`block` recomputed in the backward pass when `config.remat == 'block'` (training only).

  The parameters keep their names (`nn.remat` is a lifted transform); a
  decoding model (`config.decode`, a KV cache) is never rematerialised.
  """
  if getattr(config, 'remat', 'none') == 'block' and not getattr(config, 'decode', False):
    return nn.remat(block)
  return block


def sinusoidal_table(length: int, dim: int) -> np.ndarray:
  """Fixed sine/cosine position embeddings.

  Args:
    length: number of positions.
    dim: embedding size (even).

  Returns:
    float32 `[length, dim]`: sines in the first half, cosines in the second.
  """
  half = dim // 2
  inv_freq = np.exp(-np.log(10000.0) * np.arange(half) / max(half - 1, 1))
  angles = np.arange(length)[:, None] * inv_freq[None, :]
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=-1).astype(np.float32)


def step_positions(module: nn.Module, length: int, decode: bool) -> jax.Array:
  """Absolute positions `[length]` of the tokens a decoder call gets.

  Teacher forcing: `0 .. length - 1`. With `decode=True` a `cache/position`
  counter `[]` of `module` holds the position of the next token; the call
  that creates the cache counts from 0 and does not advance it.

  Args:
    module: the decoder module owning the counter (call inside its
      `nn.compact` method).
    length: tokens of this call.
    decode: cached step-by-step decoding.

  Returns:
    int32 `[length]`.
  """
  if not decode:
    return jnp.arange(length)
  initialized = module.has_variable('cache', 'position')
  position = module.variable('cache', 'position', lambda: jnp.zeros((), jnp.int32))
  start = position.value if initialized else 0
  if initialized:
    position.value = start + length
  return start + jnp.arange(length)


def apply_rotary(
  x: jax.Array, positions: jax.Array, inv_freq: jax.Array | None = None
) -> jax.Array:
  """Rotary position embedding (RoFormer) over the last axis (halves rotated).

  Args:
    x: `[batch, time, heads, head_dim]` queries or keys (head_dim even).
    positions: `[time]` or `[batch, time]` integer positions.
    inv_freq: `[head_dim // 2]` float32 frequencies; default base 10000
      (`aac_jax.models.llm.rope_inv_freq` gives a checkpoint's).

  Returns:
    `x` rotated by position-dependent angles, same shape and dtype.
  """
  half = x.shape[-1] // 2
  if inv_freq is None:
    inv_freq = 1.0 / (10000.0 ** (jnp.arange(half, dtype=jnp.float32) / half))
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [(batch,) time, half]
  if angles.ndim == 2:
    angles = angles[None]
  sin = jnp.sin(angles)[:, :, None, :]
  cos = jnp.cos(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x.dtype)


def padding_mask(paddings: jax.Array) -> jax.Array:
  """Key mask from paddings: `[batch, keys]` -> `[batch, 1, 1, keys]` bool."""
  return (paddings < 0.5)[:, None, None, :]


def causal_mask(query_positions: jax.Array, num_keys: int) -> jax.Array:
  """Mask letting query at position p see keys 0..p.

  Args:
    query_positions: `[queries]` absolute positions of the queries.
    num_keys: number of keys (positions 0..num_keys-1).

  Returns:
    bool `[1, 1, queries, keys]`.
  """
  return (jnp.arange(num_keys)[None, :] <= query_positions[:, None])[None, None]


class HeadsParams(nn.Module):
  """The parameters of a projection `[..., d_in]` -> `[..., heads, head_dim]`.

  `kernel` `[d_in, heads, head_dim]` and `bias` `[heads, head_dim]`: the
  names, shapes and initial values of `nn.DenseGeneral(features=(heads,
  head_dim))` (LeCun normal over the flattened `[d_in, heads * head_dim]`,
  zero bias), so checkpoints and converters see the same tree.
  """

  num_heads: int
  head_dim: int

  @nn.compact
  def __call__(self, in_dim: int) -> tuple[jax.Array, jax.Array]:
    features = (self.num_heads, self.head_dim)

    def kernel_init(rng, shape, dtype=jnp.float32):
      flat = nn.initializers.lecun_normal()(rng, (in_dim, self.num_heads * self.head_dim), dtype)
      return flat.reshape(shape)

    kernel_init = partitioning.with_axes(kernel_init, ('embed', 'heads', 'kv'))
    bias_init = partitioning.with_axes(nn.initializers.zeros_init(), ('heads', 'kv'))
    kernel = self.param('kernel', kernel_init, (in_dim, *features), jnp.float32)
    return kernel, self.param('bias', bias_init, features, jnp.float32)


def _fused_heads(x: jax.Array, dim: int, num_heads: int, dtype: Any, names: tuple[str, ...]):
  """The projections `names` of `x` (e.g. query, key, value) to `num_heads` heads, as one matmul.

  Each name has the parameters of an `nn.DenseGeneral(features=(num_heads,
  dim // num_heads))` (`HeadsParams`); the kernels are concatenated so that
  XLA runs one larger matmul (forward and backward) instead of several.

  Returns:
    one `[..., heads, dim // heads]` array per name.
  """
  params = [HeadsParams(num_heads, dim // num_heads, name=name)(x.shape[-1]) for name in names]
  kernel = jnp.concatenate([k for k, _ in params], axis=1).astype(dtype)
  bias = jnp.concatenate([b for _, b in params], axis=0).astype(dtype)
  y = jnp.einsum('...d,dhk->...hk', x.astype(dtype), kernel) + bias
  return jnp.split(y, len(names), axis=-2)


def _merge_heads(dim: int, dtype: Any) -> nn.DenseGeneral:
  """Projection `[..., heads, head_dim]` -> `[..., dim]`."""
  return nn.DenseGeneral(
    features=dim,
    axis=(-2, -1),
    dtype=dtype,
    kernel_init=partitioning.with_axes(nn.initializers.lecun_normal(), ('heads', 'kv', 'embed')),
    bias_init=partitioning.with_axes(nn.initializers.zeros_init(), ('embed',)),
    name='out',
  )


def _attend(q, k, v, mask, weight_dropout: nn.Dropout, deterministic: bool) -> jax.Array:
  """Scaled dot-product attention.

  Args:
    q: `[batch, queries, heads, head_dim]`.
    k: `[batch, keys, heads, head_dim]`.
    v: `[batch, keys, heads, head_dim]`.
    mask: bool, broadcastable to `[batch, heads, queries, keys]`.
    weight_dropout: dropout applied to the attention weights.
    deterministic: disables that dropout.

  Returns:
    `[batch, queries, heads, head_dim]` in the dtype of `v`.
  """
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum('bqhd,bkhd->bhqk', q * jnp.asarray(scale, q.dtype), k)
  logits = jnp.where(mask, logits.astype(jnp.float32), MASK_VALUE)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  weights = weight_dropout(weights, deterministic=deterministic)
  return jnp.einsum('bhqk,bkhd->bqhd', weights, v)


class EncoderSelfAttention(nn.Module):
  """Self-attention with rotary positions and a key padding mask."""

  num_heads: int
  dropout: float
  attention_dropout: float
  deterministic: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, paddings: jax.Array) -> jax.Array:
    """Residual branch (pre-norm); `x` `[b, t, d]`, paddings `[b, t]` -> `[b, t, d]`."""
    dim = x.shape[-1]
    y = partitioning.layer_norm(dtype=self.dtype, name='norm')(x)
    positions = jnp.arange(x.shape[1])
    q, k, v = _fused_heads(y, dim, self.num_heads, self.dtype, ('query', 'key', 'value'))
    q, k = apply_rotary(q, positions), apply_rotary(k, positions)
    y = _attend(
      q, k, v, padding_mask(paddings), nn.Dropout(self.attention_dropout), self.deterministic
    )
    y = _merge_heads(dim, self.dtype)(y)
    return nn.Dropout(self.dropout)(y, deterministic=self.deterministic)


class CausalSelfAttention(nn.Module):
  """Decoder self-attention; with `decode=True` keys and values are cached.

  Cache variables (collection `cache`): `cached_key`, `cached_value`
  `[batch, max_len, heads, head_dim]` and `cache_index` `[]`. They are created
  by a first call on a full-length input (which computes ordinary causal
  attention), then each later call appends its tokens at `cache_index`.
  """

  num_heads: int
  attention_dropout: float
  deterministic: bool
  decode: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """`x` `[b, l, d]` (already normalised) -> `[b, l, d]`."""
    dim, length = x.shape[-1], x.shape[1]
    q, k, v = _fused_heads(x, dim, self.num_heads, self.dtype, ('query', 'key', 'value'))
    mask = causal_mask(jnp.arange(length), length)
    if self.decode:
      initialized = self.has_variable('cache', 'cached_key')
      cached_k = self.variable('cache', 'cached_key', jnp.zeros, k.shape, k.dtype)
      cached_v = self.variable('cache', 'cached_value', jnp.zeros, v.shape, v.dtype)
      index = self.variable('cache', 'cache_index', lambda: jnp.zeros((), jnp.int32))
      if initialized:
        start = index.value
        k = lax.dynamic_update_slice(cached_k.value, k, (0, start, 0, 0))
        v = lax.dynamic_update_slice(cached_v.value, v, (0, start, 0, 0))
        cached_k.value, cached_v.value = k, v
        index.value = start + length
        mask = causal_mask(start + jnp.arange(length), k.shape[1])
    y = _attend(q, k, v, mask, nn.Dropout(self.attention_dropout), self.deterministic)
    return _merge_heads(dim, self.dtype)(y)


class CrossAttention(nn.Module):
  """Decoder-to-encoder attention honouring the encoder padding mask.

  Several captions of one clip share its encoding: with `x` `[b * g, l, d]`
  and `encoded` `[b, s, e]` (caption `i` belongs to clip `i // g`), the keys
  and values are projected once per clip and the `g` captions' queries attend
  to them together (the same result as repeating `encoded` `g` times).

  With `decode=True` the projected encoder keys and values are computed once
  (on the call that creates the cache) and kept as `cache/cross_key` and
  `cache/cross_value` `[batch, enc_time, heads, head_dim]`.
  """

  num_heads: int
  attention_dropout: float
  deterministic: bool
  decode: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, encoded: jax.Array, enc_paddings: jax.Array) -> jax.Array:
    """`x` `[b * g, l, d]`, encoded `[b, s, e]`, enc_paddings `[b, s]` -> `[b * g, l, d]`."""
    dim, (captions, length) = x.shape[-1], x.shape[:2]
    (q,) = _fused_heads(x, dim, self.num_heads, self.dtype, ('query',))
    if self.decode and self.has_variable('cache', 'cross_key'):
      k = self.get_variable('cache', 'cross_key')
      v = self.get_variable('cache', 'cross_value')
    else:
      k, v = _fused_heads(encoded, dim, self.num_heads, self.dtype, ('key', 'value'))
      if self.decode:
        self.put_variable('cache', 'cross_key', k)
        self.put_variable('cache', 'cross_value', v)
    clips = k.shape[0]
    if captions % clips:
      raise ValueError(f'{captions} captions do not split evenly over {clips} encoded clips')
    q = q.reshape(clips, captions // clips * length, *q.shape[2:])  # Each clip's captions.
    y = _attend(
      q, k, v, padding_mask(enc_paddings), nn.Dropout(self.attention_dropout), self.deterministic
    )
    return _merge_heads(dim, self.dtype)(y.reshape(captions, length, *y.shape[2:]))


class FeedForward(nn.Module):
  """Pre-norm feed-forward residual branch: LN, dense, swish, dense."""

  hidden_dim: int
  dropout: float
  deterministic: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """`[..., d]` -> `[..., d]`."""
    y = partitioning.layer_norm(dtype=self.dtype, name='norm')(x)
    y = nn.swish(
      partitioning.dense(self.hidden_dim, ('embed', 'mlp'), dtype=self.dtype, name='wi')(y)
    )
    y = nn.Dropout(self.dropout)(y, deterministic=self.deterministic)
    y = partitioning.dense(x.shape[-1], ('mlp', 'embed'), dtype=self.dtype, name='wo')(y)
    return nn.Dropout(self.dropout)(y, deterministic=self.deterministic)
