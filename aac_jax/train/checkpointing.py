"""Orbax checkpoints holding the train state and the data position together.

One `ocp.CheckpointManager` under `<workdir>/checkpoints` saves, per step,
three items: `state` (the `TrainState`, `StandardSave`, asynchronously),
`data_iter` (the train iterator's `get_state()`, one JSON file written by the
primary process: for `aac_jax.data.global_order.GlobalBatches` the next
global position, the same on every process) and `checksums` (of every
array of `state.params` and `state.opt_state`, checked at every restore: a
checkpoint whose files changed on disk is unreadable, see
`aac_jax.train.checksums`). Restoring both gives the exact
batch sequence an uninterrupted run sees, on any number of processes.

Kept on disk: the `train.keep_checkpoints` most recent steps plus the best
one by `train.best_metric` (saved with evaluation metrics, see
`orbax.checkpoint.checkpoint_managers.BestN`).

Resume order (`restore_or_initialize`): this workdir's latest checkpoint;
else the parameters of `train.init_from` (another run's workdir: its best
checkpoint, or its latest when it has no metrics) with a fresh optimizer;
else a fresh initialisation.
"""

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from orbax.checkpoint import checkpoint_managers as ocm

from aac_jax import files
from aac_jax.train import checksums
from aac_jax.train.state import TrainState

CHECKPOINT_DIR = 'checkpoints'
CHECKSUMS_ITEM = 'checksums'  # Per-array checksums of `state` (`aac_jax.train.checksums`).
_TMP_SUFFIX = '.orbax-checkpoint-tmp'  # Orbax's name for a step being written.


def checkpoint_dir(workdir: str | os.PathLike) -> epath.Path:
  """`<workdir>/checkpoints` (absolute for local paths; URLs like gs:// as given)."""
  path = epath.Path(workdir)
  if '://' not in str(workdir):
    path = path.absolute()
  return path / CHECKPOINT_DIR


def _metric_fn(name: str, mode: str) -> Callable[[Mapping[str, float]], float]:
  worst = float('-inf') if mode == 'max' else float('inf')
  return lambda metrics: float(metrics.get(name, worst))


def save_whole_arrays_on_cpu() -> None:
  """Turns orbax's replica-parallel array writes off when JAX runs on CPU.

  Orbax writes a replicated array as one slice per replica, each cut on its
  device (`jax.lax.slice_in_dim`): one dispatch, and at the first save one
  compilation, per array shape, slice and device. On accelerators that
  spreads device-to-host copies over the replicas; CPU devices share the
  host's memory, so it only costs time: most of a small run's first save
  (tests/test_checkpoint_resume.py counts a save's compilations: 42 for five
  new arrays on 8 CPU devices with it, without it only the checksums' 2).
  Accelerators keep orbax's default. Idempotent; checkpoints read back the
  same either way.
  """
  if jax.default_backend() == 'cpu':
    handler = ocp.type_handlers.ArrayHandler(use_replica_parallel=False)
    ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)


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
    A manager that saves only when told (`save_checkpoint` forces it); a
    failed save raises `files.RunFileError` once (see `RunCheckpointManager`).
  """
  save_whole_arrays_on_cpu()
  mode = train_cfg.best_mode
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
    enable_async_checkpointing=bool(train_cfg.async_checkpointing),
    read_only=read_only,
    create=not read_only,
    cleanup_tmp_directories=not read_only,
  )
  return RunCheckpointManager(checkpoint_dir(workdir), options=options)


def save_checkpoint(
  manager: ocp.CheckpointManager,
  step: int,
  state: TrainState,
  data_iter: Any,
  metrics: Mapping[str, float] | None = None,
) -> None:
  """Starts saving `state` and the iterator position at `step` (asynchronous).

  The iterator state (`data_iter.get_state()`, a JSON-able dict) is read
  now, so call this before drawing the next batch. `metrics` (validation
  scores) rank the checkpoint for "best".
  """
  args = ocp.args.Composite(
    state=ocp.args.StandardSave(state),
    data_iter=ocp.args.JsonSave(data_iter.get_state()),
    checksums=ocp.args.JsonSave(
      {
        'params': checksums.fingerprint(state.params),
        'opt_state': checksums.fingerprint(state.opt_state),
      }
    ),
  )
  clean = {k: float(v) for k, v in metrics.items()} if metrics else None
  manager.save(step, args=args, metrics=clean, force=True)


def _os_reason(error: BaseException) -> str:
  """The operating system's reason inside an orbax/tensorstore error chain, else its first line."""
  seen = error
  while seen is not None:
    if isinstance(seen, OSError) and seen.strerror:
      return seen.strerror
    seen = seen.__cause__ or seen.__context__
  text = str(error)
  for reason in ('No space left on device', 'Permission denied', 'Disk quota exceeded'):
    if reason in text:
      return reason
  return why_unreadable(error)


