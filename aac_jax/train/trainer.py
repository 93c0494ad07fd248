"""The training orchestrator shared by every stage, and the cross-entropy stage.

`train_and_evaluate(config, workdir)` is what `python -m aac_jax.main` runs:
check the config (`aac_jax.config_validation`), prepare the run's files
(`aac_jax.train.prepare`), build the experiment from the config and that
record, then `run_stage`: restore, the one loop (`aac_jax.train.loop`) with the
cross-entropy update, the best checkpoint on the test split. The SCST stage
(`aac_jax.scst.trainer`) runs the same `run_stage` with its own update. The
workdir ends up holding:

  config.json          the resolved configuration
  vocab.txt            the tokenizer (built from the train captions once)
  feature_stats.json   the log-mel normalisation of the run
  run_files.json       what the preparation resolved (`aac_jax.train.prepare`)
  checkpoints/<step>/  orbax checkpoints (state + data iterator [+ metrics])
  checkpoints_unreadable/  checkpoints that failed to restore, set aside
  events.out.tfevents  TensorBoard: train/* and <split>/* scalars, samples
  train.log            every log line, libraries' included
  predictions/         one JSON per evaluation (clip id, prediction, refs)
"""

import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from aac_jax import config_validation, files, models, multihost
from aac_jax.data import pipeline
from aac_jax.data import tokenizer as tokenizer_lib
from aac_jax.models import pretrained_setup
from aac_jax.train import checkpointing, evaluation, logs, loop, parallel, prepare, steps
from aac_jax.train import state as state_lib
from aac_jax.train.loop import NonFiniteLossError
from aac_jax.train.metric_writers import create_default_writer


@dataclasses.dataclass
class Experiment:
  """What one run is made of (built once from the config).

  Attributes:
    mesh: the `('data', 'fsdp', 'tensor')` mesh of `config.mesh`.
    state_sharding: the `TrainState` of shardings: parameters by the
      logical-axis rules, the optimizer state mirroring them.
    own_loss: jitted `own_loss(params, batch) -> scalar` (see
      `aac_jax.train.loop`), checked before every save.
  """

  config: ml_collections.ConfigDict
  workdir: epath.Path
  mesh: jax.sharding.Mesh
  tokenizer: tokenizer_lib.Tokenizer
  train_model: models.Captioner
  eval_model: models.Captioner
  tx: object
  schedule: object
  own_loss: Callable
  state_sharding: Any = None


def write_config(config: ml_collections.ConfigDict, workdir: epath.Path) -> None:
  """Saves the resolved config as `<workdir>/config.json` (process 0)."""
  if jax.process_index() == 0:
    files.write_text(
      epath.Path(workdir) / 'config.json', config.to_json_best_effort(indent=2, sort_keys=True)
    )


def use_compilation_cache(cache_dir: str) -> None:
  """Points JAX's persistent compilation cache at `cache_dir` ('~' expanded).

  Nothing changes for '' or when JAX already has a cache directory (set by
  the user, `$JAX_COMPILATION_CACHE_DIR` or a test).
  """
  if cache_dir and jax.config.jax_compilation_cache_dir is None:
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(cache_dir))


def create_experiment(config: ml_collections.ConfigDict, run_files: prepare.RunFiles) -> Experiment:
  """Builds the mesh, models, optimizer and own-loss check of a prepared run."""
  tokenizer = run_files.load_tokenizer()
  model_cfg = models.make_captioner_config(config.model, tokenizer.vocab_size)
  tx, schedule = state_lib.create_optimizer(config.optim, config.train.num_steps)
  tx = pretrained_setup.freeze_optimizer(tx, model_cfg)
  mesh = parallel.create_mesh(config.mesh)
  eval_model = models.Captioner(model_cfg.replace(deterministic=True))
  state_sharding = state_sharding_for(config, models.Captioner(model_cfg), tx, mesh)
  own_loss = steps.make_own_loss_fn(
    mesh,
    state_sharding.params,
    model=eval_model,
    frontend_cfg=config.frontend,
    sample_rate=int(config.dataset.sample_rate),
  )
  return Experiment(
    config=config,
    workdir=epath.Path(run_files.workdir),
    mesh=mesh,
    tokenizer=tokenizer,
    train_model=models.Captioner(model_cfg),
    eval_model=eval_model,
    tx=tx,
    schedule=schedule,
    own_loss=own_loss,
    state_sharding=state_sharding,
  )


def _param_shapes(config: ml_collections.ConfigDict, model: models.Captioner):
  """`(logical specs, shapes)` of the model's parameters (nothing is computed)."""
  length = min(config.dataset.max_caption_tokens, config.model.max_decode_len)
  return models.param_axes(model, num_mels=config.frontend.n_mels, length=length)


