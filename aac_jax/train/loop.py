"""The one run loop of every training stage (cross-entropy and SCST).

`run_loop` applies updates from `state.step + 1` to the planned end and
does, at the same steps for every stage: progress and train summaries,
validation, checkpoints, preemption. What differs between the stages is
the update, given as an `Updater` (`aac_jax.train.trainer.CrossEntropyUpdater`,
`aac_jax.scst.trainer.ScstUpdater`).

Boundary steps are those that evaluate or save: every `eval_every`, every
`checkpoint_every`, the planned end, the last step and a preemption. An
updater must leave nothing in flight across a boundary (SCST drains its
sampling pipeline there), so a run resumed from any checkpoint repeats the
steps an uninterrupted run takes.

A checkpoint is saved only from parameters whose own loss is finite: before
each save the loss of the parameters being saved is computed on the batch
of that step (`steps.own_loss`, no dropout); a NaN there, or in the loss of
any update, stops the run with `NonFiniteLossError`, whose message names the
last checkpoint kept (or says there is none).
"""

import dataclasses
import time
from collections.abc import Callable
from typing import Any, Protocol

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import tqdm

from aac_jax.train import checkpointing, parallel
from aac_jax.train.metric_writers import MetricWriter
from aac_jax.train.preemption import PreemptionWatcher
from aac_jax.train.state import TrainState


class NonFiniteLossError(RuntimeError):
  """The loss or gradient norm became NaN or Inf; the message names the step."""


class Updater(Protocol):
  """The stage-specific part of a training step."""

  def update(self, state: TrainState, step: int, boundary: bool) -> tuple[TrainState, dict]:
    """Draws the step's batch, applies one update; returns `(state, metrics)`.

    `metrics` may hold device scalars (fetched one step late) and host
    floats. At a `boundary` nothing may stay in flight after the call.
    """

  def loss_batch(self) -> dict[str, jax.Array]:
    """The last update's batch as `own_loss` reads it (`audio`, `audio_paddings`, `targets`)."""

  def after_boundary(self) -> None:
    """Called after evaluating/saving at a boundary (e.g. to restart step clocks)."""


@dataclasses.dataclass
class LoopResult:
  """How `run_loop` ended: `reason` is 'finished', 'stopped' or 'preempted'."""

  state: TrainState
  step: int
  reason: str


class MetricsBuffer:
  """Host-side train metrics, fetched one step late so dispatch stays ahead.

  `push(step, metrics)` fetches the metrics of the step before (by then
  computed) and checks them; `flush()` fetches the newest too. A NaN or Inf
  loss or gradient norm raises `NonFiniteLossError` naming its step.
  """

  def __init__(self):
    self._pending = None
    self._rows: list[dict[str, float]] = []

  def push(self, step: int, metrics: dict) -> None:
    self.flush()
    self._pending = (step, metrics)

  def flush(self) -> None:
    if self._pending is None:
      return
    step, metrics = self._pending
    self._pending = None
    row = {k: float(v) for k, v in parallel.to_host(metrics).items()}
    bad = [k for k in ('loss', 'grad_norm') if k in row and not np.isfinite(row[k])]
    if bad:
      raise NonFiniteLossError(
        f'non-finite {", ".join(f"{k}={row[k]}" for k in bad)} at step {step}'
      )
    self._rows.append(row)

  def summary(self) -> dict[str, float]:
    """Means over the steps since the last summary (flushes first)."""
    self.flush()
    rows, self._rows = self._rows, []
    if not rows:
      return {}
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


class Throughput:
  """Steps/s and examples/s between two calls of `report` (or a `restart`)."""

  def __init__(self, step: int, batch_size: int):
    self._batch = batch_size
    self.restart(step)

  def restart(self, step: int) -> None:
    """Counts from `step`, now (leaves evaluation and saving time out)."""
    self._step, self._time = step, time.perf_counter()

  def report(self, step: int) -> dict[str, float]:
    now = time.perf_counter()
    rate = (step - self._step) / max(now - self._time, 1e-9)
    self._step, self._time = step, now
    return {'steps_per_sec': rate, 'examples_per_sec': rate * self._batch}


def planned_end(train_cfg: ml_collections.ConfigDict) -> int:
  """The last step of this invocation: `stop_at_step` if set, else `num_steps`."""
  stop_at = int(train_cfg.stop_at_step)
  return min(stop_at, train_cfg.num_steps) if stop_at > 0 else int(train_cfg.num_steps)