class RunCheckpointManager(ocp.CheckpointManager):
  """Orbax's manager, a failed asynchronous save made one line and cleaned up.

  Orbax raises a background save's error (a full disk) with a traceback
  from each of its threads at the next `save` or `wait_until_finished`, then
  again at every later wait and at `close`, and leaves the step's
  `*.orbax-checkpoint-tmp` folder. Here the first of those raises
  `files.RunFileError` (`cannot write checkpoint step N in <dir>: <reason>`,
  a stopping error: exit status 1), later waits are quiet, and `close`
  removes the half-written folder.
  """

  _failed = False

  def save(self, *args, **kwargs) -> bool:
    try:
      return super().save(*args, **kwargs)
    except files.RunFileError:  # From `wait_until_finished` inside.
      raise
    except Exception as error:  # noqa: BLE001 - orbax/tensorstore raise many kinds.
      raise self._write_error(error) from None

  def wait_until_finished(self) -> None:
    if self._failed:  # Raised once already; orbax would raise it again.
      return
    try:
      super().wait_until_finished()
    except Exception as error:  # noqa: BLE001 - orbax re-raises its threads' errors.
      raise self._write_error(error) from None

  def close(self) -> None:
    if not self._failed:
      super().close()
      return
    with contextlib.suppress(Exception):  # The failure was reported when it was raised.
      super().close()
    for thread in threading.enumerate():  # Writers of the failed save still running.
      if type(thread).__module__.startswith('orbax.') and thread is not threading.current_thread():
        with contextlib.suppress(Exception):  # Orbax's threads re-raise their error at join().
          thread.join(timeout=60)
    if jax.process_index() == 0:
      # Writer threads orbax does not name as its own may still add files for a
      # moment (seen under load): remove until nothing partial is left.
      for _ in range(20):
        partial = self._partial_steps()
        if not partial:
          break
        for path in partial:
          shutil.rmtree(path, ignore_errors=True)
        time.sleep(0.25)

  def _partial_steps(self) -> list[epath.Path]:
    folder = epath.Path(self.directory)
    return sorted(folder.glob(f'*{_TMP_SUFFIX}*')) if folder.exists() else []

  def _write_error(self, error: BaseException) -> files.RunFileError:
    self._failed = True
    steps = [p.name.split('.', 1)[0] for p in self._partial_steps()]
    which = f'step {", ".join(steps)}' if steps else 'a step'
    return files.RunFileError(
      f'cannot write checkpoint {which} in {self.directory}: {_os_reason(error)}'
    )


def abstract_state(state_fn: Callable[[], TrainState], shardings: Any) -> Any:
  """Shapes, dtypes and shardings of the state `state_fn` would build.

  Args:
    state_fn: builds the state (only traced).
    shardings: one sharding for every leaf, or the same tree of shardings.
  """
  shapes = jax.eval_shape(state_fn)
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, shapes)
  return jax.tree.map(
    lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
    shapes,
    shardings,
  )


