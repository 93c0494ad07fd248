"""Conformer encoder over log-mel features.

Padding never reaches real frames: padded frames are zeroed before every
convolution (the subsampling conv2d layers and the depthwise conv),
self-attention masks padded keys, and every normalisation is per frame
(LayerNorm). So appending padding frames leaves the encodings of real frames
unchanged.

The features enter unnormalised: a per-clip normalisation would erase the
absolute level, and loudness is part of what captions describe.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from aac_jax.models import layers, partitioning
from aac_jax.models.config import CaptionerConfig


def _zero_padded(x: jax.Array, paddings: jax.Array) -> jax.Array:
  """Zeroes padded frames: `x` `[b, t, ...]`, paddings `[b, t]`."""
  keep = (1.0 - paddings).astype(x.dtype)
  return x * keep.reshape(keep.shape + (1,) * (x.ndim - 2))


class ConvSubsampling(nn.Module):
  """Stride-2 3x3 conv2d layers over [time, mels], then a projection.

  Output frame i of each layer is centred on input frame 2i and is real iff
  that input frame is real; padded inputs are zeroed first, so the layer sees
  exactly the zero padding it would see at the end of an unpadded clip.
  """

  config: CaptionerConfig

  @nn.compact
  def __call__(self, features: jax.Array, paddings: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`[b, t, mels]`, `[b, t]` -> `[b, t / f, d]`, `[b, t / f]` (f = subsampling)."""
    cfg = self.config
    x = features[..., None].astype(cfg.dtype)  # [b, t, mels, 1]
    for i in range(int(math.log2(cfg.subsampling))):
      x = _zero_padded(x, paddings)
      x = partitioning.conv(
        cfg.conv_channels,
        (3, 3),
        strides=(2, 2),
        padding=((1, 1), (1, 1)),
        dtype=cfg.dtype,
        name=f'conv{i}',
      )(x)
      x = nn.relu(x)
      paddings = paddings[:, ::2]
    x = x.reshape(x.shape[0], x.shape[1], -1)
    x = partitioning.dense(cfg.encoder_dim, ('input', 'embed'), dtype=cfg.dtype, name='proj')(x)
    x = nn.Dropout(cfg.dropout)(x, deterministic=cfg.deterministic)
    return x, paddings


class DepthwiseConv1D(nn.Module):
  """Per-channel 'SAME' convolution over time with zero padding at both ends.

  Written as a sum of shifted, scaled copies rather than a grouped
  `lax.conv`: the same arithmetic, but about twice as fast on CPU (XLA's
  grouped convolution and its gradient are slow there) and fused on GPU.
  """

  kernel_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """`[b, t, d]` -> `[b, t, d]`."""
    dim, length = x.shape[-1], x.shape[1]
    init = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal', in_axis=0)
    init = partitioning.with_axes(init, ('conv_time', 'mlp'))
    kernel = self.param('kernel', init, (self.kernel_size, dim), jnp.float32)
    bias_init = partitioning.with_axes(nn.initializers.zeros, ('mlp',))
    bias = self.param('bias', bias_init, (dim,), jnp.float32)
    kernel, bias = kernel.astype(self.dtype), bias.astype(self.dtype)
    left = (self.kernel_size - 1) // 2
    padded = jnp.pad(x, ((0, 0), (left, self.kernel_size - 1 - left), (0, 0)))
    y = padded[:, :length] * kernel[0]
    for k in range(1, self.kernel_size):
      y = y + padded[:, k : k + length] * kernel[k]
    return y + bias


class ConvolutionModule(nn.Module):
  """LN, pointwise conv, GLU, depthwise conv, LN, swish, pointwise conv."""

  config: CaptionerConfig

  @nn.compact
  def __call__(self, x: jax.Array, paddings: jax.Array) -> jax.Array:
    """Residual branch: `[b, t, d]`, `[b, t]` -> `[b, t, d]`."""
    cfg = self.config
    dim = x.shape[-1]
    y = partitioning.layer_norm(dtype=cfg.dtype, name='norm')(x)
    y = partitioning.dense(2 * dim, ('embed', 'mlp'), dtype=cfg.dtype, name='pointwise_in')(y)
    y = nn.glu(y, axis=-1)
    y = _zero_padded(y, paddings)  # Padded frames must not leak through the kernel.
    y = DepthwiseConv1D(cfg.conv_kernel_size, cfg.dtype, name='depthwise')(y)
    y = nn.swish(partitioning.layer_norm('mlp', dtype=cfg.dtype, name='conv_norm')(y))
    y = partitioning.dense(dim, ('mlp', 'embed'), dtype=cfg.dtype, name='pointwise_out')(y)
    return nn.Dropout(cfg.dropout)(y, deterministic=cfg.deterministic)


class ConformerBlock(nn.Module):
  """Macaron block: FF/2, self-attention, convolution, FF/2, LayerNorm."""

  config: CaptionerConfig

  @nn.compact
  def __call__(self, x: jax.Array, paddings: jax.Array) -> jax.Array:
    """`[b, t, d]`, `[b, t]` -> `[b, t, d]`."""
    cfg = self.config

    def feed_forward(name):
      return layers.FeedForward(
        cfg.encoder_ff_dim, cfg.dropout, cfg.deterministic, cfg.dtype, name=name
      )

    x = x + 0.5 * feed_forward('ff_in')(x)
    x = x + layers.EncoderSelfAttention(
      cfg.encoder_heads,
      cfg.dropout,
      cfg.attention_dropout,
      cfg.deterministic,
      cfg.dtype,
      name='attention',
    )(x, paddings)
    x = x + ConvolutionModule(cfg, name='conv')(x, paddings)
    x = x + 0.5 * feed_forward('ff_out')(x)
    return partitioning.layer_norm(dtype=cfg.dtype, name='norm')(x)


class ConformerEncoder(nn.Module):
  """Log-mel features to encodings at 1/subsampling of the frame rate."""

  config: CaptionerConfig

  @nn.compact
  def __call__(self, features: jax.Array, paddings: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Encodes a batch.

    Args:
      features: `[batch, time, mels]` log-mel features.
      paddings: `[batch, time]`, 1 = pad.

    Returns:
      encoded `[batch, time / subsampling, encoder_dim]` (compute dtype) and
      its paddings `[batch, time / subsampling]` (rounded up).
    """
    paddings = paddings.astype(jnp.float32)
    x, paddings = ConvSubsampling(self.config, name='subsampling')(features, paddings)
    block = layers.maybe_remat(ConformerBlock, self.config)
    for i in range(self.config.encoder_layers):
      x = block(self.config, name=f'block{i}')(x, paddings)
    return x, paddings
