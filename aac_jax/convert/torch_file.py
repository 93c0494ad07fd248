"""Reads a PyTorch checkpoint file safely (the only module here that imports torch).

Every file is read with `torch.load(weights_only=True)`, which unpickles
tensors and plain containers only. A file it refuses gives one line naming
the file and what is wrong (`ValueError`; `tools/convert_checkpoint.py` exits
1 with it): not a checkpoint at all (an HTML error page saved as `.pth`, a
truncated download), or Python objects besides tensors (`UnsafeCheckpointError`:
re-save the state dict alone). An unsafe full unpickle is never suggested.
"""

import os
import pickle
import re
import zipfile
from typing import Any

import numpy as np


class UnsafeCheckpointError(ValueError):
  """The file holds Python objects other than tensors, which a safe load refuses."""


def _import_torch() -> Any:
  try:
    import torch
  except ImportError as error:
    raise ImportError(
      'converting a PyTorch checkpoint needs torch: pip install "aac_jax[convert]"'
    ) from error
  return torch


def read_state_dict(path: str, state_dict_key: str | None = 'model') -> dict[str, np.ndarray]:
  """Loads a `.pth` file with `torch.load(weights_only=True)` and returns numpy arrays.

  Args:
    path: the checkpoint file.
    state_dict_key: where the file is a dict holding the state dict under this
      key (the PANNs and AudioSet ConvNeXt files: `{'model': state_dict}`),
      the state dict is taken from there; a bare state dict is used as is.

  Returns:
    `{torch_key: float32 or int array}` in file order.

  Raises:
    FileNotFoundError: no such file.
    ValueError: the file is no checkpoint or holds no tensor state dict
      (`UnsafeCheckpointError`: it holds other Python objects).
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'checkpoint file not found: {path}')
  data = load_tensors(path)
  torch = _import_torch()
  if isinstance(data, dict) and state_dict_key in data and isinstance(data[state_dict_key], dict):
    data = data[state_dict_key]
  if not isinstance(data, dict) or not all(torch.is_tensor(v) for v in data.values()):
    raise ValueError(
      f'{path} holds no state dict of tensors (neither at the top level nor under '
      f'{state_dict_key!r}); is it a PyTorch model checkpoint?'
    )
  return {key: _to_numpy(value) for key, value in data.items()}


def _to_numpy(tensor: Any) -> np.ndarray:
  array = tensor.detach().cpu()
  if array.is_floating_point():
    array = array.float()
  return array.numpy().copy()


def load_tensors(path: str | os.PathLike) -> Any:
  """`torch.load(path, weights_only=True)`, with one-line errors naming the file.

  Raises:
    UnsafeCheckpointError: the file pickles other objects than tensors and
      plain containers (the message names the first one).
    ValueError: the file is not a PyTorch checkpoint (its first bytes are named).
  """
  torch = _import_torch()
  try:
    return torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as error:
    found = re.search(r'Unsupported global: GLOBAL ([\w.]+)', str(error))
    if found:
      raise UnsafeCheckpointError(
        f'{path} holds Python objects besides tensors ({found.group(1)}), which a safe load '
        'refuses: save the state dict alone (torch.save(model.state_dict(), FILE)) and convert '
        'that file'
      ) from None
    raise ValueError(_not_a_checkpoint(path)) from None
  except (RuntimeError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as error:
    raise ValueError(f'{_not_a_checkpoint(path)} ({type(error).__name__})') from None


def _not_a_checkpoint(path: str | os.PathLike) -> str:
  with open(path, 'rb') as f:
    start = f.read(16)
  return (
    f'{path} is not a PyTorch checkpoint (it starts with {start!r}; an HTML page or a cut '
    'download?): download the file again'
  )
