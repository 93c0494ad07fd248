"""aac_jax.models: conformer or pretrained-tagger encoder + transformer decoder captioner."""

from aac_jax.models.captioner import Captioner, count_params, init_params, param_axes
from aac_jax.models.config import CaptionerConfig, make_captioner_config

__all__ = [
  'Captioner',
  'CaptionerConfig',
  'count_params',
  'init_params',
  'make_captioner_config',
  'param_axes',
]
