"""Real multi-process runs: 2 processes x 2 simulated CPU devices on this machine.

Every run here starts `python -m aac_jax.main` (or `aac_jax.scst.main`) as
two processes joined by `--coordinator_address=127.0.0.1:<port>
--num_processes=2 --process_id=i` (gloo collectives), on the runlocal demo
config and a synthetic dataset that the first run builds into an empty
folder. They check what a pod slice needs: the first run's files made once,
the same losses as one process with all the devices, preemption of one
process, resuming on another process count, evaluation of every clip
exactly once, SCST. Slow (minutes): marked `multiprocess`, still run in CI.
"""

import json
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import multiprocess
import numpy as np
import pytest

from aac_jax.data import pipeline, sources
from aac_jax.data.tokenizer import Tokenizer
from aac_jax.train import checkpointing, trainer
from configs import synthetic_demo

pytestmark = pytest.mark.multiprocess

CONFIG = 'configs/synthetic_demo.py:runlocal'
END = 8  # Steps of the reference run; evaluation at the end.
TIMEOUT = 600


def _overrides(data_dir) -> dict:
  return {
    'dataset.data_dir': str(data_dir),
    'dataset.max_audio_seconds': 2.0,
    'train.num_steps': 100,  # Fixes the lr schedule; runs stop at `stop_at_step`.
    'train.stop_at_step': END,
    'train.log_every': 1,
    'train.checkpoint_every': 2,
    'train.eval_every': END,
    'eval.test_at_end': False,
  }


def _flags(overrides: dict, workdir, config: str = CONFIG, **more) -> list[str]:
  values = {**overrides, **more}
  return [f'--config={config}', f'--workdir={workdir}'] + [
    f'--config.{k}={v}' for k, v in values.items()
  ]


def _config(overrides: dict, **more):
  config = synthetic_demo.get_config('runlocal')
  for key, value in {**overrides, **more}.items():
    section, name = key.split('.')
    config[section][name] = value
  return config


def _train(flags: list[str], cache, num_processes: int = 2, devices: int = 2, **kwargs):
  """Runs `aac_jax.main` to its end; returns the `Run` after checking every exit status is 0."""
  run = multiprocess.start_run('aac_jax.main', flags, num_processes, devices, cache, **kwargs)
  assert run.wait(TIMEOUT) == [0] * num_processes, run.output()
  return run


@pytest.fixture(scope='module')
def reference(tmp_path_factory, jax_cache):
  """`(overrides, workdir, run)`: 2 x 2 processes from an empty data folder to step END."""
  data_dir = tmp_path_factory.mktemp('empty_tfds')
  overrides = _overrides(data_dir)
  workdir = tmp_path_factory.mktemp('reference')
  run = _train(_flags(overrides, workdir), jax_cache)
  return overrides, workdir, run


def test_first_run_on_empty_data_folder_builds_once(reference):
  overrides, workdir, run = reference
  built = pathlib.Path(overrides['dataset.data_dir'], 'synthetic_aac', 'tiny')
  assert [p.name for p in built.iterdir()] == ['1.0.0'], list(built.iterdir())
  assert 'Building synthetic_aac/tiny' in run.output(0, last=10**6)
  assert 'Building' not in run.output(1, last=10**6)
  assert 'Waiting up to' in run.output(1, last=10**6)
  for name in ('config.json', 'vocab.txt', 'feature_stats.json'):
    assert (workdir / name).exists(), name
  assert not list(workdir.glob('.*.tmp')), list(workdir.glob('.*.tmp'))


def test_two_by_two_losses_equal_one_by_four(reference, tmp_path, jax_cache):
  overrides, workdir, _ = reference
  _train(_flags(overrides, tmp_path), jax_cache, num_processes=1, devices=4)
  two, one = multiprocess.losses(workdir), multiprocess.losses(tmp_path)
  assert sorted(two) == sorted(one) == list(range(1, END + 1))
  np.testing.assert_allclose([two[s] for s in two], [one[s] for s in two], rtol=1e-5)
  # Each process captioned its slice of the validation clips: the same captions as one process.
  name = f'predictions/validation_step{END}.json'
  two_rows, one_rows = (json.loads((w / name).read_text()) for w in (workdir, tmp_path))
  assert [r['prediction'] for r in two_rows] == [r['prediction'] for r in one_rows]


