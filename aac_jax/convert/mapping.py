"""Torch state dict -> Linen params: key matching, shape checks, layout changes.

A converter lists `Entry`s: a torch module prefix, the Linen path it fills
and its kind (how torch tensors map to Linen leaves). `convert_state_dict`
checks the file against the entries *before* converting anything: missing
and unexpected keys are all listed in one error whose first line names the
first mismatch, and the first tensor of the wrong shape is named with its
shape and the expected one.
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

BATCHNORM_EPS = 1e-5  # torch.nn.BatchNorm2d default, used by both taggers


class ConversionError(ValueError):
  """The checkpoint file does not fit the model it was converted as."""


@dataclasses.dataclass(frozen=True)
class Kind:
  """How one torch module's tensors become Linen leaves.

  Attributes:
    torch_suffixes: tensor names under the module prefix ('' = the prefix itself).
    to_torch_shape: `(suffix, linen_leaves) -> expected torch shape` from the
      Linen leaf shapes.
    convert: `{suffix: array} -> {leaf: array}`.
  """

  torch_suffixes: tuple[str, ...]
  to_torch_shape: Callable[[str, Mapping[str, tuple[int, ...]]], tuple[int, ...]]
  convert: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


def _conv_shape(suffix, leaves):
  if suffix == 'bias':
    return leaves['bias']
  kh, kw, cin, cout = leaves['kernel']
  return (cout, cin, kh, kw)


def _dense_shape(suffix, leaves):
  if suffix == 'bias':
    return leaves['bias']
  cin, cout = leaves['kernel']
  return (cout, cin)


def _fold_batchnorm(t):
  scale = t['weight'] / np.sqrt(t['running_var'].astype(np.float64) + BATCHNORM_EPS)
  bias = t['bias'] - t['running_mean'] * scale
  return {'scale': scale.astype(np.float32), 'bias': bias.astype(np.float32)}


KINDS = {
  'conv': Kind(
    ('weight', 'bias'),
    _conv_shape,
    lambda t: {'kernel': t['weight'].transpose(2, 3, 1, 0), 'bias': t['bias']},
  ),
  'conv_nobias': Kind(
    ('weight',), _conv_shape, lambda t: {'kernel': t['weight'].transpose(2, 3, 1, 0)}
  ),
  'dense': Kind(
    ('weight', 'bias'), _dense_shape, lambda t: {'kernel': t['weight'].T, 'bias': t['bias']}
  ),
  'dense_nobias': Kind(('weight',), _dense_shape, lambda t: {'kernel': t['weight'].T}),
  'rmsnorm': Kind(
    ('weight',), lambda suffix, leaves: leaves['scale'], lambda t: {'scale': t['weight']}
  ),
  'layernorm': Kind(
    ('weight', 'bias'),
    lambda suffix, leaves: leaves['scale' if suffix == 'weight' else 'bias'],
    lambda t: {'scale': t['weight'], 'bias': t['bias']},
  ),
  'batchnorm': Kind(
    ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked'),
    lambda suffix, leaves: () if suffix == 'num_batches_tracked' else leaves['scale'],
    _fold_batchnorm,
  ),
}


@dataclasses.dataclass(frozen=True)
class Entry:
  """One torch module (or single tensor) and the Linen path it fills.

  Attributes:
    torch_prefix: e.g. `'stages.0.1.dwconv'`.
    linen_path: path of the Linen module (or, for kind 'param', of the leaf).
    kind: a `KINDS` name, or `'param'` for one tensor copied as is.
  """

  torch_prefix: str
  linen_path: tuple[str, ...]
  kind: str

  def torch_keys(self) -> list[str]:
    if self.kind == 'param':
      return [self.torch_prefix]
    return [f'{self.torch_prefix}.{s}' for s in KINDS[self.kind].torch_suffixes]


def _get(tree: Mapping[str, Any], path: Sequence[str]) -> Any:
  for name in path:
    tree = tree[name]
  return tree


def _set(tree: dict[str, Any], path: Sequence[str], value: Any) -> None:
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = value


def _expected_torch_shapes(entries, linen_shapes) -> dict[str, tuple[int, ...]]:
  shapes = {}
  for entry in entries:
    node = _get(linen_shapes, entry.linen_path)
    if entry.kind == 'param':
      shapes[entry.torch_prefix] = tuple(node.shape)
      continue
    leaves = {name: tuple(leaf.shape) for name, leaf in node.items()}
    for suffix, key in zip(KINDS[entry.kind].torch_suffixes, entry.torch_keys(), strict=True):
      shapes[key] = tuple(KINDS[entry.kind].to_torch_shape(suffix, leaves))
  return shapes


def check_keys_and_shapes(
  state_dict: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]], model_name: str
) -> None:
  """Refuses a state dict whose keys or shapes differ from `expected`.

  Raises:
    ConversionError: one message naming the first mismatch and listing every
      missing and unexpected key.
  """
  missing = [k for k in expected if k not in state_dict]
  extra = [k for k in state_dict if k not in expected]
  if missing or extra:
    first = f'missing key {missing[0]!r}' if missing else f'unexpected key {extra[0]!r}'
    raise ConversionError(
      f'not a {model_name} checkpoint of the expected layout: {first}.\n'
      f'  missing ({len(missing)}): {missing}\n  unexpected ({len(extra)}): {extra}'
    )
  for key, shape in expected.items():
    if tuple(state_dict[key].shape) != shape:
      raise ConversionError(
        f'not a {model_name} checkpoint of the expected shape: {key!r} has shape '
        f'{tuple(state_dict[key].shape)}, expected {shape}.'
      )


def convert_state_dict(
  state_dict: Mapping[str, np.ndarray],
  entries: Sequence[Entry],
  linen_shapes: Mapping[str, Any],
  model_name: str,
  extra_expected: Mapping[str, tuple[int, ...]] | None = None,
) -> dict[str, Any]:
  """Checks then converts a torch state dict into a Linen params tree.

  Args:
    state_dict: `{torch_key: array}`.
    entries: the model's mapping; must cover every Linen leaf.
    linen_shapes: the Linen params tree of shape structs (`jax.eval_shape` of init).
    model_name: for messages.
    extra_expected: further torch keys the file must hold (e.g. front-end
      buffers the caller checks itself) with their shapes.

  Returns:
    The params tree (numpy float32 leaves), same structure as `linen_shapes`.
  """
  expected = _expected_torch_shapes(entries, linen_shapes)
  expected.update(extra_expected or {})
  check_keys_and_shapes(state_dict, expected, model_name)
  params: dict[str, Any] = {}
  for entry in entries:
    if entry.kind == 'param':
      _set(params, entry.linen_path, state_dict[entry.torch_prefix].astype(np.float32))
      continue
    suffixes = KINDS[entry.kind].torch_suffixes
    tensors = {s: state_dict[k] for s, k in zip(suffixes, entry.torch_keys(), strict=True)}
    for leaf, value in KINDS[entry.kind].convert(tensors).items():
      _set(params, entry.linen_path + (leaf,), np.ascontiguousarray(value, dtype=np.float32))
  _check_covers(params, linen_shapes)
  return params


def _flat_paths(tree: Mapping[str, Any], prefix=()) -> set[tuple[str, ...]]:
  paths = set()
  for name, value in tree.items():
    if isinstance(value, Mapping):
      paths |= _flat_paths(value, prefix + (name,))
    else:
      paths.add(prefix + (name,))
  return paths


def _check_covers(params, linen_shapes) -> None:
  left = sorted(_flat_paths(linen_shapes) - _flat_paths(params))
  if left:
    raise AssertionError(f'converter mapping leaves Linen params unset: {left[:5]}')
