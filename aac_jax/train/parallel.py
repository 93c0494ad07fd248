"""The device mesh, where each array lives on it, and moving host batches onto it.

Steps are written in the global view: plain functions of whole arrays
(the global batch, every parameter), jitted with the shardings below, and
XLA's partitioner inserts the collectives. The mesh has three axes:

  data    splits the batch; parameters are copied along it
  fsdp    splits the batch AND the parameters / optimizer state (gathered per
          layer for the computation: fully sharded data parallelism)
  tensor  splits attention heads, feed-forward widths and the vocabulary

A batch is split on its leading axis over `('data', 'fsdp')`; each
parameter by the logical-axis rules (`aac_jax.models.partitioning`,
`config.mesh.rules`); the optimizer state mirrors the parameters. With
`data` = all devices this is plain data parallelism.
"""

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from aac_jax.models import partitioning

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')


def mesh_shape(mesh_cfg: ml_collections.ConfigDict, num_devices: int) -> tuple[int, int, int]:
  """`(data, fsdp, tensor)` sizes of `config.mesh`, a -1 filled with the remaining devices.

  Raises:
    ValueError: a size is 0 or below -1, more than one is -1, or the product
      is not `num_devices` (`config_validation` reports these first).
  """
  sizes = [int(mesh_cfg[name]) for name in MESH_AXES]
  if any(s == 0 or s < -1 for s in sizes) or sizes.count(-1) > 1:
    raise ValueError(
      f'mesh sizes {dict(zip(MESH_AXES, sizes, strict=True))} must be >= 1, one may be -1'
    )
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    sizes[sizes.index(-1)] = num_devices // known if num_devices % known == 0 else -1
  if math.prod(sizes) != num_devices:
    raise ValueError(
      f'mesh {dict(zip(MESH_AXES, sizes, strict=True))} does not cover {num_devices} devices'
    )
  return tuple(sizes)


def mesh_rules(mesh_cfg: ml_collections.ConfigDict | None) -> tuple[tuple[str, Any], ...]:
  """`config.mesh.rules` as `(logical axis, mesh axis | tuple | None)` pairs.

  A config read back from JSON holds lists; they become tuples here. No
  config (or no rules) gives `partitioning.DEFAULT_RULES`.
  """
  rules = mesh_cfg.get('rules') if mesh_cfg is not None else None
  if not rules:
    return partitioning.DEFAULT_RULES

  def target(axes):
    return tuple(axes) if isinstance(axes, list | tuple) else axes

  return tuple((str(name), target(axes)) for name, axes in rules)


def create_mesh(
  mesh_cfg: ml_collections.ConfigDict | None = None, devices: Sequence[jax.Device] | None = None
) -> Mesh:
  """The `('data', 'fsdp', 'tensor')` mesh over `devices` (default: all, every process).

  Devices are laid out in `jax.devices()` order (process by process), so
  the batch rows of a process's devices are one contiguous block. Without
  `mesh_cfg` every device is on `data` (plain data parallelism).
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = (len(devices), 1, 1) if mesh_cfg is None else mesh_shape(mesh_cfg, len(devices))
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def replicated(mesh: Mesh) -> NamedSharding:
  """A full copy on every device (scalars, metrics, small masks)."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """The sharding of batches: leading axis split over `('data', 'fsdp')`."""
  return NamedSharding(mesh, P(BATCH_AXES))


def batch_divisor(mesh: Mesh) -> int:
  """How many parts a batch's leading axis is split into (`data x fsdp`)."""
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def param_shardings(logical: Any, shapes: Any, mesh: Mesh, rules: Sequence) -> Any:
  """The `NamedSharding` of every parameter (see `partitioning.mesh_shardings`)."""
  return partitioning.mesh_shardings(logical, shapes, mesh, rules)


