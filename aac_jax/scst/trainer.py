"""The SCST stage: start from a cross-entropy run, optimise the reward directly.

`run_scst(config, workdir)` is the entry point. It reuses the cross-entropy
trainer's pieces (experiment, optimizer, checkpoint manager and resume
order, metric writers, evaluator, preemption watcher) and replaces the
step with the SCST one:

  device: sample K captions per clip (+ greedy)   `steps.make_sample_step`
  host:   decode, reward, baseline                `rewards.score_rollout`
  device: -advantage * log p(sample) update       `steps.make_update_step`

Pipelining (`config.scst.pipeline`, on by default): the samples of batch
t + 1 are dispatched (asynchronously) before the host scores batch t, so
the devices sample while the host computes rewards. Those samples come from
the parameters before update t, i.e. one update old (as in asynchronous
actor-learner setups); the log-probabilities of the update are always
recomputed with the current parameters. At steps that evaluate or save (and
at the last one) the pipeline is drained first, so a run resumed from such
a checkpoint repeats exactly the steps of an uninterrupted run; after a
preemption at another step the next samples are on-policy instead of one
update old. `pipeline=False` samples on-policy at every step.

The workdir holds what a cross-entropy workdir holds, plus
`scst_initial.json`: the scores of the `init_from` parameters on the
comparison (test) split, measured once before the first update.
"""

import dataclasses
import json
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import tqdm
from absl import logging
from etils import epath

from aac_jax import decoding, metrics
from aac_jax.data.sources import EvalSplit
from aac_jax.scst import data as scst_data
from aac_jax.scst import rewards as rewards_lib
from aac_jax.scst import steps as scst_steps
from aac_jax.train import checkpointing, evaluation, parallel, trainer
from aac_jax.train import steps as train_steps
from aac_jax.train.metric_writers import MetricWriter, create_default_writer
from aac_jax.train.preemption import PreemptionWatcher
from aac_jax.train.state import TrainState

INITIAL_SCORES_FILE = 'scst_initial.json'


@dataclasses.dataclass
class ScstResult:
  """How an SCST run ended and what it scored.

  Attributes:
    state: the train state after the last update.
    step: last SCST step.
    reason: 'finished', 'stopped' or 'preempted'.
    split: the comparison split (`config.dataset.test_split`).
    initial: scores of the `init_from` (cross-entropy) parameters on `split`:
      caption metrics (`cider_d`, ...) and fluency proxies (`vocab_size`,
      `repeated_*gram_rate`, `mean_length`, ...).
    final: the same for the best SCST checkpoint (by validation), after a
      finished run with `eval.test_at_end`; else empty.
    final_step: the step of that checkpoint (-1 if none).
    timing: mean seconds per step (`step_s`), of it on the host reward
      (`reward_s`) and waiting for samples (`sample_wait_s`), and
      `reward_share` = reward_s / step_s; the first two steps (compilation)
      are left out.
  """

  state: TrainState
  step: int
  reason: str
  split: str
  initial: dict[str, float]
  final: dict[str, float]
  final_step: int
  timing: dict[str, float]


@dataclasses.dataclass
class ScstRun:
  """The pieces of one SCST run, built once (`create_scst_run`)."""

  exp: trainer.Experiment
  references: EvalSplit
  reward_fn: rewards_lib.CaptionReward
  sample_fn: Any
  update_fn: Any
  repeat_ban_mask: jax.Array
  sample_rng: jax.Array
  update_rng: jax.Array

  @property
  def config(self) -> ml_collections.ConfigDict:
    return self.exp.config