def state_sharding_for(config, model, tx, mesh) -> state_lib.TrainState:
  """The `TrainState` of shardings of `model` trained by `tx` on `mesh`."""
  logical, shapes = _param_shapes(config, model)
  rules = parallel.mesh_rules(config.mesh)
  problems = parallel.tensor_split_problems(logical, shapes, mesh, rules)
  if problems:
    raise config_validation.ConfigError('bad config values:\n  ' + '\n  '.join(problems))
  params = parallel.param_shardings(logical, shapes, mesh, rules)
  shapes = jax.eval_shape(lambda p: state_lib.create_train_state(p, tx), shapes)
  return parallel.state_shardings(shapes, params, mesh)


def start_experiment(config: ml_collections.ConfigDict, workdir: str) -> Experiment:
  """What every stage starts with: the compilation cache, `prepare_run`, `create_experiment`."""
  use_compilation_cache(config.train.compilation_cache_dir)
  return create_experiment(config, prepare.prepare_run(config, workdir))


def _init_params_fn(exp: Experiment):
  config = exp.config

  def init(rng):
    return models.init_params(
      exp.train_model,
      rng,
      num_mels=config.frontend.n_mels,
      length=min(config.dataset.max_caption_tokens, config.model.max_decode_len),
    )

  return init


def restore_state(
  exp: Experiment, manager: ocp.CheckpointManager, train_iter
) -> state_lib.TrainState:
  """Own checkpoint, else `init_from` params, else fresh (see `checkpointing`).

  Every path creates or reads the state straight onto `exp.state_sharding`:
  fresh parameters and optimizer state are initialised inside `jit` with
  those output shardings, and a checkpoint is restored onto them (whatever
  mesh or process count wrote it).
  """
  shardings = exp.state_sharding
  init_params = _init_params_fn(exp)
  rng = jax.random.key(exp.config.seed)

  def fresh():
    return state_lib.create_train_state(init_params(rng), exp.tx)

  def from_params(params):
    create = jax.jit(lambda p: state_lib.create_train_state(p, exp.tx), out_shardings=shardings)
    return create(params)

  init_state = jax.jit(fresh, out_shardings=shardings)
  model_cfg = exp.train_model.config
  if model_cfg.encoder_init or model_cfg.llm_init:  # Converted weights, loaded outside jit.
    init_state = lambda: from_params(  # noqa: E731
      pretrained_setup.load_converted_init(jax.jit(init_params)(rng), model_cfg)
    )
  state, how = checkpointing.restore_or_initialize(
    manager,
    exp.config.train,
    init_state=init_state,
    from_params=from_params,
    target=checkpointing.abstract_state(fresh, shardings),
    data_iter=train_iter,
  )
  logging.info('Train state: %s (%d parameters)', how, models.count_params(state.params))
  return state


class CrossEntropyUpdater:
  """The cross-entropy update: one jitted data-parallel `steps.train_step`."""

  def __init__(self, exp: Experiment, train_iter):
    config = exp.config
    self._exp, self._iter = exp, train_iter
    self._rng = jax.random.key(config.seed)
    self._batch: dict = {}
    self._step = steps.make_train_step(
      exp.mesh,
      exp.state_sharding,
      model=exp.train_model,
      tx=exp.tx,
      schedule=exp.schedule,
      frontend_cfg=config.frontend,
      sample_rate=int(config.dataset.sample_rate),
      label_smoothing=float(config.optim.label_smoothing),
      grad_accum_steps=int(config.optim.grad_accum_steps),
      keyword_loss_weight=float(config.optim.keyword_loss_weight),
    )

  def update(self, state, step: int, boundary: bool):
    del step, boundary  # Nothing is dispatched ahead.
    self._batch = parallel.shard_batch(next(self._iter), self._exp.mesh)
    return self._step(state, self._batch, self._rng)

  def loss_batch(self) -> dict:
    return self._batch

  def after_boundary(self) -> None:
    pass


@dataclasses.dataclass
class Stage:
  """What differs between the training stages around the shared loop.

  Attributes:
    name: for log lines ('Training', 'SCST').
    make_train_iter: builds this stage's checkpointable train iterator.
    make_updater: `make_updater(train_iter) -> loop.Updater`.
    training_captions: reference captions of the train split, for the
      novelty rate of evaluated captions (None: not reported).
    before_loop: `before_loop(evaluator, state, fresh)`, run after the
      restore (SCST scores its starting point there).
  """

  name: str
  make_train_iter: Callable[[], Any]
  make_updater: Callable[[Any], loop.Updater]
  training_captions: Sequence[str] | None = None
  before_loop: Callable[..., None] | None = None


@dataclasses.dataclass
class StageResult:
  """How a stage ended and its test scores.

  Attributes:
    loop: the loop's result (state, step, reason).
    test: scores of the best checkpoint on the test split after a finished
      run with `eval.test_at_end` (else empty).
    test_step: the step of that checkpoint (-1 if none).
  """

  loop: loop.LoopResult
  test: dict[str, float]
  test_step: int


