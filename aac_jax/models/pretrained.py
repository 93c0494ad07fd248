"""Captioner encoder on a pretrained tagger (ConvNeXt-Tiny, CNN14 or CLAP's HTS-AT).

`PretrainedEncoder` keeps the `ConformerEncoder` contract: torchlibrosa
log-mel features `[batch, time, mels]` (`aac_jax.audio.pann_frontend`) and
paddings in, frames `[batch, frames, dim]` and frame paddings out. On the
tagger's frames: optional mixup (training), the optional projection of the
DCASE 2024 baseline (dropout, Dense + ReLU, dropout) and optional conformer
blocks. With `encoder_freeze='all'` the tagger's output is cut from the
gradient (no backward pass through it); the optimizer also keeps frozen
parameters unchanged (`aac_jax.models.pretrained_setup.freeze_optimizer`).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from aac_jax.models import partitioning
from aac_jax.models.cnn14 import Cnn14Tagger
from aac_jax.models.config import CaptionerConfig
from aac_jax.models.conformer import ConformerBlock
from aac_jax.models.convnext import ConvNeXtSettings, ConvNeXtTagger
from aac_jax.models.htsat_encoder import HtsatTagger
from aac_jax.models.mixup import Mix, mix_frames

# Log-mel frames the taggers need for at least one output frame (ConvNeXt: 126).
MIN_INPUT_FRAMES = 256


def make_tagger(config: CaptionerConfig) -> nn.Module:
  """The tagger module of `config.encoder` (named 'tagger' by the caller)."""
  if config.encoder == 'convnext':
    return ConvNeXtTagger(
      ConvNeXtSettings(stem=config.convnext_stem),
      drop_path_rate=config.encoder_drop_path,
      deterministic=config.deterministic,
      name='tagger',
    )
  if config.encoder == 'cnn14':
    return Cnn14Tagger(deterministic=config.deterministic, name='tagger')
  if config.encoder == 'htsat':
    return HtsatTagger(config.htsat, name='tagger')
  raise ValueError(f'no pretrained tagger named {config.encoder!r}')


class PretrainedEncoder(nn.Module):
  """Tagger frames -> [mixup] -> [projection] -> [conformer blocks]."""

  config: CaptionerConfig

  def setup(self):
    cfg = self.config
    self.tagger = make_tagger(cfg)
    if cfg.encoder_projection:
      self.projection = partitioning.dense(cfg.encoder_dim, ('input', 'embed'), dtype=cfg.dtype)
      self.projection_dropout = nn.Dropout(cfg.projection_dropout)
    self.blocks = [ConformerBlock(cfg, name=f'block{i}') for i in range(cfg.encoder_layers)]

  def __call__(
    self, features: jax.Array, paddings: jax.Array, mix: Mix | None = None
  ) -> tuple[jax.Array, jax.Array]:
    """Encodes log-mel features.

    Args:
      features: `[batch, time, mels]` torchlibrosa log-mel (dB; CLAP's for htsat).
      paddings: `[batch, time]`, 1 = pad.
      mix: mixup draw (training), applied to the tagger's frames.

    Returns:
      `(encoded [batch, frames, dim], enc_paddings [batch, frames])`; `dim`
      is the tagger's width, or `encoder_dim` with the projection.
    """
    frames, frame_paddings = self.tagger(features.astype(jnp.float32), paddings)
    if self.config.encoder_freeze == 'all':
      frames = jax.lax.stop_gradient(frames)
    return self.encode_frames(frames, frame_paddings, mix)

  def encode_frames(
    self, frames: jax.Array, frame_paddings: jax.Array, mix: Mix | None = None
  ) -> tuple[jax.Array, jax.Array]:
    """Everything after the tagger (also used on stored frame embeddings)."""
    cfg = self.config
    if mix is not None:
      frames, frame_paddings = mix_frames(frames, frame_paddings, mix)
    x = frames.astype(cfg.dtype)
    if cfg.encoder_projection:
      x = self.projection_dropout(x, deterministic=cfg.deterministic)
      x = nn.relu(self.projection(x))
      x = self.projection_dropout(x, deterministic=cfg.deterministic)
    for block in self.blocks:
      x = block(x, frame_paddings)
    return x, frame_paddings
