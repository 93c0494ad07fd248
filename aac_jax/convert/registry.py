"""Name -> checkpoint converter (`tools/convert_checkpoint.py NAME`).

A converter module has `NAME`, `STATE_DICT_KEY` (where the state dict sits
in the file, or None for a bare one) and `convert(state_dict) -> (params,
settings_json)`. Add new ones to `_MODULES`.

CLI converters (`CLI_CONVERTERS`, the FENSE models) take their own flags.
Run converters (`RUN_CONVERTERS`) turn a whole published captioner folder
into an aac_jax run folder instead: their module has `convert_folder(
input_dir, output_dir, config) -> summary` (`aac_jax.convert.conette`).
"""

import importlib
import json
import os
import types

from aac_jax.convert import torch_file
from aac_jax.models import pretrained_store

_MODULES = {
  'convnext': 'aac_jax.convert.convnext',
  'cnn14': 'aac_jax.convert.cnn14',
  'conette': 'aac_jax.convert.conette',
  'fense': 'aac_jax.convert.fense',
  'llm': 'aac_jax.convert.llm',
  'clap': 'aac_jax.convert.clap',
}
RUN_CONVERTERS = ('conette',)
# Converters with their own flags: the module has `add_arguments(parser)` and `run(args)`.
CLI_CONVERTERS = ('fense', 'llm', 'clap')


def names() -> list[str]:
  """Registered converter names."""
  return sorted(_MODULES)


def get_converter(name: str) -> types.ModuleType:
  """The converter module of `name`."""
  if name not in _MODULES:
    raise ValueError(f'unknown converter {name!r}; known: {names()}')
  return importlib.import_module(_MODULES[name])


def convert_file(name: str, input_path: str, output_dir: str) -> dict:
  """Reads `input_path`, converts it as `name`, writes `output_dir`; returns the settings."""
  converter = get_converter(name)
  state_dict = torch_file.read_state_dict(input_path, converter.STATE_DICT_KEY)
  params, settings = converter.convert(state_dict)
  settings['source'] = os.path.basename(input_path)
  settings = json.loads(json.dumps(settings))  # as written (lists, not tuples)
  pretrained_store.save_converted(output_dir, params, settings)
  return settings
