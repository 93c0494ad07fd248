"""Which module defines each dataset, and making sure a dataset is built.

TFDS finds a builder by name only after its module is imported. Importing
every builder at `import aac_jax.data` would slow every start-up, so the
module is imported here on demand. Real datasets are built from the user's
own files (`tools/build_dataset.py`); only the synthetic benchmark can be
built on the fly.
"""

import importlib
import logging
import os

import ml_collections
import tensorflow_datasets as tfds

BUILDER_MODULES = {
  'synthetic_aac': 'aac_jax.data.synthetic.builder',
  'clotho_aac': 'aac_jax.data.clotho',
  'audiocaps_aac': 'aac_jax.data.audiocaps',
  'custom_aac': 'aac_jax.data.custom_folder',
  'wavcaps_aac': 'aac_jax.data.wavcaps',
  'macs_aac': 'aac_jax.data.macs',
}

_BUILD_COMMANDS = {
  'clotho_aac': 'python tools/build_dataset.py clotho --source_dir YOUR_CLOTHO_DIR',
  'audiocaps_aac': 'python tools/build_dataset.py audiocaps --source_dir YOUR_AUDIOCAPS_DIR',
  'custom_aac': 'python tools/build_dataset.py custom --source_dir YOUR_DIR --config_name NAME',
  'wavcaps_aac': 'python tools/build_dataset.py wavcaps --source_dir YOUR_WAVCAPS_DIR',
  'macs_aac': 'python tools/build_dataset.py macs --source_dir YOUR_MACS_DIR',
}


# The validation and test splits of the datasets that have them, as their
# builders name them (a mixture evaluates each entry that has them; wavcaps_aac
# and macs_aac are train only). `config.dataset.name` uses its configured splits.
EVAL_SPLITS = {
  'clotho_aac': ('validation', 'evaluation'),
  'audiocaps_aac': ('val', 'test'),
  'synthetic_aac': ('validation', 'test'),
}


class DatasetNotBuiltError(FileNotFoundError):
  """The dataset named in the config has not been built in its data_dir."""


def import_builder(name: str) -> None:
  """Imports the module registering builder `name` (no-op for unknown names)."""
  module = BUILDER_MODULES.get(name)
  if module:
    importlib.import_module(module)


def record_sources(name: str) -> tuple[str, ...]:
  """The values of the `source` feature of dataset `name`'s records, () where it has none.

  A builder module declares them as `SOURCES` (`wavcaps_aac`: its four
  source folders); `aac_jax.data.mixture` gives such a dataset one task token
  per source on request.
  """
  module = BUILDER_MODULES.get(name)
  return tuple(getattr(importlib.import_module(module), 'SOURCES', ())) if module else ()


def is_known(cfg: ml_collections.ConfigDict) -> bool:
  """Whether `cfg.name` is one of ours, a registered TFDS builder, or built in `cfg.data_dir`."""
  if cfg.name in BUILDER_MODULES:
    return True
  if os.path.isdir(os.path.join(os.path.expanduser(cfg.data_dir), cfg.name)):
    return True
  try:
    tfds.builder_cls(cfg.name)
  except tfds.core.registered.DatasetNotFoundError:
    return False
  return True


def _full_name(cfg: ml_collections.ConfigDict) -> str:
  return f'{cfg.name}/{cfg.builder_config}' if cfg.builder_config else cfg.name


def _build_command(cfg: ml_collections.ConfigDict, data_dir: str) -> str:
  command = _BUILD_COMMANDS.get(cfg.name, f'build the TFDS dataset {cfg.name!r}')
  if cfg.builder_config and cfg.name != 'custom_aac':
    command += f' --config_name {cfg.builder_config}'
  return f'{command} --data_dir {data_dir}'


def ensure_built(cfg: ml_collections.ConfigDict) -> None:
  """Builds the synthetic dataset if missing; otherwise explains how to build.

  Args:
    cfg: `config.dataset`.

  Raises:
    DatasetNotBuiltError: the dataset is not in `cfg.data_dir` and cannot be
      built here (real data, or `build_if_missing=False`).
  """
  data_dir = os.path.expanduser(cfg.data_dir)
  import_builder(cfg.name)
  try:
    builder = tfds.builder(_full_name(cfg), data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    return  # Not one of ours (e.g. a test fixture): tfds.data_source reports it.
  if builder.is_prepared():
    return
  if cfg.name == 'synthetic_aac' and cfg.build_if_missing:
    from aac_jax.data.synthetic import builder as synthetic_builder

    logging.info('Building %s in %s (first run only).', _full_name(cfg), data_dir)
    synthetic_builder.build(data_dir, cfg.builder_config or 'default')
    return
  raise DatasetNotBuiltError(
    f'dataset {_full_name(cfg)} is not built in {data_dir}. Build it first: '
    f'{_build_command(cfg, data_dir)} (or point --config.dataset.data_dir at the '
    'folder that holds it).'
  )
