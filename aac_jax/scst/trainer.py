"""The SCST stage: start from a cross-entropy run, optimise the reward directly.

`run_scst(config, workdir)` is the entry point. It runs the cross-entropy
trainer's `run_stage` (experiment, resume order, the one loop, evaluation,
checkpoints, preemption) with this module's update, `ScstUpdater`:

  device: sample K captions per clip (+ greedy)   `steps.make_sample_step`
          (+ their log p under the frozen init_from parameters, with
          `scst.kl_weight`: `steps.make_reference_log_prob_step`)
  host:   decode, reward (- KL term), baseline    `rewards.score_rollout`
  device: -advantage * log p(sample) update       `steps.make_update_step`
          (+ `scst.ce_weight` x reference cross-entropy)

Pipelining (`config.scst.pipeline`, on by default): the samples of batch
t + 1 are dispatched (asynchronously) before the host scores batch t, so
the devices sample while the host computes rewards. Those samples come from
the parameters before update t, i.e. one update old (as in asynchronous
actor-learner setups); the log-probabilities of the update are always
recomputed with the current parameters. At the loop's boundary steps (those
that evaluate or save, the last one, a preemption) nothing is dispatched
ahead, so a run resumed from any checkpoint repeats exactly the steps of an
uninterrupted run. `pipeline=False` samples on-policy at every step.

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
from absl import logging
from etils import epath

from aac_jax import config_validation, decoding, files, metrics
from aac_jax.data.sources import EvalSplit
from aac_jax.scst import data as scst_data
from aac_jax.scst import rewards as rewards_lib
from aac_jax.scst import steps as scst_steps
from aac_jax.train import checkpointing, evaluation, logs, parallel, trainer
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
  reference_fn: Any = None  # With scst.kl_weight: log p(sample) under `reference_params`.
  reference_params: Any = None  # The init_from parameters (`load_reference_params`).

  @property
  def config(self) -> ml_collections.ConfigDict:
    return self.exp.config


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
  scst = config.scst
  sample = decoding.model_decode_settings(
    config.decode,
    int(config.model.max_decode_len),
    method='sample',
    temperature=float(scst.temperature),
    top_k=int(scst.top_k),
    top_p=float(scst.top_p),
  )
  greedy = sample.replace(method='greedy') if scst.baseline == 'greedy' else None
  return sample, greedy


def make_update_fn(exp: trainer.Experiment, ce_weight: float):
  """The jitted SCST update of `exp` (`steps.make_update_step`), reference CE weighted `ce_weight`."""
  config = exp.config
  return scst_steps.make_update_step(
    exp.mesh,
    exp.state_sharding,
    model=exp.train_model,
    tx=exp.tx,
    schedule=exp.schedule,
    frontend_cfg=config.frontend,
    sample_rate=int(config.dataset.sample_rate),
    normalize_advantage=bool(config.scst.normalize_advantage),
    normalizer=config.scst.loss_normalizer,
    ce_weight=ce_weight,
  )


def create_scst_run(config: ml_collections.ConfigDict, workdir: str) -> ScstRun:
  """Builds the experiment, the reward and the two jitted steps (`config`: see `check_config`)."""
  exp = trainer.start_experiment(config, workdir)
  references = scst_data.read_train_references(config.dataset)
  weights = rewards_lib.reward_weights(config.scst)
  reward_fn = rewards_lib.CaptionReward(
    references,
    weights,
    config.scst.spice_jars or None,
    fluency=rewards_lib.fluency_term(config.scst),
    clap=rewards_lib.clap_term(config),
    repetition_penalty=float(config.scst.repetition_penalty),
  )
  sample_settings, greedy_settings = make_sample_settings(config)
  sample_rate = int(config.dataset.sample_rate)
  sample_fn = scst_steps.make_sample_step(
    exp.mesh,
    int(config.scst.num_samples),
    model=exp.eval_model,
    sample_settings=sample_settings,
    greedy_settings=greedy_settings,
    frontend_cfg=config.frontend,
    sample_rate=sample_rate,
  )
  update_fn = make_update_fn(exp, float(config.scst.ce_weight))
  mask = decoding.repeat_ban_mask_for(exp.tokenizer.tokens, sample_settings)
  mask = jax.device_put(mask, parallel.replicated(exp.mesh))
  sample_rng, update_rng = jax.random.split(jax.random.key(config.seed))
  reference_fn = None
  if config.scst.kl_weight:
    reference_fn = scst_steps.make_reference_log_prob_step(
      exp.mesh, model=exp.eval_model, frontend_cfg=config.frontend, sample_rate=sample_rate
    )
  return ScstRun(
    exp, references, reward_fn, sample_fn, update_fn, mask, sample_rng, update_rng, reference_fn
  )


def load_reference_params(run: ScstRun, params: Any) -> None:
  """Sets `run.reference_params` to the init_from run's parameters, laid out as `params`.

  Read from init_from (not taken from a fresh state) so a resumed run
  shapes its reward against the same reference.
  """
  target = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), params
  )
  train_cfg = run.config.train
  run.reference_params = checkpointing.restore_params(train_cfg.init_from, train_cfg, target)[0]


def local_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of a batch-split array, in its local batch order.

  Devices on the `tensor` axis hold copies of the same rows; each block of
  rows is taken once.
  """
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  blocks = {}
  for shard in x.addressable_shards:
    blocks.setdefault(shard.index[0].start or 0, shard)
  return np.concatenate([np.asarray(blocks[start].data) for start in sorted(blocks)])


