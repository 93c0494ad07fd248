"""The data-parallel mesh and moving host batches onto it.

Every step in this package is written as a pmap body (one device's share of
the batch, collectives over the named axis `'data'`) and mapped with
`jax.jit(jax.shard_map(...))` over a 1-D mesh of all devices: the semantics
of `jax.pmap` with the current API. Parameters and optimizer state are
replicated (`P()`); batches are split on their leading axis (`P('data')`).
"""

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = 'data'


def create_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh named `'data'` over `devices` (default: all, every process)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding of parameters and optimizer state: a full copy per device."""
  return NamedSharding(mesh, P())


def jit_update_step(body: Callable, mesh: Mesh, num_sharded: int, donate: bool = True) -> Callable:
  """`jax.jit(jax.shard_map(body))` of a pmap-style update step.

  Args:
    body: `body(state, *sharded, rng) -> (state, metrics)`, one device's view
      (collectives over `AXIS`); state, rng and the outputs are replicated.
    mesh: 1-D mesh with axis `AXIS`.
    num_sharded: arguments between state and rng, split on their leading axis.
    donate: donate the input state buffers (the caller must not reuse them).
  """
  in_specs = (P(), *([P(AXIS)] * num_sharded), P())
  mapped = jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=(P(), P()), check_vma=True)
  return jax.jit(mapped, donate_argnums=(0,) if donate else ())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """The sharding of batches: leading axis split over `'data'`."""
  return NamedSharding(mesh, P(AXIS))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's local batch into global arrays.

  Args:
    batch: this process's examples, every leaf `[local_batch, ...]`.
    mesh: the data mesh.

  Returns:
    The same tree of global `jax.Array`s `[local_batch * process_count, ...]`
    sharded `P('data')`.
  """
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def to_host(tree: Any) -> Any:
  """Fetches a tree of fully replicated or fully addressable arrays as numpy."""
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def gather_to_host(tree: Any) -> Any:
  """Fetches a tree of `P('data')` arrays as numpy on every process.

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
