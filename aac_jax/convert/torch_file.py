"""Reads a PyTorch checkpoint file safely (the only module here that imports torch)."""

import os
from typing import Any

import numpy as np


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
    ValueError: the file holds no tensor state dict.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'checkpoint file not found: {path}')
  torch = _import_torch()
  data = torch.load(path, map_location='cpu', weights_only=True)
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