def tensor_split_problems(logical: Any, shapes: Any, mesh: Mesh, rules: Sequence) -> list[str]:
  """Parameter dimensions the rules send to `tensor` that its size does not divide.

  Such a dimension would silently stay whole (`partitioning.mesh_shardings`);
  the trainer refuses the config instead, one line per dimension.
  """
  tensor = mesh.shape['tensor']
  targets = {name: axes if isinstance(axes, tuple) else (axes,) for name, axes in rules}
  is_spec = lambda x: isinstance(x, P)  # noqa: E731
  bad = {}
  for spec, shape in zip(
    jax.tree.leaves(logical, is_leaf=is_spec), jax.tree.leaves(shapes), strict=True
  ):
    for name, size in zip(spec, shape.shape, strict=False):
      if 'tensor' in targets.get(name, ()) and size % tensor:
        bad.setdefault((name, size), None)
  return [
    f'mesh.tensor={tensor}: does not divide the {name!r} dimension ({size}) of the model; '
    f'use a tensor size dividing {size}, or map {name!r} to None in mesh.rules'
    for name, size in bad
  ]


def state_shardings(state_shapes: Any, params_shardings: Any, mesh: Mesh) -> Any:
  """Shardings of a `TrainState`: parameters as given, optimizer state mirroring them.

  Args:
    state_shapes: the `TrainState` of shape structs (`jax.eval_shape`).
    params_shardings: the parameters' shardings (`param_shardings`).
    mesh: the mesh.
  """
  return state_shapes.replace(
    step=replicated(mesh),
    params=params_shardings,
    opt_state=partitioning.mirrored_shardings(
      state_shapes.opt_state, state_shapes.params, params_shardings, mesh
    ),
  )


def jit_update_step(
  step: Callable, mesh: Mesh, state_sharding: Any, num_batched: int, donate: bool = True
) -> Callable:
  """`jax.jit` of a global-view update step with its shardings.

  Args:
    step: `step(state, *batched, rng) -> (state, metrics)` on global arrays.
    mesh: the mesh.
    state_sharding: the `TrainState` of shardings (`state_shardings`).
    num_batched: arguments between state and rng, split on their leading axis.
    donate: donate the input state buffers (the caller must not reuse them).
  """
  rep, batch = replicated(mesh), batch_sharding(mesh)
  return jax.jit(
    step,
    in_shardings=(state_sharding, *([batch] * num_batched), rep),
    out_shardings=(state_sharding, rep),
    donate_argnums=(0,) if donate else (),
  )


def constrain_batch(tree: Any, mesh: Mesh) -> Any:
  """Inside jit: pins the leading axis of every leaf to the batch axes."""
  return jax.lax.with_sharding_constraint(tree, jax.tree.map(lambda _: batch_sharding(mesh), tree))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's local batch into global arrays.

  Args:
    batch: this process's examples, every leaf `[local_batch, ...]`.
    mesh: the mesh.

  Returns:
    The same tree of global `jax.Array`s `[local_batch * process_count, ...]`
    split over `('data', 'fsdp')`.
  """
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def to_host(tree: Any) -> Any:
  """Fetches a tree of fully replicated or fully addressable arrays as numpy."""
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def gather_to_host(tree: Any) -> Any:
  """Fetches a tree of batch-split arrays as numpy on every process.

  Args:
    tree: global arrays `[global_batch, ...]`, possibly spread over processes.

  Returns:
    numpy arrays `[global_batch, ...]`.
  """
  if jax.process_count() == 1:
    return to_host(tree)
  from jax.experimental import multihost_utils

  return multihost_utils.process_allgather(tree, tiled=True)


def all_processes(values: np.ndarray) -> np.ndarray:
  """Host values of every process, stacked: `[P, ...]` (every process calls it).

  Args:
    values: this process's numpy array; same shape and dtype on all processes.

  Returns:
    `[process_count, *values.shape]`, row `p` from process `p`.
  """
  values = np.asarray(values)
  if jax.process_count() == 1:
    return values[None]
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(values, tiled=False))


def mean_over_processes(values: dict[str, float]) -> dict[str, float]:
  """Host scalars averaged over all processes (every process calls it with the same keys)."""
  keys = sorted(values)
  means = all_processes(np.array([values[k] for k in keys], np.float64)).mean(axis=0)
  return {k: float(v) for k, v in zip(keys, means, strict=True)}
