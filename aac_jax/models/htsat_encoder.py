"""CLAP's HTS-AT audio tower as the captioner's tagger (`model.encoder='htsat'`).

`HtsatTagger` runs `aac_jax.metrics.clap.htsat.Htsat` (the module the CLAP
metrics use, parity-tested against transformers) on the `'clap'` front end's
log-mel `[batch, frames, mels]` and returns its last stage as a time
sequence: the token grid is unfolded as transformers' `ClapAudioEncoder`
unfolds its `last_hidden_state` (the `freq_ratio` pieces of the folded image
put back in time order) and averaged over frequency, giving
`freq_ratio * side` frames of `num_features` (32 x 768 for the published
model). Every frame is real: the front end repeats each clip to its fixed
length. Fused checkpoints take their 4-channel input with `is_longer` false
(the long-clip fusion branch is not used).

BatchNorm statistics are folded into a per-channel affine
(`frame_ops.ChannelAffine`) when a CLAP folder is loaded (`load_tagger_params`),
so the captioner keeps one `params` collection; fine-tuning trains that affine.
"""

import pathlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from aac_jax.audio.clap_frontend import ClapFrontendSettings
from aac_jax.metrics import fense_models
from aac_jax.metrics.clap import embedder, weights
from aac_jax.metrics.clap import model as clap_model
from aac_jax.metrics.clap.htsat import Htsat, HtsatConfig
from aac_jax.models import frame_ops

_BATCH_NORM_EPS = 1e-5  # PyTorch's, as `htsat.RUNNING_BATCH_NORM`.


def grid_to_frames(tokens: jax.Array, config: HtsatConfig) -> jax.Array:
  """Last-stage tokens `[batch, side**2, dim]` -> frames `[batch, freq_ratio * side, dim]`.

  Grid rows are `freq_ratio` pieces of the clip's time axis, each `side /
  freq_ratio` frequency rows high (`htsat.mel_to_image`); frame
  `piece * side + column` is the mean over that piece's frequency rows.
  """
  b, n, d = tokens.shape
  side, r = int(round(n**0.5)), config.freq_ratio
  if side % r:
    raise ValueError(f'the last HTS-AT grid side {side} is not a multiple of freq_ratio {r}')
  grid = tokens.reshape(b, r, side // r, side, d)
  return grid.mean(axis=2).reshape(b, r * side, d)


class HtsatTagger(nn.Module):
  """Log-mel `[batch, frames, mels]` -> HTS-AT frames (see the module docstring)."""

  config: HtsatConfig

  @nn.compact
  def __call__(self, features: jax.Array, paddings: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Encodes CLAP log-mel features.

    Args:
      features: `[batch, frames, num_mel_bins]` dB log-mel (`frontend.kind='clap'`).
      paddings: `[batch, frames]` (all 0: the front end fills every frame).

    Returns:
      `(frames [batch, freq_ratio * side, num_features], zeros [batch, same])`.
    """
    del paddings
    mel = features[:, None]
    if self.config.enable_fusion:
      mel = jnp.broadcast_to(mel, (mel.shape[0], 4, *mel.shape[2:]))
    _, tokens = Htsat(self.config, batch_norm=frame_ops.ChannelAffine, name='htsat')(mel)
    frames = grid_to_frames(tokens, self.config)
    return frames, jnp.zeros(frames.shape[:2], jnp.float32)


def read_folder(folder: str) -> tuple[clap_model.ClapConfig, ClapFrontendSettings]:
  """The sizes and front end of a CLAP folder (`embedder.read_configs`), for `encoder_init`."""
  try:
    return embedder.read_configs(pathlib.Path(folder))
  except (fense_models.ModelUnavailable, ValueError) as e:
    raise ValueError(f'model.encoder_init={folder} is not a usable CLAP folder: {e}') from e


def _fold(params: dict, stats: dict) -> dict:
  """BatchNorm `{scale, bias}` + running `{mean, var}` -> the equivalent affine, recursively."""
  if 'mean' in stats:
    scale = params['scale'] / np.sqrt(stats['var'] + _BATCH_NORM_EPS)
    return {'scale': scale, 'bias': params['bias'] - stats['mean'] * scale}
  return {k: _fold(params[k], stats[k]) if k in stats else v for k, v in params.items()}


def load_tagger_params(folder: str) -> dict[str, Any]:
  """`HtsatTagger` parameters (numpy, BatchNorms folded) from a CLAP folder's audio tower."""
  config, _ = read_folder(folder)
  try:
    tensors = fense_models.load_safetensors(
      pathlib.Path(folder), embedder.HINT, embedder.CONVERT.format(folder=folder)
    )
    variables = weights.variables_from_hf(tensors, config)
  except (fense_models.ModelUnavailable, KeyError, ValueError) as e:
    raise ValueError(f'model.encoder_init={folder}: {e}') from e
  audio = variables['params']['audio_model']
  return {'htsat': _fold(audio, variables['batch_stats']['audio_model'])}
