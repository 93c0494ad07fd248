"""Padding-aware helpers of the pretrained convolutional taggers (ConvNeXt, CNN14).

Upstream runs each clip alone or in zero-padded batches where padding leaks
into real frames through every convolution. Here padded time rows are set to
zero before each layer that mixes time, which is exactly the zero padding a
clip sees alone, so real frames do not depend on the padding of the batch.
Layouts are channels-last: `[batch, time, freq, channels]`.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from aac_jax.models import partitioning


def zero_padded_rows(x: jax.Array, lengths: jax.Array) -> jax.Array:
  """Zeroes time rows at or past each clip's length.

  Args:
    x: `[batch, time, ...]`.
    lengths: `[batch]` int, real rows of each clip.

  Returns:
    `x` with rows `t >= lengths[b]` set to 0.
  """
  real = jnp.arange(x.shape[1])[None, :] < lengths[:, None]
  real = real.reshape(real.shape + (1,) * (x.ndim - 2))
  return jnp.where(real, x, jnp.zeros((), x.dtype))


def lengths_from_paddings(paddings: jax.Array) -> jax.Array:
  """`[batch, time]` paddings (1 = pad, trailing) -> `[batch]` int32 real lengths."""
  return jnp.sum(paddings < 0.5, axis=1).astype(jnp.int32)


def paddings_from_lengths(lengths: jax.Array, time: int) -> jax.Array:
  """`[batch]` lengths -> `[batch, time]` float32 paddings (1 = pad)."""
  return (jnp.arange(time)[None, :] >= lengths[:, None]).astype(jnp.float32)


def masked_max_plus_mean(frames: jax.Array, paddings: jax.Array) -> jax.Array:
  """Clip pooling of both taggers: max over real frames plus mean over real frames.

  Args:
    frames: `[batch, time, dim]`.
    paddings: `[batch, time]`, 1 = pad.

  Returns:
    `[batch, dim]`.
  """
  real = (paddings < 0.5)[:, :, None]
  count = jnp.maximum(jnp.sum(real, axis=1), 1).astype(frames.dtype)
  mean = jnp.sum(jnp.where(real, frames, 0), axis=1) / count
  peak = jnp.max(jnp.where(real, frames, -jnp.inf), axis=1)
  return peak + mean


class ChannelAffine(nn.Module):
  """Per-channel `x * scale + bias` over the last axis.

  A BatchNorm in inference mode with its statistics folded in:
  `scale = weight / sqrt(running_var + eps)`,
  `bias = bias - running_mean * scale` (done by the checkpoint converter).
  Fine-tuning trains this affine; statistics are never re-estimated.
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale_init = partitioning.with_axes(nn.initializers.ones, ('conv_out',))
    bias_init = partitioning.with_axes(nn.initializers.zeros, ('conv_out',))
    scale = self.param('scale', scale_init, (x.shape[-1],), jnp.float32)
    bias = self.param('bias', bias_init, (x.shape[-1],), jnp.float32)
    return x * scale.astype(x.dtype) + bias.astype(x.dtype)


def drop_path(rng: jax.Array | None, x: jax.Array, rate: float) -> jax.Array:
  """Stochastic depth: drops the whole residual branch of some examples.

  Args:
    rng: PRNG key, or None (deterministic: returns `x`).
    x: `[batch, ...]` residual branch.
    rate: probability of dropping one example's branch.

  Returns:
    `x` with dropped examples zeroed and kept ones scaled by `1 / (1 - rate)`.
  """
  if rng is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(rng, 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros((), x.dtype))
