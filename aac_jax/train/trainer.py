"""The training orchestrator: build, restore, loop, evaluate, save.

`train_and_evaluate(config, workdir)` is what `python -m aac_jax.main` runs.
It calls one named function per concern; the loop itself is in
`train_loop`. The workdir ends up holding:

  config.json          the resolved configuration
  vocab.txt            the tokenizer (built from the train captions once)
  checkpoints/<step>/  orbax checkpoints (state + data iterator [+ metrics])
  events.out.tfevents  TensorBoard: train/* and <split>/* scalars, samples
  train.log            readable log lines (this package's, plus warnings)
  predictions/         one JSON per evaluation (clip id, prediction, refs)
"""

import contextlib
import dataclasses
import json
import logging as py_logging
import os
import time

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import tqdm
from absl import logging
from etils import epath

from aac_jax import models
from aac_jax.data import feature_stats, pipeline
from aac_jax.data import tokenizer as tokenizer_lib
from aac_jax.models import pretrained_setup
from aac_jax.train import checkpointing, evaluation, parallel, steps
from aac_jax.train import state as state_lib
from aac_jax.train.metric_writers import MetricWriter, create_default_writer
from aac_jax.train.preemption import PreemptionWatcher


class NonFiniteLossError(RuntimeError):
  """The loss or gradient norm became NaN or Inf; the message names the step."""


@dataclasses.dataclass
class Experiment:
  """What one run is made of (built once from the config)."""

  config: ml_collections.ConfigDict
  workdir: epath.Path
  mesh: jax.sharding.Mesh
  tokenizer: tokenizer_lib.Tokenizer
  train_model: models.Captioner
  eval_model: models.Captioner
  tx: object
  schedule: object


@dataclasses.dataclass
class LoopResult:
  """How `train_loop` ended: `reason` is 'finished', 'stopped' or 'preempted'."""

  state: state_lib.TrainState
  step: int
  reason: str


def write_config(config: ml_collections.ConfigDict, workdir: epath.Path) -> None:
  """Saves the resolved config as `<workdir>/config.json` (process 0)."""
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2, sort_keys=True))


# Files a run copies from its `init_from` run when it has none of its own:
# the loaded parameters only make sense with those token ids and features.
INHERITED_FILES = (tokenizer_lib.VOCAB_FILENAME, feature_stats.STATS_FILENAME)


def inherit_from_init_run(config: ml_collections.ConfigDict, workdir: epath.Path) -> None:
  """Copies `INHERITED_FILES` from `config.train.init_from` where `workdir` lacks them.

  Several processes may copy at once: each writes a private temporary file
  and renames it, so readers never see half a file.
  """
  if not config.train.get('init_from', ''):
    return
  for name in INHERITED_FILES:
    own, other = workdir / name, epath.Path(config.train.init_from) / name
    if not own.exists() and other.exists():
      tmp = own.with_name(f'.{name}.{os.getpid()}.tmp')
      tmp.write_text(other.read_text())
      tmp.replace(own)


def create_experiment(config: ml_collections.ConfigDict, workdir: str) -> Experiment:
  """Builds the mesh, tokenizer, models and optimizer of a run."""
  path = epath.Path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  inherit_from_init_run(config, path)
  # The run's own vocabulary, else one built from the training split.
  tokenizer = tokenizer_lib.get_tokenizer(config.dataset, str(path))
  pretrained_setup.resolve_encoder_frontend(config)  # Before the features are measured.
  feature_stats.resolve(config, path)
  model_cfg = models.make_captioner_config(config.model, tokenizer.vocab_size)
  tx, schedule = state_lib.create_optimizer(config.optim, config.train.num_steps)
  tx = pretrained_setup.freeze_optimizer(tx, model_cfg)
  return Experiment(
    config=config,
    workdir=path,
    mesh=parallel.create_mesh(),
    tokenizer=tokenizer,
    train_model=models.Captioner(model_cfg),
    eval_model=models.Captioner(model_cfg.replace(deterministic=True)),
    tx=tx,
    schedule=schedule,
  )


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
  """Own checkpoint, else `init_from` params, else fresh (see `checkpointing`)."""
  replicated = parallel.replicated(exp.mesh)
  init_params = _init_params_fn(exp)
  rng = jax.random.key(exp.config.seed)

  def fresh():
    return state_lib.create_train_state(init_params(rng), exp.tx)

  def from_params(params):
    return jax.jit(lambda p: state_lib.create_train_state(p, exp.tx), out_shardings=replicated)(
      params
    )

  init_state = jax.jit(fresh, out_shardings=replicated)
  if exp.train_model.config.encoder_init:  # Converted tagger weights, loaded outside jit.
    init_state = lambda: from_params(  # noqa: E731
      pretrained_setup.load_encoder_init(jax.jit(init_params)(rng), exp.train_model.config)
    )
  state, how = checkpointing.restore_or_initialize(
    manager,
    exp.config.train,
    init_state=init_state,
    from_params=from_params,
    target=checkpointing.abstract_state(fresh, replicated),
    data_iter=train_iter,
  )
  logging.info('Train state: %s (%d parameters)', how, models.count_params(state.params))
  return state


