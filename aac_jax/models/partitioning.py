"""Logical axis names of every parameter, and the layers that carry them.

Every parameter of every model names its axes with the words below (t5x /
maxtext style); a rule table (`DEFAULT_RULES`) maps them to the axes of a
device mesh (`data`, `fsdp`, `tensor`), so one model can run data-parallel
on a laptop and sharded on a pod slice (`mesh_shardings`). The names are
attached at initialisation (`nn.with_logical_partitioning`); parameters stay
plain arrays everywhere else (`models.init_params` unboxes them,
`models.param_axes` reads them). Training lays out parameters and optimizer
state by these rules (`config.mesh`, `aac_jax.train.parallel`).

Logical axes:
  embed        model width (encoder/decoder `d_model`, a tagger stage's width)
  mlp          feed-forward and other hidden widths (GLU, pointwise convs)
  heads, kv    attention heads and the width of one head
  vocab        the vocabulary
  input        the width of what a model reads (mel bins x conv channels, ...)
  conv_time    the time axis of a convolution kernel
  conv_freq    the frequency axis of a 2-D convolution kernel
  conv_in      input channels of a convolution
  conv_out     output channels of a convolution (and their norms and biases)
  classes      a tagger's clip-level classes (unused by the captioner)
  batch        the examples of a batch (activations only)
"""

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

LOGICAL_AXES = (
  'embed',
  'mlp',
  'heads',
  'kv',
  'vocab',
  'input',
  'conv_time',
  'conv_freq',
  'conv_in',
  'conv_out',
  'classes',
  'batch',
)

# Logical axis -> mesh axis (a tuple: several; None: not split). FSDP on the
# model width and input channels, tensor parallelism on heads, hidden widths,
# vocabulary and output channels.
DEFAULT_RULES = (
  ('batch', ('data', 'fsdp')),
  ('embed', 'fsdp'),
  ('mlp', 'tensor'),
  ('heads', 'tensor'),
  ('kv', None),
  ('vocab', 'tensor'),
  ('input', None),
  ('conv_time', None),
  ('conv_freq', None),
  ('conv_in', 'fsdp'),
  ('conv_out', 'tensor'),
  ('classes', None),
)

Axes = tuple[str | None, ...]


def with_axes(init: Callable, axes: Axes) -> Callable:
  """`init` whose parameter carries the logical `axes` (one name per dimension)."""
  return nn.with_logical_partitioning(init, axes)


def dense(features: int, axes: tuple[str, str], **kwargs: Any) -> nn.Dense:
  """`nn.Dense` (its default initialisers) with kernel axes `axes`, bias `(axes[1],)`."""
  kernel_init = kwargs.pop('kernel_init', nn.initializers.lecun_normal())
  return nn.Dense(
    features,
    kernel_init=with_axes(kernel_init, axes),
    bias_init=with_axes(nn.initializers.zeros_init(), (axes[1],)),
    **kwargs,
  )


def layer_norm(axis: str = 'embed', **kwargs: Any) -> nn.LayerNorm:
  """`nn.LayerNorm` whose scale and bias carry the logical `axis`."""
  return nn.LayerNorm(
    scale_init=with_axes(nn.initializers.ones, (axis,)),
    bias_init=with_axes(nn.initializers.zeros, (axis,)),
    **kwargs,
  )


def conv(features: int, kernel_size: Sequence[int], **kwargs: Any) -> nn.Conv:
  """`nn.Conv` (default initialisers): kernel `([conv_time, [conv_freq,]] conv_in, conv_out)`."""
  axes = ('conv_time', 'conv_freq')[: len(kernel_size)] + ('conv_in', 'conv_out')
  return nn.Conv(
    features,
    kernel_size,
    kernel_init=with_axes(nn.initializers.lecun_normal(), axes),
    bias_init=with_axes(nn.initializers.zeros_init(), ('conv_out',)),
    **kwargs,
  )


def logical_specs(boxed: Any) -> Any:
  """The logical `PartitionSpec` of every leaf of an `init` result (boxed or abstract)."""
  return nn.get_partition_spec(boxed)


def init_unboxed(init: Callable, *args: Any, **kwargs: Any) -> Any:
  """`init(*args, **kwargs)` with the axis names removed (plain arrays)."""
  return nn.unbox(init(*args, **kwargs))


def mesh_shardings(
  logical: Any, shapes: Any, mesh: jax.sharding.Mesh, rules: Sequence = DEFAULT_RULES
) -> Any:
  """The `NamedSharding` of every parameter from its logical axes and `rules`.

  A dimension that the mesh axes of its rule do not divide stays whole
  (e.g. a convolution's single input channel).

  Args:
    logical: tree of logical `PartitionSpec`s (`models.param_axes`).
    shapes: the same tree of arrays or shape structs.
    mesh: the device mesh.
    rules: `(logical axis, mesh axis | tuple | None)` pairs; the first rule
      of a name whose mesh axis is still free in that parameter applies.
  """

  def fit(spec: P, shape) -> NamedSharding:
    dims = []
    for size, axes in zip(shape.shape, tuple(spec) + (None,) * shape.ndim, strict=False):
      names = (axes,) if isinstance(axes, str) else tuple(axes or ())
      split = math.prod(mesh.shape[n] for n in names)
      dims.append(axes if names and size % split == 0 else None)
    return NamedSharding(mesh, P(*dims))

  mesh_specs = nn.logical_to_mesh(logical, rules)
  return jax.tree.map(fit, mesh_specs, shapes, is_leaf=lambda x: isinstance(x, P))


def mirrored_shardings(tree: Any, params: Any, param_shardings: Any, mesh) -> Any:
  """Shardings of a tree holding copies of the parameters (an optimizer state).

  A leaf whose path ends with a parameter's path and has its shape is laid
  out like that parameter (AdamW's moments); every other leaf is replicated.
  """
  by_path = {
    tuple(path): (tuple(leaf.shape), sharding)
    for (path, leaf), sharding in zip(
      jax.tree_util.tree_flatten_with_path(params)[0],
      jax.tree.leaves(param_shardings),
      strict=True,
    )
  }

  def pick(path, leaf) -> NamedSharding:
    for start in range(len(path)):
      found = by_path.get(tuple(path[start:]))
      if found and found[0] == tuple(leaf.shape):
        return found[1]
    return NamedSharding(mesh, P())

  return jax.tree_util.tree_map_with_path(pick, tree)


def missing_axes(boxed: Any) -> list[str]:
  """Paths of leaves of an `init` result that carry no logical axis names."""
  flat = jax.tree_util.tree_flatten_with_path(
    boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
  )[0]
  return [
    jax.tree_util.keystr(path)
    for path, leaf in flat
    if not isinstance(leaf, nn.LogicallyPartitioned)
  ]