def check_scst_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for a config the SCST stage cannot run."""
  scst = config.scst
  if scst.baseline not in rewards_lib.BASELINES:
    raise ValueError(f'scst.baseline must be one of {rewards_lib.BASELINES}, got {scst.baseline!r}')
  if scst.baseline == 'mean_others' and scst.num_samples < 2:
    raise ValueError("scst.baseline='mean_others' needs scst.num_samples >= 2")
  if scst.num_samples < 1:
    raise ValueError('scst.num_samples must be >= 1')
  normalizer = scst.get('loss_normalizer', 'samples')
  if normalizer not in scst_steps.NORMALIZERS:
    raise ValueError(f'scst.loss_normalizer must be one of {scst_steps.NORMALIZERS}')
  rewards_lib.reward_weights(scst)


# Sections the parameters depend on, taken from the `init_from` run's config
# (except the fields named, which are this stage's own).
INHERITED_SECTIONS = {'model': ('dropout', 'attention_dropout'), 'frontend': ('spec_augment',)}


def inherit_init_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config with the model and front end of the `init_from` run.

  The parameters only fit the architecture (and features) they were trained
  with, so those sections come from `<init_from>/config.json` where it
  exists; every difference is logged. Dropout and SpecAugment stay this
  stage's own.

  Returns:
    A copy of `config` (or `config` itself without an `init_from` config).
  """
  path = epath.Path(config.train.init_from or '.') / 'config.json'
  if not config.train.init_from or not path.exists():
    return config
  source = json.loads(path.read_text())
  config = config.copy_and_resolve_references()
  changed = []
  for section, own in INHERITED_SECTIONS.items():
    for key, value in source.get(section, {}).items():
      if key in own or key not in config[section] or config[section][key] == value:
        continue
      changed.append(f'{section}.{key}={value!r} (was {config[section][key]!r})')
      config[section][key] = value
  if changed:
    logging.warning('SCST: from %s: %s', path, ', '.join(changed))
  return config


def make_sample_settings(
  config: ml_collections.ConfigDict,
) -> tuple[decoding.DecodeSettings, decoding.DecodeSettings | None]:
  """Sampling settings (and greedy ones for the greedy baseline).

  Bans and lengths come from `config.decode`; temperature, top-k and top-p
  from `config.scst` (default: plain multinomial sampling at temperature 1).
  """
  max_len = min(int(config.decode.max_len), int(config.model.max_decode_len))
  base = decoding.make_decode_settings(config.decode, max_len=max_len)
  scst = config.scst
  sample = base.replace(
    method='sample',
    temperature=float(scst.temperature),
    top_k=int(scst.get('top_k', 0)),
    top_p=float(scst.get('top_p', 1.0)),
  )
  greedy = base.replace(method='greedy') if scst.baseline == 'greedy' else None
  return sample, greedy


def make_repeat_ban_mask(tokenizer, settings: decoding.DecodeSettings) -> np.ndarray:
  """bool `[vocab]`: the tokens the repeat ban of `settings` stops repeating."""
  return decoding.repeat_ban_mask_for(tokenizer.tokens, settings)


def create_scst_run(config: ml_collections.ConfigDict, workdir: str) -> ScstRun:
  """Builds the experiment, the reward and the two jitted steps."""
  check_scst_config(config)
  config = inherit_init_config(config)
  exp = trainer.create_experiment(config, workdir)
  references = scst_data.read_train_references(config.dataset)
  weights = rewards_lib.reward_weights(config.scst)
  reward_fn = rewards_lib.CaptionReward(references, weights, config.scst.get('spice_jars', None))
  sample_settings, greedy_settings = make_sample_settings(config)
  sample_rate = int(config.dataset.sample_rate)
  sample_key = (
    scst_steps.sample_step,
    *trainer.step_cache_key(exp, 'model', 'frontend', 'decode', 'scst'),
  )
  sample_fn = train_steps.cached_step(
    sample_key,
    lambda: scst_steps.make_sample_step(
      exp.mesh,
      int(config.scst.num_samples),
      model=exp.eval_model,
      sample_settings=sample_settings,
      greedy_settings=greedy_settings,
      frontend_cfg=config.frontend,
      sample_rate=sample_rate,
    ),
  )
  update_key = (
    scst_steps.scst_update_step,
    config.train.num_steps,
    *trainer.step_cache_key(exp, 'model', 'optim', 'frontend', 'scst'),
  )
  update_fn = train_steps.cached_step(
    update_key,
    lambda: scst_steps.make_update_step(
      exp.mesh,
      model=exp.train_model,
      tx=exp.tx,
      schedule=exp.schedule,
      frontend_cfg=config.frontend,
      sample_rate=sample_rate,
      normalize_advantage=bool(config.scst.normalize_advantage),
      normalizer=config.scst.get('loss_normalizer', 'samples'),
    ),
  )
  mask = make_repeat_ban_mask(exp.tokenizer, decoding.make_decode_settings(config.decode))
  mask = jax.device_put(mask, parallel.replicated(exp.mesh))
  sample_rng, update_rng = jax.random.split(jax.random.key(config.seed))
  return ScstRun(exp, references, reward_fn, sample_fn, update_fn, mask, sample_rng, update_rng)