def test_evaluation_writes_every_clip_exactly_once(reference):
  overrides, workdir, _ = reference
  rows = json.loads((workdir / 'predictions' / f'validation_step{END}.json').read_text())
  config = _config(overrides)
  split = sources.read_eval_split(
    sources.open_source(config.dataset, config.dataset.validation_split),
    config.dataset.validation_split,
    int(config.eval.max_examples),
  )
  assert [r['id'] for r in rows] == split.ids and len(set(split.ids)) == len(split.ids) == 16
  assert [r['references'] for r in rows] == split.references


def test_sigterm_to_one_process_saves_both_and_resumes_bit_identically(
  reference, tmp_path, jax_cache
):
  overrides, ref_workdir, _ = reference
  run = multiprocess.start_run(
    'aac_jax.main', _flags(overrides, tmp_path, **{'train.stop_at_step': 100}), 2, 2, jax_cache
  )
  run.wait_for(0, r'\[1\] train/', timeout=TIMEOUT)
  run.signal(1)
  assert run.wait(TIMEOUT) == [0, 0], run.output()
  match = re.search(r'preempted: saved step (\d+) \(SIGTERM\)', run.output(0, last=10**6))
  assert match, run.output()
  step = int(match.group(1))
  assert step < END, f'preempted only at step {step}: nothing left to compare'
  saved = sorted(int(p.name) for p in checkpointing.checkpoint_dir(tmp_path).iterdir())
  assert saved[-1] == step

  _train(_flags(overrides, tmp_path), jax_cache)
  log = (tmp_path / 'train.log').read_text()
  assert f'resumed from {checkpointing.checkpoint_dir(tmp_path)} at step {step}' in log
  reference_losses, losses = multiprocess.losses(ref_workdir), multiprocess.losses(tmp_path)
  after = list(range(step + 1, END + 1))
  np.testing.assert_array_equal([losses[s] for s in after], [reference_losses[s] for s in after])


def test_two_process_checkpoint_resumes_on_one_process_and_on_four(reference, tmp_path):
  overrides, ref_workdir, _ = reference
  workdir = tmp_path / 'moved'
  shutil.copytree(ref_workdir, workdir)
  for path in checkpointing.checkpoint_dir(workdir).iterdir():
    if path.name.isdigit() and int(path.name) > 4:
      shutil.rmtree(path)
  for path in workdir.glob('**/events.out.tfevents.*'):
    path.unlink()
  # The next global batch, read by 1 and by 4 processes from the 2-process position.
  state = json.loads(
    (checkpointing.checkpoint_dir(workdir) / '4' / 'data_iter' / 'metadata').read_text()
  )
  config = _config(overrides)
  tokenizer = Tokenizer.load(workdir / 'vocab.txt')
  batch_size = config.train.batch_size
  assert state == {'next_position': 4 * batch_size, 'global_batch_size': batch_size}
  nexts = {}
  for count in (1, 4):
    parts = []
    for p in range(count):
      it = pipeline.make_train_iterator(config.dataset, tokenizer, batch_size, p, count)
      it.set_state(state)
      parts.append(next(it))
    nexts[count] = {k: np.concatenate([b[k] for b in parts]) for k in parts[0]}
  for key in nexts[1]:
    np.testing.assert_array_equal(nexts[1][key], nexts[4][key], err_msg=key)

  # And this process (8 devices) trains on from there with the 2 x 2 losses.
  result = trainer.train_and_evaluate(_config(overrides), str(workdir))
  assert result.step == END
  reference_losses, losses = multiprocess.losses(ref_workdir), multiprocess.losses(workdir)
  after = list(range(5, END + 1))
  assert sorted(losses) == after
  np.testing.assert_allclose(
    [losses[s] for s in after], [reference_losses[s] for s in after], rtol=1e-5
  )