def restore_checkpoint(
  manager: ocp.CheckpointManager, step: int, target: Any, data_iter: Any
) -> TrainState:
  """Restores the state at `step` and moves `data_iter` to its saved position.

  Args:
    manager: from `create_checkpoint_manager`.
    step: a saved step.
    target: abstract `TrainState` (see `abstract_state`).
    data_iter: the train iterator, moved with `set_state` once all reads.

  Returns:
    The restored `TrainState` on the shardings of `target`.
  """
  items = {'state': ocp.args.StandardRestore(target), 'data_iter': ocp.args.JsonRestore()}
  restored = manager.restore(
    step, args=ocp.args.Composite(**items, **_checksum_args(manager, step))
  )
  if not isinstance(restored.data_iter, dict):
    raise ValueError(f'the data position of step {step} is not readable')
  for part in ('params', 'opt_state'):
    _verify(restored, part, getattr(restored.state, part), step)
  data_iter.set_state(restored.data_iter)
  return restored.state


def _checksum_args(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  """The checksums item to restore, where the step has one (older saves and conversions: not)."""
  if (epath.Path(manager.directory) / str(step) / CHECKSUMS_ITEM).exists():
    return {CHECKSUMS_ITEM: ocp.args.JsonRestore()}
  return {}


def _verify(restored: Any, part: str, tree: Any, step: int) -> None:
  """Checks `tree` (`state.<part>`) against the checksums saved with it, if any."""
  recorded = restored.get(CHECKSUMS_ITEM)
  if recorded is not None:
    checksums.verify(tree, recorded[part], f'checkpoint step {step} {part}')


def _params_only(manager: ocp.CheckpointManager, step: int, target: Any) -> Any:
  """`state.params` of checkpoint `step`, placed on the shardings of `target`."""
  restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding), target)
  state = ocp.args.PyTreeRestore(
    item={'params': target}, restore_args={'params': restore_args}, partial_restore=True
  )
  restored = manager.restore(
    step, args=ocp.args.Composite(state=state, **_checksum_args(manager, step))
  )
  _verify(restored, 'params', restored.state['params'], step)
  return restored.state['params']


def why_unreadable(error: BaseException) -> str:
  """One line for the log: the error type and the start of its message."""
  first = str(error).strip().splitlines()[0] if str(error).strip() else ''
  return f'{type(error).__name__}: {first[:300]}'


def newest_readable(
  manager: ocp.CheckpointManager, steps: list[int], restore: Callable[[int], Any]
) -> tuple[Any, int, dict[int, str]]:
  """Restores the first step of `steps` that reads, in the order given.

  Args:
    manager: the manager the steps belong to (for the folder in messages).
    steps: candidate steps, preferred first.
    restore: `restore(step)`; any exception marks that step unreadable.

  Returns:
    `(restored, step, skipped)`, `skipped` mapping each unreadable step tried
    before to why it failed (also logged as a warning).

  Raises:
    CheckpointUnreadableError: none of `steps` reads.
  """
  skipped: dict[int, str] = {}
  for step in steps:
    try:
      return restore(step), step, skipped
    except Exception as error:  # noqa: BLE001 - orbax/tensorstore raise many kinds.
      skipped[step] = why_unreadable(error)
      logging.warning(
        'Checkpoint step %d in %s is unreadable, trying an older one: %s',
        step,
        manager.directory,
        skipped[step],
      )
  details = '; '.join(f'step {s}: {why}' for s, why in skipped.items())
  raise CheckpointUnreadableError(
    f'no readable checkpoint in {manager.directory} ({details}). Move that folder away to '
    'start from scratch, or restore it from a backup.'
  )


class CheckpointUnreadableError(RuntimeError):
  """Every checkpoint of a run failed to read (the message lists why)."""


def set_aside(manager: ocp.CheckpointManager, steps: list[int]) -> None:
  """Moves unreadable checkpoints to `<workdir>/checkpoints_unreadable/` (process 0).

  Kept, not deleted (someone may want to look at them), and out of the
  manager's folder so that the resumed run can save those steps again.
  """
  if not steps:
    return
  if jax.process_index() == 0:
    folder = epath.Path(manager.directory)
    aside = folder.parent / f'{CHECKPOINT_DIR}_unreadable'
    aside.mkdir(parents=True, exist_ok=True)
    for step in steps:
      target = aside / str(step)
      if target.exists():
        target = aside / f'{step}.{len(list(aside.iterdir()))}'
      (folder / str(step)).rename(target)
      logging.warning('Moved unreadable checkpoint step %d to %s', step, target)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices('aac_jax: unreadable checkpoints set aside')
  manager.reload()