def local_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of a `P('data')` array, in its local batch order."""
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
  return np.concatenate([np.asarray(s.data) for s in shards])


@dataclasses.dataclass
class _Pending:
  """A batch whose samples are in flight."""

  step: int
  local: dict[str, np.ndarray]  # host batch: audio, audio_paddings, index
  batch: dict[str, jax.Array]  # the same on the devices (audio only)
  out: dict[str, jax.Array]  # sample_step outputs


def dispatch_samples(run: ScstRun, params: Any, train_iter, step: int) -> _Pending:
  """Draws the next batch and starts sampling it (returns without waiting)."""
  local = next(train_iter)
  audio = {k: local[k] for k in ('audio', 'audio_paddings')}
  batch = parallel.shard_batch(audio, run.exp.mesh)
  out = run.sample_fn(params, batch, run.sample_rng, step, run.repeat_ban_mask)
  return _Pending(step, local, batch, out)


def score_pending(run: ScstRun, pending: _Pending) -> tuple[rewards_lib.ScoredRollout, dict, dict]:
  """Waits for the samples, scores them on the host.

  Returns:
    `(scored, device_rollout, seconds)`: the host results, the rollout for
    `update_fn` (device arrays) and `{'sample_wait_s', 'reward_s'}`.
  """
  t0 = time.perf_counter()
  host = {k: local_rows(v) for k, v in pending.out.items() if k in ('samples', 'greedy')}
  t1 = time.perf_counter()
  scored = rewards_lib.score_rollout(
    run.reward_fn,
    run.exp.tokenizer,
    host['samples'],
    pending.local['index'],
    run.config.scst.baseline,
    host.get('greedy'),
  )
  rollout = parallel.shard_batch(
    {'rewards': scored.rewards, 'baselines': scored.baselines}, run.exp.mesh
  )
  rollout['samples'] = pending.out['samples']
  t2 = time.perf_counter()
  return scored, rollout, {'sample_wait_s': t1 - t0, 'reward_s': t2 - t1}


def host_metrics(scored: rewards_lib.ScoredRollout) -> dict[str, float]:
  """Fluency proxies of this step's samples (and the greedy reward)."""
  stats = metrics.diversity_stats(scored.captions)
  out = {f'sample_{k}': float(v) for k, v in stats.items()}
  if scored.greedy_rewards is not None:
    out['greedy_reward_mean'] = float(np.mean(scored.greedy_rewards))
  return out


class StepTimes:
  """Per-step host timings; `summary()` leaves out the compiling first steps."""

  def __init__(self, skip: int = 2):
    self._skip, self._rows = skip, []
    self._last = time.perf_counter()

  def tick(self, seconds: dict[str, float]) -> dict[str, float]:
    now = time.perf_counter()
    row = dict(seconds, step_s=now - self._last)
    row['reward_share'] = row['reward_s'] / max(row['step_s'], 1e-9)
    self._last = now
    self._rows.append(row)
    return {f'time_{k}': v for k, v in row.items()}

  def restart(self) -> None:
    """Starts the next step's clock now (evaluation and saving are not step time)."""
    self._last = time.perf_counter()

  def summary(self) -> dict[str, float]:
    rows = self._rows[self._skip :] or self._rows
    if not rows:
      return {}
    means = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    means['reward_share'] = means['reward_s'] / max(means['step_s'], 1e-9)
    return means


class ScstEvaluator:
  """Greedy captions of an eval split, caption metrics plus fluency proxies."""

  def __init__(self, run: ScstRun, evaluator: evaluation.Evaluator, writer: MetricWriter):
    self._run, self._evaluator, self._writer = run, evaluator, writer
    self._events: dict[str, list[str] | None] = {}
    self._training_captions = [c for refs in run.references.references for c in refs]

  def __call__(self, params: Any, split_name: str, step: int, tag: str = '') -> dict[str, float]:
    """Scores `params` on `split_name`; writes predictions and scalars."""
    config = self._run.config
    split, predictions = self._evaluator.predict(params, split_name)
    if split_name not in self._events:
      synthetic = config.dataset.name == evaluation.SYNTHETIC_DATASET
      self._events[split_name] = (
        evaluation.read_events(config.dataset, split) if synthetic else None
      )
    scores, per_clip = evaluation.score(predictions, split, self._events[split_name], config.eval)
    fluency = metrics.diversity_stats(predictions, self._training_captions)
    scores.update({k: float(v) for k, v in fluency.items()})
    name = f'{split_name}_{tag or f"step{step}"}.json'
    path = self._run.exp.workdir / 'predictions' / name
    evaluation.write_predictions(path, split, predictions, per_clip)
    prefix = f'{split_name}_{tag}' if tag else split_name
    self._writer.write_scalars(step, {f'{prefix}/{k}': v for k, v in scores.items()})
    count = int(config.train.num_sample_captions)
    samples = evaluation.sample_captions_text(split, predictions, count)
    self._writer.write_texts(step, {f'{prefix}/samples': samples})
    self._writer.flush()
    return scores