def is_every(step: int, every: int) -> bool:
  return every > 0 and step % every == 0


@dataclasses.dataclass
class LoopIO:
  """Where the loop's results go and how it scores and checks parameters.

  Attributes:
    train_iter: the Grain iterator the updater draws from (its position is
      saved with each checkpoint).
    manager: the run's checkpoint manager.
    writer: metric writer.
    evaluate: `evaluate(params, step) -> scores` on the validation split.
    own_loss: `own_loss(params, batch) -> scalar` (see the module docstring).
  """

  train_iter: Any
  manager: ocp.CheckpointManager
  writer: MetricWriter
  evaluate: Callable[[Any, int], dict[str, float]]
  own_loss: Callable[[Any, dict], jax.Array]


def _write_summary(io: LoopIO, step: int, buffer: MetricsBuffer, speed: Throughput, bar) -> None:
  scalars = {f'train/{k}': v for k, v in buffer.summary().items()}
  scalars.update({f'train/{k}': v for k, v in speed.report(step).items()})
  io.writer.write_scalars(step, scalars)
  bar.set_postfix(loss=f'{scalars.get("train/loss", float("nan")):.4f}', refresh=False)


def kept_checkpoint_text(manager: ocp.CheckpointManager) -> str:
  """Which checkpoint a stopped run leaves to resume from, for its message."""
  manager.wait_until_finished()
  latest = manager.latest_step()
  if latest is None:
    return 'no checkpoint was saved, so a rerun starts from the beginning'
  return (
    f'the last checkpoint kept is step {latest} in {manager.directory}; a rerun resumes there '
    '(lower --config.optim.lr if the loss diverged)'
  )


def _save(io: LoopIO, updater: Updater, step: int, state: TrainState, scores) -> None:
  """Saves `state` at `step` once the loss of its own parameters is known finite."""
  loss = float(io.own_loss(state.params, updater.loss_batch()))
  if not np.isfinite(loss):
    raise NonFiniteLossError(f'non-finite loss={loss} of the step-{step} parameters (not saved)')
  checkpointing.save_checkpoint(io.manager, step, state, io.train_iter, scores)


def run_loop(
  config: ml_collections.ConfigDict, state: TrainState, updater: Updater, io: LoopIO
) -> LoopResult:
  """Runs updates until `num_steps` (or `stop_at_step`, or preemption).

  Raises:
    NonFiniteLossError: a loss became NaN/Inf; the message names the step
      and the checkpoint a rerun would resume from.
  """
  cfg = config.train
  start, end = int(state.step), planned_end(cfg)
  buffer, speed = MetricsBuffer(), Throughput(start, cfg.batch_size)
  bar = tqdm.tqdm(
    total=cfg.num_steps, initial=start, unit='step', disable=jax.process_index() > 0, mininterval=2
  )
  try:
    with PreemptionWatcher() as watcher, bar:
      for step in range(start + 1, end + 1):
        preempted = watcher.should_stop(step)
        evaluates = is_every(step, cfg.eval_every) or step == cfg.num_steps
        saves = preempted or evaluates or is_every(step, cfg.checkpoint_every) or step == end
        state, metrics = updater.update(state, step, saves)
        buffer.push(step, metrics)
        bar.update(1)
        if is_every(step, cfg.log_every) or step == start + 1:
          _write_summary(io, step, buffer, speed, bar)
        if not saves:
          continue
        buffer.flush()  # Never evaluate or save after a NaN update.
        io.manager.wait_until_finished()  # A failed save stops the run before evaluating.
        scores = io.evaluate(state.params, step) if evaluates else None
        _save(io, updater, step, state, scores)
        speed.restart(step)
        updater.after_boundary()
        if preempted:
          checkpointing.log_saved(io.manager, step, 'preempted', watcher.signal_name)
          return LoopResult(state, step, 'preempted')
      buffer.flush()
      io.manager.wait_until_finished()  # The last save's failure is the run's too.
  except NonFiniteLossError as error:
    raise NonFiniteLossError(f'{error}; stopping: {kept_checkpoint_text(io.manager)}') from None
  return LoopResult(state, end, 'finished' if end == cfg.num_steps else 'stopped')