def test_fsdp_across_both_processes_trains_like_one_process_and_resumes_on_one(
  reference, tmp_path, jax_cache
):
  # data 1 x fsdp 4: every parameter split over the 4 devices of both
  # processes, each process writing its own shards of the checkpoints.
  overrides, ref_workdir, _ = reference
  fsdp = {'mesh.data': 1, 'mesh.fsdp': 4, 'train.stop_at_step': 4}
  _train(_flags(overrides, tmp_path, **fsdp), jax_cache)
  reference_losses, losses = multiprocess.losses(ref_workdir), multiprocess.losses(tmp_path)
  assert sorted(losses) == [1, 2, 3, 4]
  np.testing.assert_allclose(
    [losses[s] for s in losses], [reference_losses[s] for s in losses], rtol=1e-5
  )
  # The 2-process fsdp checkpoint read by this one process (8 devices, data
  # parallel) trains on with the reference's losses.
  for path in tmp_path.glob('**/events.out.tfevents.*'):
    path.unlink()
  result = trainer.train_and_evaluate(
    _config(overrides, **{'train.stop_at_step': 6}), str(tmp_path)
  )
  assert result.step == 6
  losses = multiprocess.losses(tmp_path)
  assert sorted(losses) == [5, 6]
  np.testing.assert_allclose(
    [losses[5], losses[6]], [reference_losses[5], reference_losses[6]], rtol=1e-5
  )


def test_scst_runs_two_steps_on_two_processes(reference, tmp_path, jax_cache):
  overrides, ref_workdir, _ = reference
  flags = _flags(
    {
      'dataset.data_dir': overrides['dataset.data_dir'],
      'dataset.max_audio_seconds': 2.0,
      'train.num_steps': 2,
      'train.log_every': 1,
      'eval.test_at_end': False,
      'scst.eval_initial': False,
    },
    tmp_path,
    config=f'configs/synthetic_demo_scst.py:runlocal,init_from={ref_workdir}',
  )
  run = multiprocess.start_run('aac_jax.scst.main', flags, 2, 2, jax_cache)
  assert run.wait(TIMEOUT) == [0, 0], run.output()
  rewards = multiprocess.scalars(tmp_path, 'train/reward_mean')
  assert sorted(rewards) == [1, 2] and all(np.isfinite(list(rewards.values())))
  for tag in ('train/sample_vocab_size', 'train/sample_mean_length', 'train/time_step_s'):
    assert sorted(multiprocess.scalars(tmp_path, tag)) == [1, 2], tag
  saved = sorted(int(p.name) for p in checkpointing.checkpoint_dir(tmp_path).iterdir())
  assert saved[-1] == 2


def test_process_stopped_past_gloos_30_s_at_start_up_still_trains(reference, tmp_path, jax_cache):
  # XLA's first collective (gloo) gives up on a peer more than a fixed 30 s late; the
  # processes meet in the key-value store first, under AAC_JAX_SYNC_TIMEOUT_S.
  overrides, _, _ = reference
  flags = _flags(overrides, tmp_path, **{'train.stop_at_step': 1, 'train.checkpoint_every': 1})
  run = multiprocess.start_run('aac_jax.main', flags, 2, 2, jax_cache)
  run.wait_for(1, r'Waiting up to \d+ s for process 0 to prepare', timeout=TIMEOUT)
  run.signal(1, signal.SIGSTOP)
  try:
    run.wait_for(0, r'Waiting up to \d+ s for every process to start Training', timeout=TIMEOUT)
    time.sleep(35)  # Process 0 waits past gloo's 30 s.
  finally:
    run.signal(1, signal.SIGCONT)
  assert run.wait(TIMEOUT) == [0, 0], run.output()
  assert sorted(multiprocess.losses(tmp_path)) == [1]


_WAIT_CHILD = """
import sys, time
import jax
from aac_jax import multihost
multihost.initialize(sys.argv[1], 2, int(sys.argv[2]))
if jax.process_index() == 1:
  time.sleep(6)
try:
  multihost.wait_for_all('start training', timeout_s=2)
  print('all arrived', flush=True)
except multihost.ProcessSyncError as error:
  print(f'error: {error}', flush=True)
"""