@dataclasses.dataclass
class _Pending:
  """A batch whose samples are in flight."""

  step: int
  local: dict[str, np.ndarray]  # host batch: audio, audio_paddings, index (targets)
  batch: dict[str, jax.Array]  # the same on the devices (no index)
  out: dict[str, jax.Array]  # sample_step outputs


def dispatch_samples(run: ScstRun, params: Any, train_iter, step: int) -> _Pending:
  """Draws the next batch and starts sampling it (returns without waiting)."""
  local = next(train_iter)
  batch = parallel.shard_batch({k: v for k, v in local.items() if k != 'index'}, run.exp.mesh)
  out = run.sample_fn(params, batch, run.sample_rng, step, run.repeat_ban_mask)
  if run.reference_fn is not None:
    out['reference_log_probs'] = run.reference_fn(run.reference_params, batch, out['samples'])
  return _Pending(step, local, batch, out)


def score_pending(run: ScstRun, pending: _Pending) -> tuple[rewards_lib.ScoredRollout, dict, dict]:
  """Waits for the samples, scores them on the host.

  Returns:
    `(scored, device_rollout, seconds)`: the host results, the rollout for
    `update_fn` (device arrays) and `{'sample_wait_s', 'reward_s'}`.
  """
  t0 = time.perf_counter()
  host = {k: local_rows(v) for k, v in pending.out.items() if k != 'sample_log_probs'}
  log_ratio = None
  if 'reference_log_probs' in host:
    log_ratio = local_rows(pending.out['sample_log_probs']) - host['reference_log_probs']
  t1 = time.perf_counter()
  scored = rewards_lib.score_rollout(
    run.reward_fn,
    run.exp.tokenizer,
    host['samples'],
    pending.local['index'],
    run.config.scst.baseline,
    host.get('greedy'),
    log_ratio=log_ratio,  # None: a run without a reference (`create_scst_run`: kl_weight 0).
    kl_weight=0.0 if log_ratio is None else float(run.config.scst.kl_weight),
  )
  rollout = parallel.shard_batch(
    {'rewards': scored.rewards, 'baselines': scored.baselines}, run.exp.mesh
  )
  rollout['samples'] = pending.out['samples']
  t2 = time.perf_counter()
  return scored, rollout, {'sample_wait_s': t1 - t0, 'reward_s': t2 - t1}


def host_metrics(
  tokenizer, scored: rewards_lib.ScoredRollout, samples: jax.Array
) -> dict[str, float]:
  """This step's sample fluency proxies, greedy reward and reward terms, over all processes.

  The reward's terms are means over the samples: `reward_<metric>_mean`
  (`reward_cider_d_mean`, `reward_clap_mean`, `reward_fluency_error_mean`, ...).

  Args:
    tokenizer: the run's tokenizer.
    scored: this process's scored rollout.
    samples: the global `[B, K, L]` sampled token ids (split over the batch axes), whose
      rows on other processes are gathered here (every process calls this).
  """
  captions = scored.captions
  if jax.process_count() > 1:
    captions = rewards_lib.decode_captions(tokenizer, parallel.gather_to_host(samples))
  stats = metrics.diversity_stats(captions)
  out = {f'sample_{k}': float(v) for k, v in stats.items()}
  if scored.greedy_rewards is not None:
    out['greedy_reward_mean'] = float(np.mean(parallel.all_processes(scored.greedy_rewards)))
  for name in sorted(scored.terms):  # The same order on every process.
    out[f'reward_{name}_mean'] = float(np.mean(parallel.all_processes(scored.terms[name])))
  return out


