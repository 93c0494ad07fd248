"""Logical axis names of every parameter, and the layers that carry them.

Every parameter of every model names its axes with the words below (t5x /
maxtext style); `aac_jax.train.parallel` maps them to the mesh axes
(`data`, `fsdp`, `tensor`) with the rule table of `config.mesh.rules`, so
one model runs data-parallel on a laptop and fully sharded on a pod slice.
The names are attached at initialisation (`nn.with_logical_partitioning`);
parameters stay plain arrays everywhere else (`init_unboxed`).

Logical axes:
  embed        model width (encoder/decoder `d_model`, a tagger stage's width)
  mlp          feed-forward and other hidden widths (GLU, pointwise convs)
  heads, kv    attention heads and the width of one head
  vocab        the vocabulary
  input        the width of what a model reads (mel bins x conv channels, ...)
  conv_window  the spatial (time, frequency) axes of a convolution kernel
  conv_in      input channels of a convolution
  conv_out     output channels of a convolution (and their norms and biases)
  classes      a tagger's clip-level classes (unused by the captioner)
  batch        the examples of a batch (activations only)
"""

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax

LOGICAL_AXES = (
  'embed',
  'mlp',
  'heads',
  'kv',
  'vocab',
  'input',
  'conv_window',
  'conv_in',
  'conv_out',
  'classes',
  'batch',
)

# The rules of `config.mesh.rules` by default: FSDP on the model width, tensor
# parallelism on heads, hidden widths, vocabulary and output channels.
DEFAULT_RULES = (
  ('batch', ('data', 'fsdp')),
  ('embed', 'fsdp'),
  ('mlp', 'tensor'),
  ('heads', 'tensor'),
  ('kv', None),
  ('vocab', 'tensor'),
  ('input', None),
  ('conv_window', None),
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
  """`nn.Conv` (default initialisers): kernel `(conv_window.., conv_in, conv_out)`."""
  axes = ('conv_window',) * len(kernel_size) + ('conv_in', 'conv_out')
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
