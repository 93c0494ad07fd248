"""Runs that stop early: SIGTERM (preemption) and a NaN loss.

The SIGTERM test starts a real `python -m aac_jax.main` process, signals it
once it trains, expects a checkpoint and exit status 0, then resumes from
that checkpoint in this process.
"""

import logging
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import toy_dataset

from aac_jax.train import checkpointing, parallel, trainer
from configs import synthetic_demo

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = 'configs/synthetic_demo.py:runlocal'


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  """`(overrides, cache_dir)`: config overrides for the toy data, shared cache."""
  cache = tmp_path_factory.getbasetemp() / 'jax_cache'
  previous = jax.config.jax_compilation_cache_dir
  jax.config.update('jax_compilation_cache_dir', str(cache))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  data_dir = tmp_path_factory.mktemp('tfds')
  overrides = {
    'dataset.name': toy_dataset.build_toy_dataset(str(data_dir)),
    'dataset.builder_config': '',
    'dataset.data_dir': str(data_dir),
    'dataset.max_audio_seconds': 1.0,
    'train.num_steps': 100,
    'train.log_every': 1,
    'train.checkpoint_every': 2,
    'train.eval_every': 1000,
    'eval.test_at_end': False,
  }
  yield overrides, cache
  jax.config.update('jax_compilation_cache_dir', previous)


def _config(overrides, **more):
  config = synthetic_demo.get_config('runlocal')
  for key, value in {**overrides, **more}.items():
    section, name = key.split('.')
    config[section][name] = value
  return config


def _saved_steps(workdir) -> list[int]:
  path = checkpointing.checkpoint_dir(workdir)
  return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit())


def _start_training_process(overrides, cache, workdir) -> subprocess.Popen:
  flags = [f'--config={CONFIG}', f'--workdir={workdir}']
  flags += [f'--config.{k}={v}' for k, v in overrides.items()]
  env = dict(
    os.environ,
    XLA_FLAGS='--xla_force_host_platform_device_count=8',
    JAX_PLATFORMS='cpu',
    JAX_COMPILATION_CACHE_DIR=str(cache),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
  )
  return subprocess.Popen(
    [sys.executable, '-m', 'aac_jax.main', *flags],
    cwd=REPO,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def _wait_for(lines: list[str], pattern: str, proc: subprocess.Popen, timeout: float) -> None:
  deadline = time.monotonic() + timeout
  while not any(re.search(pattern, line) for line in list(lines)):
    if proc.poll() is not None or time.monotonic() > deadline:
      proc.kill()
      pytest.fail(f'no {pattern!r} in the training log:\n' + ''.join(lines[-40:]))
    time.sleep(0.2)


def test_sigterm_saves_exits_zero_and_resumes(setup, tmp_path, caplog):
  overrides, cache = setup
  proc = _start_training_process(overrides, cache, tmp_path)
  lines: list[str] = []
  reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, '')))
  reader.start()
  # Step 2's metrics are logged once the loop (and its signal handler) runs.
  _wait_for(lines, r'\[2\] train/', proc, timeout=240)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=120) == 0, ''.join(lines[-40:])
  reader.join()
  log = ''.join(lines)
  match = re.search(r'preempted: saved step (\d+) \(SIGTERM\)', log)
  assert match, log[-3000:]
  step = int(match.group(1))
  assert step >= 2 and _saved_steps(tmp_path)[-1] == step

  caplog.set_level(logging.INFO)
  result = trainer.train_and_evaluate(
    _config(overrides, **{'train.stop_at_step': step + 1}), str(tmp_path)
  )
  assert f'at step {step}' in caplog.text and 'resumed from' in caplog.text
  assert result.step == step + 1 and int(result.state.step) == step + 1
  assert _saved_steps(tmp_path)[-1] == step + 1


# The check reads the checkpoint back without a target (shardings from its files).
@pytest.mark.filterwarnings('ignore:Sharding info not provided')
def test_nan_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(
  setup, tmp_path, monkeypatch, caplog
):
  overrides, _ = setup
  real_shard_batch = parallel.shard_batch
  calls = []

  def corrupt_third_batch(batch, mesh):
    calls.append(1)
    if len(calls) == 3:  # The batch of the update to step 3.
      batch = dict(batch, audio=np.full_like(batch['audio'], np.nan))
    return real_shard_batch(batch, mesh)

  # Corrupt data, not a patched step: the compiled step is the real one.
  monkeypatch.setattr(parallel, 'shard_batch', corrupt_third_batch)
  caplog.set_level(logging.INFO)
  config = _config(overrides, **{'train.stop_at_step': 6})
  assert trainer.run(config, str(tmp_path)) == 1
  assert re.search(r'non-finite loss=nan.* at step 3\b', caplog.text), caplog.text[-2000:]
  assert _saved_steps(tmp_path) == [2]

  manager = checkpointing.create_checkpoint_manager(tmp_path, config.train, read_only=True)
  restored = manager.restore(2, args=ocp.args.Composite(state=ocp.args.PyTreeRestore()))
  manager.close()
  params = restored.state['params']
  assert all(np.all(np.isfinite(np.asarray(p))) for p in jax.tree.leaves(params))
