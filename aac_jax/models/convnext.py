"""ConvNeXt-Tiny AudioSet tagger (Pellegrini et al., `topel/audioset-convnext-inf`) in Linen.

Facts from the reference (conette 0.3.2 `conette/nn/encoders/convnext.py`):
log-mel `[time, 224]` at 32 kHz -> BatchNorm over mel bins -> stem conv
kernel (18, 4), stride (18, 4), time padding 9 -> channels-first LayerNorm ->
4 stages of ConvNeXt blocks (depths 3, 3, 9, 3; widths 96, 192, 384, 768)
with LayerNorm + 2x2 stride-2 conv between stages -> mean over frequency
= frame embeddings `[batch, frames, 768]`; the clip head adds max and mean
over time, a LayerNorm and a linear layer to 527 AudioSet logits.

Layout here: `[batch, time, freq, channels]`; padded time rows are zeroed
before each time-mixing layer (`frame_ops`), so a clip's frames do not depend
on the other clips of its batch (upstream's batched frames do).
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from aac_jax.models import frame_ops, partitioning

# Stem conv (kernel = stride, time padding) per variant: the AudioSet tagger's
# (`after_stem_dim=[56]`) and CoNeTTE's encoder (`convnext_tiny(after_stem_dim=
# [252, 56])` in conette 0.3.2 `nn/encoders/convnext.py`: 4x finer frames).
STEMS = {'audioset': ((18, 4), 9), 'conette': ((4, 4), 4)}
LN_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class ConvNeXtSettings:
  """Architecture of the tagger (the published Tiny model is the default)."""

  n_mels: int = 224
  depths: tuple[int, ...] = (3, 3, 9, 3)
  dims: tuple[int, ...] = (96, 192, 384, 768)
  num_classes: int = 527
  stem: str = 'audioset'  # A `STEMS` name.

  @property
  def stem_kernel(self) -> tuple[int, int]:
    return STEMS[self.stem][0]

  @property
  def stem_time_pad(self) -> int:
    return STEMS[self.stem][1]


def frame_lengths(
  lengths: jax.Array, num_stages: int, settings: ConvNeXtSettings = ConvNeXtSettings()
) -> jax.Array:
  """Frames of the output for `lengths` log-mel frames (stem, then /2 per later stage)."""
  kernel, pad = settings.stem_kernel[0], settings.stem_time_pad
  lengths = (lengths + 2 * pad - kernel) // kernel + 1
  for _ in range(num_stages - 1):
    lengths = lengths // 2
  return lengths


class ConvNeXtBlock(nn.Module):
  """Depthwise 7x7 conv, LayerNorm, 4x MLP with exact GELU, layer scale, residual."""

  dim: int
  drop_path_rate: float = 0.0
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, lengths: jax.Array) -> jax.Array:
    """`x` `[batch, time, freq, dim]` -> same shape."""
    residual = x
    x = frame_ops.zero_padded_rows(x, lengths)
    x = partitioning.conv(
      self.dim, (7, 7), padding=((3, 3), (3, 3)), feature_group_count=self.dim, name='dwconv'
    )(x)
    x = partitioning.layer_norm('conv_out', epsilon=LN_EPS, name='norm')(x)
    x = partitioning.dense(4 * self.dim, ('conv_out', 'mlp'), name='pwconv1')(x)
    x = nn.gelu(x, approximate=False)
    x = partitioning.dense(self.dim, ('mlp', 'conv_out'), name='pwconv2')(x)
    scale_init = partitioning.with_axes(nn.initializers.constant(1e-6), ('conv_out',))
    x = x * self.param('scale_layer', scale_init, (self.dim,))
    rng = None if self.deterministic or not self.drop_path_rate else self.make_rng('dropout')
    return residual + frame_ops.drop_path(rng, x, self.drop_path_rate)


class ConvNeXtTagger(nn.Module):
  """ConvNeXt over torchlibrosa log-mel features; frame embeddings and clip logits.

  Attributes:
    settings: architecture.
    drop_path_rate: stochastic depth at the last block (linear from 0).
    deterministic: no stochastic depth.
  """

  settings: ConvNeXtSettings = ConvNeXtSettings()
  drop_path_rate: float = 0.0
  deterministic: bool = True

  def setup(self):
    s = self.settings
    self.bn0 = frame_ops.ChannelAffine()
    self.stem = partitioning.conv(
      s.dims[0], s.stem_kernel, strides=s.stem_kernel, padding=((s.stem_time_pad,) * 2, (0, 0))
    )
    self.stem_norm = partitioning.layer_norm('conv_out', epsilon=LN_EPS)
    self.down_norms = [partitioning.layer_norm('conv_in', epsilon=LN_EPS) for _ in s.dims[1:]]
    self.down_convs = [
      partitioning.conv(d, (2, 2), strides=(2, 2), padding='VALID') for d in s.dims[1:]
    ]
    total = sum(s.depths)
    rates = [self.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
    self.stages = [
      [ConvNeXtBlock(dim, rates[sum(s.depths[:i]) + j], self.deterministic) for j in range(depth)]
      for i, (dim, depth) in enumerate(zip(s.dims, s.depths, strict=True))
    ]
    self.norm = partitioning.layer_norm('conv_out', epsilon=LN_EPS)
    self.head = partitioning.dense(s.num_classes, ('conv_out', 'classes'))

  def __call__(self, log_mel: jax.Array, paddings: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Frame embeddings (before the clip head's norm, as upstream's `frame_embs`).

    Args:
      log_mel: `[batch, time, n_mels]` torchlibrosa log-mel (dB).
      paddings: `[batch, time]`, 1 = pad.

    Returns:
      `(frames [batch, frames, dims[-1]], frame_paddings [batch, frames])`.
    """
    lengths = frame_ops.lengths_from_paddings(paddings)
    x = self.bn0(log_mel)[..., None]  # [b, t, mels, 1]
    x = frame_ops.zero_padded_rows(x, lengths)
    x = self.stem_norm(self.stem(x))
    lengths = frame_lengths(lengths, 1, self.settings)
    for i, blocks in enumerate(self.stages):
      if i > 0:
        x = self.down_convs[i - 1](self.down_norms[i - 1](x))
        lengths = lengths // 2
      for block in blocks:
        x = block(x, lengths)
    frames = jnp.mean(x, axis=2)
    return frames, frame_ops.paddings_from_lengths(lengths, frames.shape[1])

  def clip_logits(self, frames: jax.Array, frame_paddings: jax.Array) -> jax.Array:
    """AudioSet logits `[batch, num_classes]` (upstream's clipwise output before sigmoid)."""
    pooled = frame_ops.masked_max_plus_mean(frames, frame_paddings)
    return self.head(self.norm(pooled))

  def tag(self, log_mel: jax.Array, paddings: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`(frames, frame_paddings, clip_logits)` in one call (also initialises the head)."""
    frames, frame_paddings = self(log_mel, paddings)
    return frames, frame_paddings, self.clip_logits(frames, frame_paddings)