def test_process_later_than_the_sync_timeout_is_named(jax_cache):
  address = f'127.0.0.1:{multiprocess.free_port()}'
  procs = [
    subprocess.Popen(
      [sys.executable, '-c', _WAIT_CHILD, address, str(i)],
      env=multiprocess.child_env(1, jax_cache),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  outputs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outputs
  expected = (
    'error: process 0 waited 2 s for every process to start training (process 1 did not '
    "arrive); look at the late process's log, or allow more time with AAC_JAX_SYNC_TIMEOUT_S="
  )
  assert expected in outputs[0], outputs[0]
  assert 'error: process 1 waited 2 s' in outputs[1], outputs[1]  # The barrier failed: no hang.


_SYNC_CHILD = """
import sys, time
import jax
import numpy as np
from aac_jax import multihost
from aac_jax.train import parallel
multihost.initialize(sys.argv[1], 2, int(sys.argv[2]))
me = jax.process_index()
print('persistent cache:', jax.config.jax_enable_compilation_cache, flush=True)
print('gathered:', parallel.all_processes(np.array([10.0 * me, 1.0])).tolist(), flush=True)
print('mean:', parallel.mean_over_processes({'b': 2.0 * me, 'a': float(me)}), flush=True)

def fails_on_0():
  if jax.process_index() == 0:
    raise ValueError('disk full')
  return 'read'

def slow_on_0():
  if jax.process_index() == 0:
    time.sleep(8)
  return 'late'

for what, fn, timeout in (('write files', fails_on_0, 120), ('build', slow_on_0, 2)):
  try:
    print('result:', multihost.process_0_first(what, fn, timeout_s=timeout), flush=True)
  except Exception as error:
    print(f'error: {type(error).__name__}: {error}', flush=True)
"""


def test_process_0_failure_and_timeout_reach_the_other_process(jax_cache):
  address = f'127.0.0.1:{multiprocess.free_port()}'
  env = multiprocess.child_env(1, jax_cache)
  procs = [
    subprocess.Popen(
      [sys.executable, '-c', _SYNC_CHILD, address, str(i)],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  outputs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outputs
  first, second = outputs
  for output in outputs:  # Host metrics over both processes, the same on each.
    assert 'persistent cache: False' in output, output  # No start-up skew from cache hits.
    assert 'gathered: [[0.0, 1.0], [10.0, 1.0]]' in output, output
    assert "mean: {'a': 0.5, 'b': 1.0}" in output, output
  assert 'error: ValueError: disk full' in first and 'result: late' in first
  assert (
    'error: ProcessSyncError: process 0 could not write files: failed with ValueError: disk full'
    in second
  ), second
  assert 'error: ProcessSyncError: process 1 waited 2 s for process 0 to build' in second, second


_CONFIG_CHILD = """
import sys
import jax
from aac_jax import config_validation, multihost
from configs import synthetic_demo
multihost.initialize(sys.argv[1], 2, int(sys.argv[2]))
config = synthetic_demo.get_config('runlocal')
config.train.batch_size = int(sys.argv[3])
try:
  config_validation.validate(config, 'train', jax.device_count())
  print('valid', flush=True)
except config_validation.ConfigError as error:
  print(f'error: {error}', flush=True)
"""


def test_processes_started_with_different_configs_stop_before_training(jax_cache):
  address = f'127.0.0.1:{multiprocess.free_port()}'
  procs = [
    subprocess.Popen(
      [sys.executable, '-c', _CONFIG_CHILD, address, str(i), str(batch)],
      cwd=multiprocess.REPO,  # Where `configs` imports from.
      env=multiprocess.child_env(2, jax_cache),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i, batch in enumerate((8, 16))
  ]
  outputs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outputs
  for me, (mine, theirs, other) in enumerate([(8, 16, 1), (16, 8, 0)]):
    expected = (
      f'error: process {me} was started with another config than the others: '
      f'train.batch_size: {mine} here, {theirs} on process {other}. Start every process with '
      'the same flags.'
    )
    assert expected in outputs[me], outputs[me]
