"""The converted-encoder folder: `params.safetensors` + `settings.json` (no torch, no pickle).

`settings.json` holds `{'encoder': name, 'frontend': {...}, 'architecture':
{...}, 'source': file name}`; the front end of a run follows it.
"""

import json
import os
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

PARAMS_FILE = 'params.safetensors'
SETTINGS_FILE = 'settings.json'
_SEP = '/'


def flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, np.ndarray]:
  """`{'a': {'b': x}}` -> `{'a/b': x}` (numpy arrays)."""
  flat = {}
  for name, value in tree.items():
    key = f'{prefix}{name}'
    if isinstance(value, Mapping):
      flat.update(flatten(value, key + _SEP))
    else:
      flat[key] = np.asarray(value)
  return flat


def unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """Inverse of `flatten`."""
  tree: dict[str, Any] = {}
  for key, value in flat.items():
    node = tree
    *parents, leaf = key.split(_SEP)
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = value
  return tree


def _atomic_write(path: str, write) -> None:
  folder = os.path.dirname(path) or '.'
  fd, tmp = tempfile.mkstemp(dir=folder, prefix='.tmp-')
  os.close(fd)
  try:
    write(tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def save_converted(folder: str, params: Mapping[str, Any], settings: Mapping[str, Any]) -> None:
  """Writes `params` (nested dict of arrays) and `settings` into `folder`."""
  os.makedirs(folder, exist_ok=True)
  _atomic_write(os.path.join(folder, PARAMS_FILE), lambda p: save_file(flatten(params), p))

  def write_json(p):
    with open(p, 'w') as f:
      json.dump(settings, f, indent=2, sort_keys=True)

  _atomic_write(os.path.join(folder, SETTINGS_FILE), write_json)


def load_settings(folder: str) -> dict[str, Any]:
  """`settings.json` of a converted folder, with a clear error where it is not one."""
  path = os.path.join(folder, SETTINGS_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f'{folder} is not a converted encoder folder (no {SETTINGS_FILE}); make one with '
      'python tools/convert_checkpoint.py {convnext,cnn14} --input FILE.pth --output DIR'
    )
  with open(path) as f:
    return json.load(f)


def load_converted(folder: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """`(params, settings)` of a converted folder (params as nested numpy dicts)."""
  settings = load_settings(folder)
  return unflatten(load_file(os.path.join(folder, PARAMS_FILE))), settings
