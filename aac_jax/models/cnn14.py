"""PANNs CNN14 (Kong et al. 2020) in Linen: frame embeddings and AudioSet clip logits.

Facts from the reference (conette 0.3.2 `conette/nn/encoders/cnn14.py`,
`conette/nn/pann_utils/models.py`): log-mel `[time, 64]` at 32 kHz ->
BatchNorm over mel bins -> six conv blocks (two 3x3 convs without bias, each
followed by BatchNorm and ReLU; 2x2 average pooling after blocks 1-5;
channels 64 .. 2048; dropout 0.2 after each block in training) -> mean over
frequency = frame embeddings `[batch, frames, 2048]` (time / 32); the clip
head adds max and mean over time, dropout 0.5, `fc1` + ReLU and
`fc_audioset` (527 logits).

BatchNorm runs in inference mode with statistics folded into a per-channel
affine (`frame_ops.ChannelAffine`). Padded time rows are zeroed before every
convolution, so a clip's frames do not depend on its batch.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from aac_jax.models import frame_ops, partitioning


@dataclasses.dataclass(frozen=True)
class Cnn14Settings:
  """Architecture of CNN14 (the published model is the default)."""

  n_mels: int = 64
  channels: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)
  num_classes: int = 527
  block_dropout: float = 0.2
  head_dropout: float = 0.5

  @property
  def pooled_blocks(self) -> int:
    """Blocks followed by 2x2 average pooling (all but the last)."""
    return len(self.channels) - 1


class ConvBlock(nn.Module):
  """(3x3 conv, folded BatchNorm, ReLU) twice; padded rows zeroed before each conv."""

  channels: int

  @nn.compact
  def __call__(self, x: jax.Array, lengths: jax.Array) -> jax.Array:
    """`x` `[batch, time, freq, in]` -> `[batch, time, freq, channels]`."""
    for i in (1, 2):
      x = frame_ops.zero_padded_rows(x, lengths)
      conv = partitioning.conv(
        self.channels, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, name=f'conv{i}'
      )
      x = conv(x)
      x = nn.relu(frame_ops.ChannelAffine(name=f'bn{i}')(x))
    return x


class Cnn14Tagger(nn.Module):
  """CNN14 over torchlibrosa log-mel features.

  Attributes:
    settings: architecture.
    deterministic: no dropout.
  """

  settings: Cnn14Settings = Cnn14Settings()
  deterministic: bool = True

  def setup(self):
    s = self.settings
    self.bn0 = frame_ops.ChannelAffine()
    self.blocks = [ConvBlock(c) for c in s.channels]
    self.block_dropout = nn.Dropout(s.block_dropout)
    self.head_dropout = nn.Dropout(s.head_dropout)
    self.fc1 = partitioning.dense(s.channels[-1], ('conv_in', 'conv_out'))
    self.fc_audioset = partitioning.dense(s.num_classes, ('conv_out', 'classes'))

  def __call__(self, log_mel: jax.Array, paddings: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Frame embeddings.

    Args:
      log_mel: `[batch, time, n_mels]` torchlibrosa log-mel (dB).
      paddings: `[batch, time]`, 1 = pad.

    Returns:
      `(frames [batch, time // 32, channels[-1]], frame_paddings)`.
    """
    lengths = frame_ops.lengths_from_paddings(paddings)
    x = self.bn0(log_mel)[..., None]  # [b, t, mels, 1]
    for i, block in enumerate(self.blocks):
      x = block(x, lengths)
      if i < self.settings.pooled_blocks:
        x = nn.avg_pool(x, (2, 2), strides=(2, 2), padding='VALID')
        lengths = lengths // 2
      x = self.block_dropout(x, deterministic=self.deterministic)
    frames = jnp.mean(x, axis=2)
    return frames, frame_ops.paddings_from_lengths(lengths, frames.shape[1])

  def clip_logits(self, frames: jax.Array, frame_paddings: jax.Array) -> jax.Array:
    """AudioSet logits `[batch, num_classes]` (upstream's clipwise output before sigmoid)."""
    pooled = frame_ops.masked_max_plus_mean(frames, frame_paddings)
    pooled = self.head_dropout(pooled, deterministic=self.deterministic)
    return self.fc_audioset(nn.relu(self.fc1(pooled)))

  def tag(self, log_mel: jax.Array, paddings: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`(frames, frame_paddings, clip_logits)` in one call (also initialises the head)."""
    frames, frame_paddings = self(log_mel, paddings)
    return frames, frame_paddings, self.clip_logits(frames, frame_paddings)