def _close_all(*closers: Callable[[], Any]) -> None:
  """Calls every closer; a failing one is logged, never hides the run's own error."""
  for close in closers:
    try:
      close()
    except Exception as error:  # noqa: BLE001 - already on the way out.
      logging.warning('While closing the run: %s', checkpointing.why_unreadable(error))


def run_stage(exp: Experiment, stage: Stage) -> StageResult:
  """Restores, runs the loop, tests the best checkpoint; closes everything it opened."""
  config = exp.config
  write_config(config, exp.workdir)
  train_iter = stage.make_train_iter()
  # The manager's first sync is the run's first cross-process execution: a peer
  # more than 30 s late to it stops XLA's collectives, so processes meet here.
  multihost.wait_for_all(f'start {stage.name}')
  manager = checkpointing.create_checkpoint_manager(exp.workdir, config.train)
  writer = create_default_writer(str(exp.workdir))
  evaluator = evaluation.Evaluator(exp, writer, stage.training_captions)
  try:
    fresh = manager.latest_step() is None
    state = restore_state(exp, manager, train_iter)
    if int(state.step) == 0:
      writer.write_hparams(_flat_hparams(config))
    if stage.before_loop is not None:
      stage.before_loop(evaluator, state, fresh)
    io = loop.LoopIO(
      train_iter=train_iter,
      manager=manager,
      writer=writer,
      evaluate=lambda params, step: evaluator.evaluate(
        params, config.dataset.validation_split, step
      ),
      own_loss=exp.own_loss,
    )
    result = loop.run_loop(config, state, stage.make_updater(train_iter), io)
    test, test_step = {}, -1
    if result.reason == 'finished' and config.eval.test_at_end:
      test, test_step = evaluation.evaluate_best_on_test(exp, manager, result.state, evaluator)
    logging.info('%s %s at step %d', stage.name, result.reason, result.step)
    return StageResult(result, test, test_step)
  finally:
    _close_all(
      manager.wait_until_finished,
      manager.close,
      writer.close,
      getattr(train_iter, 'close', lambda: None),  # Stops Grain worker processes.
    )


# Errors that stop a run with one logged line (exit status 1 on the command line).
STOPPING_ERRORS = (
  NonFiniteLossError,
  files.RunFileError,
  checkpointing.CheckpointUnreadableError,
  multihost.ProcessSyncError,
)


@contextlib.contextmanager
def stop_logged(stage_name: str):
  """Logs a `STOPPING_ERRORS` error as `<stage> stopped: <message>` (one line) and re-raises it."""
  try:
    yield
  except STOPPING_ERRORS as error:
    logging.error('%s stopped: %s', stage_name, error)
    raise


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> loop.LoopResult:
  """Trains (resuming where possible), evaluates, and checkpoints one run.

  Args:
    config: the full config (see configs/base.py).
    workdir: the run's folder (local path or a URL orbax understands).

  Returns:
    How the loop ended; `reason == 'preempted'` after a SIGTERM (a checkpoint
    of that step is on disk).

  Raises:
    config_validation.ConfigError: bad config values (before any work).
    NonFiniteLossError: the loss became NaN/Inf (message names the step and
      the checkpoint kept); or another of `STOPPING_ERRORS`.
  """
  config_validation.validate(config, 'train', jax.device_count())  # Before anything is written.
  # The log file is opened next: the feature statistics are logged too.
  with logs.log_file(epath.Path(workdir)), stop_logged('Training'):
    exp = start_experiment(config, workdir)

    def make_iter():
      return pipeline.make_train_iterator(config.dataset, exp.tokenizer, config.train.batch_size)

    stage = Stage('Training', make_iter, lambda it: CrossEntropyUpdater(exp, it))
    return run_stage(exp, stage).loop


def _flat_hparams(config: ml_collections.ConfigDict) -> dict:
  flat = {}

  def visit(prefix, node):
    for key, value in node.items():
      if isinstance(value, ml_collections.ConfigDict | dict):
        visit(f'{prefix}{key}.', value)
      else:
        flat[f'{prefix}{key}'] = value

  visit('', json.loads(config.to_json_best_effort()))
  return flat


def exit_status(run_fn: Callable[[], Any]) -> tuple[int, Any]:
  """Runs a stage for the command line: `(exit status, its result or None)`.

  0 when it finished, stopped as planned or was preempted (and saved); 1 when
  it stopped on one of `STOPPING_ERRORS` (already logged, one line); 2 for
  bad config values (printed here, one line each, before any work).
  """
  try:
    return 0, run_fn()
  except config_validation.ConfigError as error:
    print(f'error: {error}', file=sys.stderr)
    return 2, None
  except STOPPING_ERRORS:
    return 1, None


def run(config: ml_collections.ConfigDict, workdir: str) -> int:
  """`train_and_evaluate` for the command line: the exit status (see `exit_status`)."""
  return exit_status(lambda: train_and_evaluate(config, workdir))[0]