def step_cache_key(exp: Experiment, *sections: str) -> tuple:
  """What a jitted step of this run depends on: devices, vocabulary, config sections."""
  return (
    tuple(d.id for d in exp.mesh.devices.flat),
    exp.tokenizer.vocab_size,
    int(exp.config.dataset.sample_rate),
    *(exp.config[s].to_json(sort_keys=True) for s in sections),
  )


def keyword_loss_weight(config: ml_collections.ConfigDict) -> float:
  """`optim.keyword_loss_weight`, checked against `model.keyword_head`."""
  weight = float(config.optim.get('keyword_loss_weight', 0.0))
  if weight < 0:
    raise ValueError(f'optim.keyword_loss_weight must be >= 0, got {weight}')
  if weight and not config.model.get('keyword_head', False):
    raise ValueError(
      f'optim.keyword_loss_weight={weight} needs the keyword head: set '
      '--config.model.keyword_head=True (or the weight to 0)'
    )
  return weight


def make_train_step_fn(exp: Experiment):
  """The jitted data-parallel `step(state, batch, rng)` of this run."""
  key = (
    steps.train_step,
    exp.config.train.num_steps,
    *step_cache_key(exp, 'model', 'optim', 'frontend'),
  )
  return steps.cached_step(
    key,
    lambda: steps.make_train_step(
      exp.mesh,
      model=exp.train_model,
      tx=exp.tx,
      schedule=exp.schedule,
      frontend_cfg=exp.config.frontend,
      sample_rate=int(exp.config.dataset.sample_rate),
      label_smoothing=float(exp.config.optim.label_smoothing),
      grad_accum_steps=int(exp.config.optim.grad_accum_steps),
      keyword_loss_weight=keyword_loss_weight(exp.config),
    ),
  )


class MetricsBuffer:
  """Host-side train metrics, fetched one step late so dispatch stays ahead.

  `push(step, metrics)` fetches the metrics of the step before (by then
  computed) and checks them; `flush()` fetches the newest too. A NaN or Inf
  loss or gradient norm raises `NonFiniteLossError` naming its step.
  """

  def __init__(self):
    self._pending = None
    self._rows: list[dict[str, float]] = []
    self.last: dict[str, float] = {}

  def push(self, step: int, metrics) -> None:
    self.flush()
    self._pending = (step, metrics)

  def flush(self) -> None:
    if self._pending is None:
      return
    step, metrics = self._pending
    self._pending = None
    row = {k: float(v) for k, v in parallel.to_host(metrics).items()}
    bad = [k for k in ('loss', 'grad_norm') if not np.isfinite(row[k])]
    if bad:
      raise NonFiniteLossError(
        f'non-finite {", ".join(f"{k}={row[k]}" for k in bad)} at step {step}; stopping '
        '(the bad update is not saved; restart from the last checkpoint with a lower lr)'
      )
    self._rows.append(row)
    self.last = row

  def summary(self) -> dict[str, float]:
    """Means over the steps since the last summary (flushes first)."""
    self.flush()
    rows, self._rows = self._rows, []
    if not rows:
      return {}
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


