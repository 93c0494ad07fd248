"""CLAP: a Hugging Face `ClapModel` folder -> the folder `aac_jax.metrics.clap.embedder` reads.

  python tools/convert_checkpoint.py clap --input laion/clap-htsat-unfused --output CLAP_DIR

The input is the downloaded folder (`config.json`, `preprocessor_config.json`,
tokenizer files, and `model.safetensors` or `pytorch_model.bin`). The output
holds the same files with `model.safetensors` (tensors as published; buffers
such as `position_ids` dropped) and is checked by loading it as evaluation
will, so a folder that does not fit its config fails here.
"""

import argparse
import pathlib
import shutil

import numpy as np

from aac_jax.convert import torch_file

COPIED = (
  'config.json',
  'preprocessor_config.json',
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
  'vocab.json',
  'merges.txt',
)
_BUFFERS = ('position_ids', 'token_type_ids', 'num_batches_tracked', 'relative_position_index')


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--input', required=True, help='Hugging Face ClapModel folder.')
  parser.add_argument('--output', required=True, help='Folder to write.')


def run(args: argparse.Namespace) -> None:
  convert_folder(pathlib.Path(args.input).expanduser(), pathlib.Path(args.output).expanduser())


def _read_tensors(folder: pathlib.Path) -> dict[str, np.ndarray]:
  if (folder / 'model.safetensors').is_file():
    from safetensors.numpy import load_file

    return load_file(str(folder / 'model.safetensors'))
  if (folder / 'pytorch_model.bin').is_file():
    return torch_file.read_state_dict(str(folder / 'pytorch_model.bin'), None)
  raise ValueError(f'{folder} holds neither model.safetensors nor pytorch_model.bin')


def convert_folder(folder: pathlib.Path, output: pathlib.Path) -> None:
  """Writes the CLAP folder (see the module docstring); refuses an input that does not load."""
  for name in ('config.json', 'preprocessor_config.json', 'tokenizer.json'):
    if not (folder / name).is_file():
      raise ValueError(f'{folder / name} is missing: download the whole CLAP folder')
  tensors = {
    k: np.ascontiguousarray(v, np.float32)
    for k, v in _read_tensors(folder).items()
    if not k.endswith(_BUFFERS)
  }
  output.mkdir(parents=True, exist_ok=True)
  for name in COPIED:
    if (folder / name).is_file() and folder.resolve() != output.resolve():
      shutil.copyfile(folder / name, output / name)
  from safetensors.numpy import save_file

  save_file(tensors, str(output / 'model.safetensors'))
  from aac_jax.metrics.clap import embedder

  try:
    embedder.load(output)  # Fails here, not at evaluation time.
  except embedder.ModelUnavailable as e:
    raise ValueError(str(e)) from e