def _planned_end(config: ml_collections.ConfigDict) -> int:
  stop_at = int(config.train.get('stop_at_step', -1))
  return min(stop_at, config.train.num_steps) if stop_at > 0 else config.train.num_steps


def _is_every(step: int, every: int) -> bool:
  return every > 0 and step % every == 0


def _is_boundary(config: ml_collections.ConfigDict, step: int, end: int, preempted: bool) -> bool:
  """Steps that evaluate or save (the pipeline is drained before them)."""
  cfg = config.train
  return (
    preempted
    or step in (end, cfg.num_steps)
    or _is_every(step, cfg.eval_every)
    or _is_every(step, cfg.checkpoint_every)
  )


def scst_loop(
  run: ScstRun,
  state: TrainState,
  train_iter,
  manager: ocp.CheckpointManager,
  writer: MetricWriter,
  evaluate: ScstEvaluator,
) -> tuple[trainer.LoopResult, StepTimes]:
  """Runs SCST updates until `num_steps` (or `stop_at_step`, or preemption)."""
  config, cfg = run.config, run.config.train
  start, end = int(state.step), _planned_end(config)
  pipeline = bool(config.scst.get('pipeline', True))
  buffer, throughput, times = (
    trainer.MetricsBuffer(),
    trainer.Throughput(start, cfg.batch_size),
    StepTimes(),
  )
  bar = tqdm.tqdm(
    total=cfg.num_steps, initial=start, unit='step', disable=jax.process_index() > 0, mininterval=2
  )
  pending = dispatch_samples(run, state.params, train_iter, start + 1) if start < end else None
  with PreemptionWatcher() as watcher, bar:
    for step in range(start + 1, end + 1):
      preempted = watcher.should_stop(step)
      boundary = _is_boundary(config, step, end, preempted)
      ahead = None
      if pipeline and not boundary:
        ahead = dispatch_samples(run, state.params, train_iter, step + 1)
      scored, rollout, seconds = score_pending(run, pending)
      state, device_metrics = run.update_fn(state, pending.batch, rollout, run.update_rng)
      buffer.push(step, {**device_metrics, **host_metrics(scored), **times.tick(seconds)})
      bar.update(1)
      if _is_every(step, cfg.log_every) or step == start + 1:
        trainer.write_train_summary(writer, step, buffer, throughput, bar)
      scores = None
      if _is_every(step, cfg.eval_every) or step == cfg.num_steps:
        buffer.flush()
        scores = evaluate(state.params, config.dataset.validation_split, step)
      if boundary:
        buffer.flush()
        checkpointing.save_checkpoint(manager, step, state, train_iter, scores)
        times.restart()
      if preempted:
        checkpointing.log_saved(manager, step, f'preemption: {watcher.signal_name}')
        return trainer.LoopResult(state, step, 'preempted'), times
      if ahead is None and step < end:
        ahead = dispatch_samples(run, state.params, train_iter, step + 1)
      pending = ahead
  buffer.flush()
  reason = 'finished' if end == cfg.num_steps else 'stopped'
  return trainer.LoopResult(state, end, reason), times


def initial_scores(run: ScstRun, evaluate: ScstEvaluator, state: TrainState, fresh: bool) -> dict:
  """Scores of the starting (cross-entropy) parameters on the test split, once.

  Measured before the first update and kept in `<workdir>/scst_initial.json`,
  so a resumed run still reports them.
  """
  path = run.exp.workdir / INITIAL_SCORES_FILE
  split = run.config.dataset.test_split
  if path.exists():
    return json.loads(path.read_text()).get(split, {})
  if not fresh or not run.config.scst.get('eval_initial', True):
    return {}
  scores = evaluate(state.params, split, 0, tag='init')
  if jax.process_index() == 0:
    path.write_text(json.dumps({split: scores}, indent=1, sort_keys=True))
  return scores


