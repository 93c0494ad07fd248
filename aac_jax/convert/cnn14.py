"""Converter of PANNs CNN14 (`Cnn14_mAP=0.431.pth`, Zenodo 3987831).

The file is `{'model': state_dict}` (PANNs' inference code and conette's
registry read `checkpoint['model']`). BatchNorm statistics are folded into a
per-channel affine (`mapping.KINDS['batchnorm']`).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from aac_jax.audio.pann_frontend import PannFrontendSettings
from aac_jax.convert import mapping, pann_frontend_check
from aac_jax.models.cnn14 import Cnn14Settings, Cnn14Tagger

NAME = 'cnn14'
FRONTEND = PannFrontendSettings(n_mels=64)  # 32 kHz, n_fft 1024, hop 320, 50-14000 Hz
STATE_DICT_KEY = 'model'


def entries(settings: Cnn14Settings) -> list[mapping.Entry]:
  """Torch -> Linen mapping of `Cnn14Tagger`."""
  e = mapping.Entry
  out = [e('bn0', ('bn0',), 'batchnorm')]
  for i in range(len(settings.channels)):
    torch, linen = f'conv_block{i + 1}', f'blocks_{i}'
    out += [
      e(f'{torch}.conv1', (linen, 'conv1'), 'conv_nobias'),
      e(f'{torch}.bn1', (linen, 'bn1'), 'batchnorm'),
      e(f'{torch}.conv2', (linen, 'conv2'), 'conv_nobias'),
      e(f'{torch}.bn2', (linen, 'bn2'), 'batchnorm'),
    ]
  return out + [e('fc1', ('fc1',), 'dense'), e('fc_audioset', ('fc_audioset',), 'dense')]


def linen_shapes(settings: Cnn14Settings) -> Any:
  """Params tree of shape structs of `Cnn14Tagger(settings)`."""
  model = Cnn14Tagger(settings)
  mel = jnp.zeros((1, 64, settings.n_mels), jnp.float32)
  pads = jnp.zeros((1, 64), jnp.float32)
  init = jax.eval_shape(lambda: model.init(jax.random.key(0), mel, pads, method='tag'))
  return nn.unbox(init['params'])


def convert(state_dict: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, Any]]:
  """`(params, settings_json)` of a CNN14 state dict."""
  settings = Cnn14Settings(n_mels=FRONTEND.n_mels)
  return pann_frontend_check.convert_tagger(
    state_dict, NAME, 'PANNs CNN14', settings, entries(settings), linen_shapes(settings), FRONTEND
  )
