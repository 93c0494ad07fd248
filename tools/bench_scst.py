"""Where an SCST step's time goes: device sampling, host reward, device update.

Builds the real SCST pieces of a config (`aac_jax.scst.trainer.create_scst_run`:
train references, CIDEr-D reward with train document frequencies, jitted
sample and update steps on all local devices), feeds batches of real train
clips, and times:

- each part alone (sampling, reward on the host, update), blocking after each;
- whole steps run sequentially (`pipeline=False`: sample, score, update);
- whole steps pipelined (`pipeline=True`: batch t + 1 is sampled while the
  host scores batch t), as `run_scst` runs them.

With `scst.fluency` on (the reward's fluency term), a repetition term
(`scst.repetition_penalty` > 0), the reference cross-entropy term
(`scst.ce_weight` > 0) or the KL term (`scst.kl_weight` > 0), the same
measurements run without the terms and with them, interleaved `--rounds`
times (best of each); the host reward's extra time and the step-time ratios
are printed. The reward share is host reward time / step time. Parameters are the
`init_from` run's (best checkpoint) when given, else a fresh initialisation
(an untrained model samples long captions: the slowest case for the reward).

  python tools/bench_scst.py --config=configs/synthetic_demo_scst.py:init_from=workdirs/demo
  python tools/bench_scst.py --config=configs/synthetic_demo_scst.py:data=small --steps=5
  python tools/bench_scst.py \\
    --config=configs/synthetic_demo_scst.py:init_from=workdirs/demo,fluency=soft
  python tools/bench_scst.py --rounds=3 \\
    --config=configs/synthetic_demo_scst.py:init_from=workdirs/demo,fluency=soft,repetition=1
  python tools/bench_scst.py \\
    --config=configs/synthetic_demo_scst.py:init_from=workdirs/demo,fluency=soft,ce=1
"""

import dataclasses
import pathlib
import sys
import tempfile
import time

import jax
from absl import app, flags
from ml_collections import config_flags

_REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_REPO))

from aac_jax import config_path, models  # noqa: E402
from aac_jax.scst import data as scst_data  # noqa: E402
from aac_jax.scst import rewards as rewards_lib  # noqa: E402
from aac_jax.scst import trainer as scst_trainer  # noqa: E402
from aac_jax.train import checkpointing  # noqa: E402
from aac_jax.train import state as state_lib  # noqa: E402

config_flags.DEFINE_config_file('config', None, 'SCST config (configs/*_scst.py[:variant]).')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps per mode (after 2 warm-up steps).')
_ROUNDS = flags.DEFINE_integer('rounds', 2, 'Interleaved rounds with and without the terms.')
_FRESH = flags.DEFINE_bool('fresh', False, 'Random parameters even if init_from has a checkpoint.')
flags.mark_flags_as_required(['config'])


def initial_state(run: scst_trainer.ScstRun) -> state_lib.TrainState:
  """The init_from run's parameters (best checkpoint), else a fresh state."""
  exp = run.exp
  shardings = exp.state_sharding
  config = run.config
  length = min(config.dataset.max_caption_tokens, config.model.max_decode_len)

  def fresh():
    params = models.init_params(
      exp.train_model, jax.random.key(0), num_mels=config.frontend.n_mels, length=length
    )
    return state_lib.create_train_state(params, exp.tx)

  state = jax.jit(fresh, out_shardings=shardings)()
  source = run.config.train.init_from
  if source and not _FRESH.value:
    target = checkpointing.abstract_state(fresh, shardings).params
    params, step, _ = checkpointing.restore_params(source, run.config.train, target)
    print(f'parameters of {source} step {step}')
    state = state.replace(params=params)
  return state


def time_parts(run, state, train_iter, steps: int):
  """Sampling, reward and update timed separately (each blocked on).

  Returns:
    `(mean seconds by part, the state after the updates)`.
  """
  totals = {'sample_s': 0.0, 'reward_s': 0.0, 'update_s': 0.0}
  for i in range(steps + 2):
    t0 = time.perf_counter()
    pending = scst_trainer.dispatch_samples(run, state.params, train_iter, i)
    jax.block_until_ready(pending.out)
    t1 = time.perf_counter()
    _, rollout, _ = scst_trainer.score_pending(run, pending)
    t2 = time.perf_counter()
    state, metrics = run.update_fn(state, pending.batch, rollout, run.update_rng)
    jax.block_until_ready(metrics)
    t3 = time.perf_counter()
    if i >= 2:
      for key, value in zip(totals, (t1 - t0, t2 - t1, t3 - t2), strict=True):
        totals[key] += value / steps
  return totals, state


def time_loop(run, state, train_iter, steps: int, pipeline: bool):
  """Seconds per step of the training loop's schedule (`ScstUpdater`; no eval, no saving).

  Returns:
    `(seconds per step, the state after the updates)`.
  """
  updater = scst_trainer.ScstUpdater(run, train_iter, scst_trainer.StepTimes(), pipeline)
  start = None
  for i in range(steps + 2):
    if i == 2:
      jax.block_until_ready(state)
      start = time.perf_counter()
    state, metrics = updater.update(state, i, boundary=i == steps + 1)
    float(metrics['loss'])  # The loop fetches each step's metrics (one step late there).
  jax.block_until_ready(state)
  return (time.perf_counter() - start) / steps, state


