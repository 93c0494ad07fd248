"""Imports PyTorch reference modules (conette 0.3.2 and friends) for parity tests.

conette's package `__init__` imports torchaudio, which does not load beside
the torch we test with; its model modules need only torch, torchlibrosa and
torchoutil. `import_reference('conette.nn.encoders.convnext')` registers bare
parent packages (no `__init__` run) and imports the module itself.

CI installs these with `tools/test.sh` (torch CPU + the `test` extra, then
`conette` and `torchoutil` with `--no-deps`): a failed import here is a
missing install step, so it raises instead of skipping.
"""

import importlib
import importlib.util
import sys
import types

# Packages whose `__init__` pulls heavy or broken imports.
BARE_PACKAGES = ('conette',)


def _register_bare_package(name: str) -> None:
  if name in sys.modules:
    return
  spec = importlib.util.find_spec(name)
  if spec is None or spec.submodule_search_locations is None:
    raise ImportError(f'reference package {name!r} is not installed; run tools/test.sh')
  module = types.ModuleType(name)
  module.__path__ = list(spec.submodule_search_locations)
  sys.modules[name] = module


def import_reference(module_name: str) -> types.ModuleType:
  """Imports `module_name` without running the `__init__` of its bare parent package.

  Args:
    module_name: dotted module path, e.g. `'conette.nn.encoders.cnn14'`.

  Returns:
    The imported module.
  """
  root = module_name.split('.')[0]
  if root in BARE_PACKAGES:
    _register_bare_package(root)
  return importlib.import_module(module_name)


def torch_module() -> types.ModuleType:
  """`torch`, with deterministic CPU settings for parity tests."""
  import torch

  torch.set_num_threads(1)
  torch.use_deterministic_algorithms(True)
  return torch