def evaluate_best(
  run: ScstRun, manager: ocp.CheckpointManager, result: trainer.LoopResult, evaluate: ScstEvaluator
) -> tuple[dict[str, float], int]:
  """The best checkpoint (by validation) on the test split."""
  manager.wait_until_finished()
  best = manager.best_step()
  params = result.state.params
  if best is not None and best != result.step:
    target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), result.state.params
    )
    params = checkpointing.load_params(run.exp.workdir, run.config.train, target)[0]
  step = best if best is not None else result.step
  logging.info('SCST test evaluation with the checkpoint of step %d', step)
  return evaluate(params, run.config.dataset.test_split, step), step


COMPARISON_COLUMNS = (
  'cider_d',
  'spider',
  'bleu_4',
  'rouge_l',
  'vocab_size',
  'repeated_bigram_rate',
  'repeated_trigram_rate',
  'mean_length',
)


def format_comparison(result: ScstResult, columns=COMPARISON_COLUMNS) -> list[str]:
  """Text table: the cross-entropy start and the SCST result on the test split."""
  rows = [('cross-entropy', result.initial), (f'scst (step {result.final_step})', result.final)]
  shown = [c for c in columns if any(c in scores for _, scores in rows)]
  lines = [f'{result.split:<20}' + ''.join(f'{c:>24}' for c in shown)]
  for name, scores in rows:
    cells = ''.join(f'{scores[c]:>24.4f}' if c in scores else f'{"-":>24}' for c in shown)
    lines.append(f'{name:<20}' + cells)
  if result.timing:
    t = result.timing
    lines.append(
      f'step {t["step_s"]:.3f} s, host reward {t["reward_s"]:.3f} s '
      f'({100 * t["reward_share"]:.1f} %), waiting for samples {t["sample_wait_s"]:.3f} s'
    )
  return lines


def run_scst(config: ml_collections.ConfigDict, workdir: str) -> ScstResult:
  """Runs (or resumes) the SCST stage of a cross-entropy run.

  Args:
    config: the full config with `train.init_from` = the cross-entropy
      workdir (e.g. `configs/synthetic_demo_scst.py`).
    workdir: this stage's folder (resumes from its latest checkpoint).

  Returns:
    The `ScstResult` (cross-entropy and SCST scores on the test split,
    timings).

  Raises:
    ValueError: neither a checkpoint in `workdir` nor `train.init_from`.
    trainer.NonFiniteLossError: the loss became NaN/Inf.
  """
  with trainer.log_file(epath.Path(workdir)):  # `<workdir>/train.log`, as in training.
    return _run_scst(config, workdir)


def _run_scst(config: ml_collections.ConfigDict, workdir: str) -> ScstResult:
  run = create_scst_run(config, workdir)
  config = run.config
  trainer.write_config(config, run.exp.workdir)
  train_iter = scst_data.make_scst_train_iterator(config.dataset, config.train.batch_size)
  manager = checkpointing.create_checkpoint_manager(run.exp.workdir, config.train)
  writer = create_default_writer(str(run.exp.workdir))
  evaluator = evaluation.Evaluator(
    config, run.exp.mesh, run.exp.eval_model, run.exp.tokenizer, run.exp.workdir, writer
  )
  evaluate = ScstEvaluator(run, evaluator, writer)
  try:
    fresh = manager.latest_step() is None
    if fresh and not config.train.init_from:
      raise ValueError('SCST starts from a cross-entropy run: set config.train.init_from')
    state = trainer.restore_state(run.exp, manager, train_iter)
    initial = initial_scores(run, evaluate, state, fresh)
    result, times = scst_loop(run, state, train_iter, manager, writer, evaluate)
    final, final_step = {}, -1
    if result.reason == 'finished' and config.eval.get('test_at_end', True):
      final, final_step = evaluate_best(run, manager, result, evaluate)
    logging.info('SCST %s at step %d; timing %s', result.reason, result.step, times.summary())
    return ScstResult(
      state=result.state,
      step=result.step,
      reason=result.reason,
      split=config.dataset.test_split,
      initial=initial,
      final=final,
      final_step=final_step,
      timing=times.summary(),
    )
  finally:
    manager.wait_until_finished()
    manager.close()
    writer.close()