def _best_then_newest(manager: ocp.CheckpointManager) -> list[tuple[int, str]]:
  """Steps to try for "the run's parameters": the best one, then newest first."""
  newest = sorted(manager.all_steps(), reverse=True)
  best = manager.best_step()
  if best is None:  # No checkpoint carries validation metrics.
    return [(s, 'latest' if i == 0 else 'older') for i, s in enumerate(newest)]
  return [(best, 'best')] + [(s, 'newer' if s > best else 'older') for s in newest if s != best]


def restore_params(
  workdir: str | os.PathLike,
  train_cfg: ml_collections.ConfigDict,
  target: Any,
  step: int | None = None,
) -> tuple[Any, int, str]:
  """The parameters of a run: the one way every stage and tool loads them.

  Used by `init_from`, the test pass after training, SCST, `aac-caption`,
  export and evaluation. Without `step`: the best checkpoint by the run's
  validation metric, else the latest; an unreadable one is skipped (with a
  warning saying why) for the next newest.

  Args:
    workdir: the run's workdir.
    train_cfg: that run's `config.train` (the best-metric definition).
    target: abstract parameter tree (shapes, dtypes, shardings).
    step: a step asked for explicitly (no fallback).

  Returns:
    `(params, step, kind)`, kind 'requested', 'best', 'latest', 'newer' or
    'older' (the last two: the best one was unreadable).

  Raises:
    FileNotFoundError: no checkpoint in that workdir, or none at `step`.
    CheckpointUnreadableError: none of its checkpoints reads.
  """
  manager = create_checkpoint_manager(workdir, train_cfg, read_only=True)
  try:
    saved = sorted(manager.all_steps())
    if not saved:
      raise FileNotFoundError(f'no checkpoint in {checkpoint_dir(workdir)}')
    if step is not None:
      if step not in saved:
        raise FileNotFoundError(
          f'no checkpoint at step {step} in {checkpoint_dir(workdir)}; saved: {saved}'
        )
      return _params_only(manager, step, target), step, 'requested'
    order = _best_then_newest(manager)
    kinds = dict(order)
    params, step, _ = newest_readable(
      manager, [s for s, _ in order], lambda s: _params_only(manager, s, target)
    )
    return params, step, kinds[step]
  finally:
    manager.close()


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

  Own checkpoints are tried newest first; unreadable ones (truncated or
  missing files) are logged with the reason and set aside (`set_aside`).

  Args:
    manager: this run's manager.
    train_cfg: `config.train` (`init_from`).
    init_state: builds a fresh state on the target shardings.
    from_params: builds a state (fresh optimizer) on the target shardings from params.
    target: abstract `TrainState` (see `abstract_state`).
    data_iter: the train iterator, moved to the saved position.

  Returns:
    `(state, how)` with `how` a sentence for the log.

  Raises:
    CheckpointUnreadableError: the run has checkpoints and none reads.
  """
  own = sorted(manager.all_steps(), reverse=True)
  if own:
    state, step, skipped = newest_readable(
      manager, own, lambda s: restore_checkpoint(manager, s, target, data_iter)
    )
    set_aside(manager, sorted(skipped))
    return state, f'resumed from {manager.directory} at step {step}'
  if train_cfg.init_from:
    params, step, kind = restore_params(train_cfg.init_from, train_cfg, target.params)
    return from_params(params), f'parameters from {train_cfg.init_from} ({kind} step {step})'
  return init_state(), 'fresh initialisation'


def log_saved(manager: ocp.CheckpointManager, step: int, reason: str, detail: str = '') -> None:
  """Waits for the pending save and logs `<reason>: saved step N (<detail>) in <dir>`."""
  manager.wait_until_finished()
  detail = f' ({detail})' if detail else ''
  logging.info('%s: saved step %d%s in %s', reason, step, detail, manager.directory)
