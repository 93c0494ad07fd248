"""Orbax checkpoints holding the train state and the Grain iterator together.

One `ocp.CheckpointManager` under `<workdir>/checkpoints` saves, per step,
two items: `state` (the `TrainState`, `StandardSave`, asynchronously) and
`data_iter` (the Grain iterator position, `grain.checkpoint.CheckpointSave`).
Restoring both gives the exact batch sequence an uninterrupted run sees.

Kept on disk: the `train.keep_checkpoints` most recent steps plus the best
one by `train.best_metric` (saved with evaluation metrics, see
`orbax.checkpoint.checkpoint_managers.BestN`).

Resume order (`restore_or_initialize`): this workdir's latest checkpoint;
else the parameters of `train.init_from` (another run's workdir: its best
checkpoint, or its latest when it has no metrics) with a fresh optimizer;
else a fresh initialisation.
"""

import os
from collections.abc import Callable, Mapping
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from orbax.checkpoint import checkpoint_managers as ocm

from aac_jax.train.state import TrainState

CHECKPOINT_DIR = 'checkpoints'


def checkpoint_dir(workdir: str | os.PathLike) -> epath.Path:
  """`<workdir>/checkpoints` (absolute for local paths; URLs like gs:// as given)."""
  path = epath.Path(workdir)
  if '://' not in str(workdir):
    path = path.absolute()
  return path / CHECKPOINT_DIR


def _metric_fn(name: str, mode: str) -> Callable[[Mapping[str, float]], float]:
  worst = float('-inf') if mode == 'max' else float('inf')
  return lambda metrics: float(metrics.get(name, worst))


def create_checkpoint_manager(
  workdir: str | os.PathLike,
  train_cfg: ml_collections.ConfigDict,
  *,
  read_only: bool = False,
) -> ocp.CheckpointManager:
  """The run's single checkpoint manager.

  Args:
    workdir: the run's folder; checkpoints go to `<workdir>/checkpoints`.
    train_cfg: `config.train` (`keep_checkpoints`, `best_metric`,
      `best_mode`, `async_checkpointing`).
    read_only: open another run's checkpoints without changing them.

  Returns:
    A manager that saves only when told (`save_checkpoint` forces it).
  """
  mode = train_cfg.get('best_mode', 'max')
  best_fn = _metric_fn(train_cfg.best_metric, mode) if train_cfg.best_metric else None
  policies: list[Any] = [ocm.LatestN(n=max(1, int(train_cfg.keep_checkpoints)))]
  if best_fn is not None:
    policies.append(
      ocm.BestN(
        get_metric_fn=best_fn, reverse=mode == 'min', n=1, keep_checkpoints_without_metrics=False
      )
    )
  options = ocp.CheckpointManagerOptions(
    best_fn=best_fn,
    best_mode=mode,
    preservation_policy=None if read_only else ocm.AnyPreservationPolicy(policies),
    enable_async_checkpointing=bool(train_cfg.get('async_checkpointing', True)),
    read_only=read_only,
    create=not read_only,
    cleanup_tmp_directories=not read_only,
  )
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save_checkpoint(
  manager: ocp.CheckpointManager,
  step: int,
  state: TrainState,
  data_iter: Any,
  metrics: Mapping[str, float] | None = None,
) -> None:
  """Starts saving `state` and the iterator position at `step` (asynchronous).

  The iterator state is read now, so call this before drawing the next
  batch. `metrics` (validation scores) rank the checkpoint for "best".
  """
  args = ocp.args.Composite(
    state=ocp.args.StandardSave(state),
    data_iter=grain.checkpoint.CheckpointSave(data_iter),
  )
  clean = {k: float(v) for k, v in metrics.items()} if metrics else None
  manager.save(step, args=args, metrics=clean, force=True)


def abstract_state(state_fn: Callable[[], TrainState], sharding: jax.sharding.Sharding) -> Any:
  """Shapes, dtypes and shardings of the state `state_fn` would build."""
  shapes = jax.eval_shape(state_fn)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def restore_checkpoint(
  manager: ocp.CheckpointManager, step: int, target: Any, data_iter: Any
) -> TrainState:
  """Restores the state at `step` and moves `data_iter` to its saved position.

  Args:
    manager: from `create_checkpoint_manager`.
    step: a saved step.
    target: abstract `TrainState` (see `abstract_state`).
    data_iter: the Grain iterator, restored in place.

  Returns:
    The restored `TrainState` on the shardings of `target`.
  """
  restored = manager.restore(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target),
      data_iter=grain.checkpoint.CheckpointRestore(data_iter),
    ),
  )
  return restored.state


def load_params(workdir: str | os.PathLike, train_cfg: ml_collections.ConfigDict, target: Any):
  """Parameters only, from another run's best (else latest) checkpoint.

  Args:
    workdir: the other run's workdir.
    train_cfg: `config.train` (for the best-metric definition).
    target: abstract parameter tree (shapes, dtypes, shardings).

  Returns:
    `(params, step)`.

  Raises:
    FileNotFoundError: if that workdir holds no checkpoint.
  """
  manager = create_checkpoint_manager(workdir, train_cfg, read_only=True)
  step = manager.best_step()
  if step is None:  # No checkpoint carries validation metrics.
    step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f'init_from: no checkpoint in {checkpoint_dir(workdir)}')
  restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding), target)
  restored = manager.restore(
    step,
    args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(
        item={'params': target},
        restore_args={'params': restore_args},
        partial_restore=True,
      )
    ),
  )
  manager.close()
  return restored.state['params'], step


def restore_or_initialize(
  manager: ocp.CheckpointManager,
  train_cfg: ml_collections.ConfigDict,
  *,
  init_state: Callable[[], TrainState],
  from_params: Callable[[Any], TrainState],
  target: Any,
  data_iter: Any,
) -> tuple[TrainState, str]:
  """Applies the resume order: own checkpoint, then `init_from`, then fresh.

  Args:
    manager: this run's manager.
    train_cfg: `config.train` (`init_from`).
    init_state: builds a fresh replicated state.
    from_params: builds a replicated state (fresh optimizer) from params.
    target: abstract `TrainState` (see `abstract_state`).
    data_iter: the Grain train iterator, moved to the saved position.

  Returns:
    `(state, how)` with `how` a sentence for the log.
  """
  step = manager.latest_step()
  if step is not None:
    state = restore_checkpoint(manager, step, target, data_iter)
    return state, f'resumed from {manager.directory} at step {step}'
  if train_cfg.init_from:
    params, step = load_params(train_cfg.init_from, train_cfg, target.params)
    return from_params(params), f'parameters from {train_cfg.init_from} (step {step})'
  return init_state(), 'fresh initialisation'


def log_saved(manager: ocp.CheckpointManager, step: int, reason: str, detail: str = '') -> None:
  """Waits for the pending save and logs `<reason>: saved step N (<detail>) in <dir>`."""
  manager.wait_until_finished()
  detail = f' ({detail})' if detail else ''
  logging.info('%s: saved step %d%s in %s', reason, step, detail, manager.directory)
