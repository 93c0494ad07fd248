"""Converter of the AudioSet ConvNeXt-Tiny checkpoint (`convnext_tiny_471mAP.pth`, Zenodo 8020843).

The file is `{'model': state_dict}` (conette's registry loads it with
`state_dict_key='model'`). Its layer-scale tensors are named `gamma` (the
original ConvNeXt name); conette renames them `scale_layer` when loading:
both names are accepted.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from aac_jax.audio.pann_frontend import PannFrontendSettings
from aac_jax.convert import mapping, pann_frontend_check
from aac_jax.models.convnext import STEMS, ConvNeXtSettings, ConvNeXtTagger

NAME = 'convnext'
FRONTEND = PannFrontendSettings(n_mels=224)  # 32 kHz, n_fft 1024, hop 320, 50-14000 Hz
STATE_DICT_KEY = 'model'
STEM_KEY = 'downsample_layers.0.0.weight'


def entries(settings: ConvNeXtSettings) -> list[mapping.Entry]:
  """Torch -> Linen mapping of `ConvNeXtTagger`."""
  e = mapping.Entry
  out = [
    e('bn0', ('bn0',), 'batchnorm'),
    e('downsample_layers.0.0', ('stem',), 'conv'),
    e('downsample_layers.0.1', ('stem_norm',), 'layernorm'),
  ]
  for i in range(1, len(settings.dims)):
    out.append(e(f'downsample_layers.{i}.0', (f'down_norms_{i - 1}',), 'layernorm'))
    out.append(e(f'downsample_layers.{i}.1', (f'down_convs_{i - 1}',), 'conv'))
  for i, depth in enumerate(settings.depths):
    for j in range(depth):
      torch, linen = f'stages.{i}.{j}', f'stages_{i}_{j}'
      out += [
        e(f'{torch}.dwconv', (linen, 'dwconv'), 'conv'),
        e(f'{torch}.norm', (linen, 'norm'), 'layernorm'),
        e(f'{torch}.pwconv1', (linen, 'pwconv1'), 'dense'),
        e(f'{torch}.pwconv2', (linen, 'pwconv2'), 'dense'),
        e(f'{torch}.scale_layer', (linen, 'scale_layer'), 'param'),
      ]
  out += [e('norm', ('norm',), 'layernorm'), e('head_audioset', ('head',), 'dense')]
  return out


def linen_shapes(settings: ConvNeXtSettings) -> Any:
  """Params tree of shape structs of `ConvNeXtTagger(settings)`."""
  model = ConvNeXtTagger(settings)
  mel = jnp.zeros((1, 200, settings.n_mels), jnp.float32)
  pads = jnp.zeros((1, 200), jnp.float32)
  init = jax.eval_shape(lambda: model.init(jax.random.key(0), mel, pads, method='tag'))
  return nn.unbox(init['params'])


def _rename_gamma(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  renamed = {}
  for key, value in state_dict.items():
    new = key[: -len('gamma')] + 'scale_layer' if key.endswith('.gamma') else key
    if new in renamed:
      raise mapping.ConversionError(f'{key!r} and {new!r} are both in the file')
    renamed[new] = value
  return renamed


def stem_of(state_dict: dict[str, np.ndarray]) -> str:
  """The `models.convnext.STEMS` name whose kernel the file's stem conv has ('audioset' if none).

  The AudioSet tagger (`convnext_tiny_471mAP.pth`) has an 18 x 4 stem; the
  DCASE 2024 baseline's and CoNeTTE's encoders (`convnext_tiny_465mAP_BL_AC_
  70kit.pth`, `after_stem_dim=[252, 56]`) a 4 x 4 one. Other shapes fall to
  'audioset', whose shape check then names the mismatch.
  """
  weight = state_dict.get(STEM_KEY)
  kernel = tuple(weight.shape[2:]) if weight is not None else ()
  return next((name for name, (k, _) in STEMS.items() if k == kernel), 'audioset')


def convert(
  state_dict: dict[str, np.ndarray], stem: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
  """`(params, settings_json)` of a ConvNeXt state dict (see module docstring).

  `stem`: a `models.convnext.STEMS` name ('conette' reads CoNeTTE's encoder);
  None = the one the file's stem kernel has (`stem_of`), written into the
  settings' `architecture`.
  """
  settings = ConvNeXtSettings(n_mels=FRONTEND.n_mels, stem=stem or stem_of(state_dict))
  state_dict = _rename_gamma(state_dict)
  return pann_frontend_check.convert_tagger(
    state_dict,
    NAME,
    'ConvNeXt-Tiny AudioSet',
    settings,
    entries(settings),
    linen_shapes(settings),
    FRONTEND,
  )