class StepTimes:
  """Per-step host timings (means over processes); `summary()` leaves out the compiling first steps."""

  def __init__(self, skip: int = 2):
    self._skip, self._rows = skip, []
    self._last = time.perf_counter()

  def tick(self, seconds: dict[str, float]) -> dict[str, float]:
    """Records this step's seconds; returns them averaged over all processes."""
    now = time.perf_counter()
    row = parallel.mean_over_processes(dict(seconds, step_s=now - self._last))
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


class ScstUpdater:
  """The SCST update of the shared loop (`aac_jax.train.loop.Updater`).

  Each `update` scores the batch whose samples are in flight, applies the
  policy-gradient update and, with `scst.pipeline` outside boundaries,
  dispatches the next batch's samples first.
  """

  def __init__(self, run: ScstRun, train_iter, times: StepTimes, pipeline: bool | None = None):
    self._run, self._iter, self._times = run, train_iter, times
    self._pipeline = run.config.scst.pipeline if pipeline is None else pipeline
    self._pending: _Pending | None = None
    self._loss_batch: dict = {}

  def update(self, state: TrainState, step: int, boundary: bool):
    run = self._run
    if self._pending is None:
      self._pending = dispatch_samples(run, state.params, self._iter, step)
    pending, self._pending = self._pending, None
    if self._pipeline and not boundary:
      self._pending = dispatch_samples(run, state.params, self._iter, step + 1)
    scored, rollout, seconds = score_pending(run, pending)
    state, device_metrics = run.update_fn(state, pending.batch, rollout, run.update_rng)
    self._loss_batch = {**pending.batch, 'targets': pending.out['samples']}
    host = host_metrics(run.exp.tokenizer, scored, pending.out['samples'])
    return state, {**device_metrics, **host, **self._times.tick(seconds)}

  def loss_batch(self) -> dict:
    return self._loss_batch

  def after_boundary(self) -> None:
    self._times.restart()


def initial_scores(
  run: ScstRun, evaluator: evaluation.Evaluator, state: TrainState, fresh: bool
) -> dict:
  """Scores of the starting (cross-entropy) parameters on the test split, once.

  Measured before the first update and kept in `<workdir>/scst_initial.json`,
  so a resumed run still reports them.
  """
  path = run.exp.workdir / INITIAL_SCORES_FILE
  split = run.config.dataset.test_split
  if path.exists():
    return json.loads(path.read_text()).get(split, {})
  if not fresh or not run.config.scst.eval_initial:
    return {}
  scores = evaluator.evaluate(state.params, split, 0, tag='init')
  if jax.process_index() == 0:
    files.write_text(path, json.dumps({split: scores}, indent=1, sort_keys=True))
  return scores


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
    config_validation.ConfigError: bad config values (before any work).
    trainer.NonFiniteLossError: the loss became NaN/Inf (or another of
      `trainer.STOPPING_ERRORS`, logged in one line).
  """
  config = check_config(config)  # Before anything is written.
  with logs.log_file(epath.Path(workdir)), trainer.stop_logged('SCST'):
    return _run_scst(config, workdir)


def check_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config with the `init_from` run's model and front end, validated for SCST.

  Raises:
    config_validation.ConfigError: bad values (one line each).
  """
  config = inherit_init_config(config)
  config_validation.validate(config, 'scst', jax.device_count())
  return config


def _run_scst(config: ml_collections.ConfigDict, workdir: str) -> ScstResult:
  run = create_scst_run(config, workdir)
  config, times, initial = run.config, StepTimes(), {}
  training_captions = [c for refs in run.references.references for c in refs]

  def before_loop(evaluator, state, fresh):
    if run.reference_fn is not None:
      load_reference_params(run, state.params)
    initial.update(initial_scores(run, evaluator, state, fresh))

  stage = trainer.Stage(
    name='SCST',
    make_train_iter=lambda: scst_data.make_scst_train_iterator(
      config.dataset,
      config.train.batch_size,
      tokenizer=run.exp.tokenizer if config.scst.ce_weight else None,
    ),
    make_updater=lambda train_iter: ScstUpdater(run, train_iter, times),
    training_captions=training_captions,
    before_loop=before_loop,
  )
  result = trainer.run_stage(run.exp, stage)
  logging.info('SCST timing %s', times.summary())
  return ScstResult(
    state=result.loop.state,
    step=result.loop.step,
    reason=result.loop.reason,
    split=config.dataset.test_split,
    initial=initial,
    final=result.test,
    final_step=result.test_step,
    timing=times.summary(),
  )