class Throughput:
  """Steps/s and examples/s between two calls of `report`."""

  def __init__(self, step: int, batch_size: int):
    self._step, self._time, self._batch = step, time.perf_counter(), batch_size

  def report(self, step: int) -> dict[str, float]:
    now = time.perf_counter()
    rate = (step - self._step) / max(now - self._time, 1e-9)
    self._step, self._time = step, now
    return {'steps_per_sec': rate, 'examples_per_sec': rate * self._batch}


def _planned_end(config: ml_collections.ConfigDict) -> int:
  stop_at = int(config.train.get('stop_at_step', -1))
  return min(stop_at, config.train.num_steps) if stop_at > 0 else config.train.num_steps


def _is_every(step: int, every: int) -> bool:
  return every > 0 and step % every == 0


def write_train_summary(
  writer: MetricWriter, step: int, buffer: MetricsBuffer, throughput: Throughput, bar
) -> None:
  """Writes the averaged train metrics and speed since the last summary."""
  scalars = {f'train/{k}': v for k, v in buffer.summary().items()}
  scalars.update({f'train/{k}': v for k, v in throughput.report(step).items()})
  writer.write_scalars(step, scalars)
  bar.set_postfix(loss=f'{scalars.get("train/loss", float("nan")):.4f}', refresh=False)


def _maybe_evaluate(exp: Experiment, evaluator, step: int, state, buffer: MetricsBuffer):
  """Validation scores at evaluation steps (and the last step), else None."""
  cfg = exp.config.train
  if not (_is_every(step, cfg.eval_every) or step == cfg.num_steps):
    return None
  buffer.flush()  # Never evaluate (or save) a state after a NaN update.
  return evaluator.evaluate_and_report(state.params, exp.config.dataset.validation_split, step)


def _should_save(
  cfg: ml_collections.ConfigDict, step: int, end: int, preempted: bool, scores
) -> bool:
  return preempted or scores is not None or _is_every(step, cfg.checkpoint_every) or step == end


def train_loop(
  exp: Experiment,
  state: state_lib.TrainState,
  train_iter,
  manager: ocp.CheckpointManager,
  writer: MetricWriter,
  evaluator: 'evaluation.Evaluator',
) -> LoopResult:
  """Runs updates until `num_steps` (or `stop_at_step`, or preemption).

  Saves every `checkpoint_every` steps, after each evaluation (with its
  metrics, which rank the best checkpoint), at the end, and at the step
  boundary after a SIGTERM.
  """
  cfg = exp.config.train
  start, end = int(state.step), _planned_end(exp.config)
  step_fn, rng = make_train_step_fn(exp), jax.random.key(exp.config.seed)
  buffer, throughput = MetricsBuffer(), Throughput(start, cfg.batch_size)
  bar = tqdm.tqdm(
    total=cfg.num_steps, initial=start, unit='step', disable=jax.process_index() > 0, mininterval=2
  )
  with PreemptionWatcher() as watcher, bar:
    for step in range(start + 1, end + 1):
      state, metrics = step_fn(state, parallel.shard_batch(next(train_iter), exp.mesh), rng)
      buffer.push(step, metrics)
      bar.update(1)
      preempted = watcher.should_stop(step)
      if _is_every(step, cfg.log_every) or step == start + 1:
        write_train_summary(writer, step, buffer, throughput, bar)
      scores = _maybe_evaluate(exp, evaluator, step, state, buffer)
      if scores is not None:
        throughput = Throughput(step, cfg.batch_size)  # Leave evaluation time out.
      if _should_save(cfg, step, end, preempted, scores):
        buffer.flush()
        checkpointing.save_checkpoint(manager, step, state, train_iter, scores)
      if preempted:
        checkpointing.log_saved(manager, step, 'preempted', watcher.signal_name)
        return LoopResult(state, step, 'preempted')
  return LoopResult(state, end, 'finished' if end == cfg.num_steps else 'stopped')