def plain_reward_run(run: scst_trainer.ScstRun) -> scst_trainer.ScstRun:
  """The same run without the fluency, repetition, reference CE and KL terms (side by side)."""
  config = run.config
  reward_fn = rewards_lib.CaptionReward(
    run.references, rewards_lib.reward_weights(config.scst), config.scst.spice_jars or None
  )
  update_fn = scst_trainer.make_update_fn(run.exp, 0.0) if config.scst.ce_weight else run.update_fn
  return dataclasses.replace(
    run, reward_fn=reward_fn, update_fn=update_fn, reference_fn=None, reference_params=None
  )


def time_run(run, state, train_iter, steps: int):
  """Parts, sequential and pipelined step times of one run: `(row, the state after)`."""
  parts, state = time_parts(run, state, train_iter, steps)
  print({k: round(v * 1e3, 1) for k, v in parts.items()}, 'ms')
  sequential, state = time_loop(run, state, train_iter, steps, pipeline=False)
  pipelined, state = time_loop(run, state, train_iter, steps, pipeline=True)
  return {**parts, 'sequential_s': sequential, 'pipelined_s': pipelined}, state


def main(argv):
  del argv
  config = flags.FLAGS.config
  devices = jax.local_devices()
  print(
    f'{len(devices)} x {devices[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}'
  )
  with tempfile.TemporaryDirectory() as workdir:
    config = scst_trainer.check_config(config)
    run = scst_trainer.create_scst_run(config, workdir)
    state = initial_state(run)
    if run.reference_fn is not None:  # The KL term's frozen reference: init_from's parameters.
      scst_trainer.load_reference_params(run, state.params)
    train_iter = scst_data.make_scst_train_iterator(  # Targets feed the CE term, if on.
      config.dataset, config.train.batch_size, tokenizer=run.exp.tokenizer
    )
    k, b = config.scst.num_samples, config.train.batch_size
    print(
      f'batch {b} clips x {k} samples, baseline {config.scst.baseline}, reward {config.scst.reward}'
      f', fluency {config.scst.fluency}, repetition penalty {config.scst.repetition_penalty}'
      f', reference CE weight {config.scst.ce_weight}, KL weight {config.scst.kl_weight}'
    )
    # With a fluency or repetition term, the same run without them first (same batches'
    # kind, same compiled steps): the terms' cost side by side.
    terms = [f'x fluency ({config.scst.fluency})'] if config.scst.fluency != 'off' else []
    if config.scst.repetition_penalty:
      terms.append(f'x repetition ({config.scst.repetition_penalty:g})')
    if config.scst.ce_weight:
      terms.append(f'+ reference CE ({config.scst.ce_weight:g})')
    if config.scst.kl_weight:
      terms.append(f'- KL ({config.scst.kl_weight:g})')
    runs = {'reward': run}
    if terms:
      runs = {config.scst.reward: plain_reward_run(run), ' '.join(terms): run}
    rows = {}
    # Interleaved rounds, the best of each (a busy machine's noise hits both alike).
    # The update donates the state: each measurement continues from the last.
    for _ in range(_ROUNDS.value if len(runs) > 1 else 1):
      for name, one in runs.items():
        row, state = time_run(one, state, train_iter, _STEPS.value)
        rows[name] = {k: min(v, rows.get(name, row)[k]) for k, v in row.items()}
  print(
    '| reward | sample (ms) | host reward (ms) | update (ms) | step, sequential (ms) '
    '| step, pipelined (ms) | reward share, sequential | reward share, pipelined |'
  )
  print('|---|---|---|---|---|---|---|---|')
  for name, r in rows.items():
    print(
      f'| {name} | {r["sample_s"] * 1e3:.1f} | {r["reward_s"] * 1e3:.1f} '
      f'| {r["update_s"] * 1e3:.1f} | {r["sequential_s"] * 1e3:.1f} '
      f'| {r["pipelined_s"] * 1e3:.1f} | {r["reward_s"] / r["sequential_s"]:.1%} '
      f'| {r["reward_s"] / r["pipelined_s"]:.1%} |'
    )
  if len(rows) == 2:
    plain, fluent = rows.values()
    extra = fluent['reward_s'] - plain['reward_s']
    print(
      f'terms: host reward +{extra * 1e3:.1f} ms a step, {extra / plain["sequential_s"]:.1%}'
      ' of the plain sequential step; step time x'
      f' {fluent["sequential_s"] / plain["sequential_s"]:.3f} sequential,'
      f' x {fluent["pipelined_s"] / plain["pipelined_s"]:.3f} pipelined'
    )


if __name__ == '__main__':
  app.run(main, flags_parser=config_path.parse_flags)