def evaluate_best_on_test(exp: Experiment, manager, result: LoopResult, evaluator) -> None:
  """After the last step: the best checkpoint (by validation) on the test split."""
  manager.wait_until_finished()
  best = manager.best_step()
  params = result.state.params
  if best is not None and best != result.step:
    target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), result.state
    )
    params = checkpointing.load_params(exp.workdir, exp.config.train, target.params)[0]
  logging.info('Test evaluation with the checkpoint of step %s', best or result.step)
  evaluator.evaluate_and_report(params, exp.config.dataset.test_split, best or result.step)


class _OwnRecords(py_logging.Filter):
  """Keeps this package's records, errors from anywhere, warnings not from orbax.

  (orbax warns at every save without validation metrics, which is normal here.)
  """

  def filter(self, record: py_logging.LogRecord) -> bool:
    if record.levelno >= py_logging.ERROR or f'{os.sep}aac_jax{os.sep}' in record.pathname:
      return True
    return record.levelno >= py_logging.WARNING and f'{os.sep}orbax{os.sep}' not in record.pathname


@contextlib.contextmanager
def log_file(workdir: epath.Path, name: str = 'train.log'):
  """Appends readable log lines to `<workdir>/<name>` (process 0, local workdirs).

  Creates `workdir` where it does not exist yet.
  """
  if jax.process_index() > 0 or '://' in str(workdir):
    yield
    return
  workdir.mkdir(parents=True, exist_ok=True)
  handler = py_logging.FileHandler(os.fspath(workdir / name))
  handler.setFormatter(py_logging.Formatter('%(asctime)s %(levelname)s %(message)s'))
  handler.addFilter(_OwnRecords())
  logger = logging.get_absl_logger()
  level = logger.level
  logger.addHandler(handler)
  if logger.getEffectiveLevel() > py_logging.INFO:  # Library use without absl flags.
    logger.setLevel(py_logging.INFO)
  try:
    yield
  finally:
    logger.setLevel(level)
    logger.removeHandler(handler)
    handler.close()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> LoopResult:
  """Trains (resuming where possible), evaluates, and checkpoints one run.

  Args:
    config: the full config (see configs/base.py).
    workdir: the run's folder (local path or a URL orbax understands).

  Returns:
    How the loop ended; `reason == 'preempted'` after a SIGTERM (a checkpoint
    of that step is on disk).

  Raises:
    NonFiniteLossError: the loss became NaN/Inf (message names the step).
  """
  with log_file(epath.Path(workdir)):  # Opened first: the feature statistics are logged too.
    exp = create_experiment(config, workdir)
    try:
      return _train_and_evaluate(exp)
    except NonFiniteLossError as e:
      logging.error('Training stopped: %s', e)
      raise


def _train_and_evaluate(exp: Experiment) -> LoopResult:
  config = exp.config
  write_config(config, exp.workdir)
  train_iter = pipeline.make_train_iterator(config.dataset, exp.tokenizer, config.train.batch_size)
  manager = checkpointing.create_checkpoint_manager(exp.workdir, config.train)
  writer = create_default_writer(str(exp.workdir))
  evaluator = evaluation.Evaluator(
    config, exp.mesh, exp.eval_model, exp.tokenizer, exp.workdir, writer
  )
  try:
    state = restore_state(exp, manager, train_iter)
    if int(state.step) == 0:
      writer.write_hparams(_flat_hparams(config))
    result = train_loop(exp, state, train_iter, manager, writer, evaluator)
    if result.reason == 'finished' and config.eval.get('test_at_end', True):
      evaluate_best_on_test(exp, manager, result, evaluator)
    logging.info('Training %s at step %d', result.reason, result.step)
    return result
  finally:
    manager.wait_until_finished()
    manager.close()
    writer.close()
    if hasattr(train_iter, 'close'):  # Stops Grain worker processes.
      train_iter.close()


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


def run(config: ml_collections.ConfigDict, workdir: str) -> int:
  """`train_and_evaluate` for the command line: the process exit status.

  Returns:
    0 when training finished, stopped as planned or was preempted (and
    saved); 1 when the loss became NaN/Inf (the message names the step).
  """
  try:
    train_and_evaluate(config, workdir)
  except NonFiniteLossError:
    return 1  # Already logged, with the step.
  return 0
