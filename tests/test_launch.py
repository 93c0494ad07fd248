"""Launching several processes: the flags and environment, the launch scripts' commands.

The scripts run with `--dry-run` and print the command they would submit;
the tests read it back with `shlex` and check that the training command in
it uses flags that `python -m aac_jax.main` defines.
"""

import os
import pathlib
import shlex
import subprocess
import sys

import pytest
from absl import flags
from absl.testing import flagsaver

import aac_jax.main  # noqa: F401 - defines the command-line flags checked here.
from aac_jax import launch_flags, multihost

REPO = pathlib.Path(__file__).resolve().parents[1]


def _script(name: str, *args: str, **env: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    ['bash', str(REPO / 'launch' / name), *args],
    env={'PATH': os.environ['PATH'], **env},
    capture_output=True,
    text=True,
    check=False,
  )


def _check_training_command(words: list[str], module: str) -> dict[str, str]:
  """`python -m module --flag=value ...`: every flag is defined; returns them."""
  at = words.index('-m')
  assert words[at + 1] == module, words
  values = {}
  for word in words[at + 2 :]:
    name, _, value = word.removeprefix('--').partition('=')
    assert word.startswith('--') and name.split('.')[0] in flags.FLAGS, word
    values[name] = value
  return values


@pytest.mark.parametrize(
  ('action', 'module'), [('train', 'aac_jax.main'), ('scst', 'aac_jax.scst.main')]
)
def test_slurm_dry_run_prints_the_sbatch_command(action, module):
  done = _script(
    'slurm.sh',
    action,
    '--dry-run',
    WORKDIR='/shared/runs/a b',
    DATA_DIR='/shared/tfds',
    NODES='4',
    GPUS_PER_NODE='8',
  )
  assert done.returncode == 0, done.stderr
  words = shlex.split(done.stdout)
  assert words[0] == 'sbatch'
  for expected in ('--nodes=4', '--ntasks-per-node=1', '--gpus-per-node=8', '--signal=TERM@120'):
    assert expected in words, words
  wrap = [w for w in words if w.startswith('--wrap=')]
  inner = shlex.split(wrap[0].removeprefix('--wrap='))
  assert inner[0] == 'srun'
  values = _check_training_command(inner, module)
  assert values['multihost'] == '' and values['workdir'] == '/shared/runs/a b'
  assert values['config.dataset.data_dir'] == '/shared/tfds'


def test_slurm_refuses_unknown_actions_and_a_missing_workdir():
  done = _script('slurm.sh', 'dance', '--dry-run', WORKDIR='/w')
  assert done.returncode == 2 and "unknown action 'dance'" in done.stderr
  done = _script('slurm.sh', '--dry-run')
  assert done.returncode != 0 and 'set WORKDIR' in done.stderr


@pytest.mark.parametrize(
  ('action', 'module'), [('train', 'aac_jax.main'), ('scst', 'aac_jax.scst.main')]
)
def test_tpu_pod_dry_run_prints_the_worker_command(action, module):
  env = {'TPU_NAME': 'aac-v4-32', 'ZONE': 'us-central2-b', 'WORKDIR': 'gs://b/run'}
  done = _script('tpu_pod.sh', '--dry-run', action, DATA_DIR='gs://b/tfds', **env)
  assert done.returncode == 0, done.stderr
  words = shlex.split(done.stdout)
  assert words[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh']
  assert 'aac-v4-32' in words and '--worker=all' in words and '--zone=us-central2-b' in words
  command = [w for w in words if w.startswith('--command=')][0].removeprefix('--command=')
  inner = shlex.split(command.split('&&', 1)[1].split('>', 1)[0])
  values = _check_training_command(inner, module)
  assert values['workdir'] == 'gs://b/run' and values['config.dataset.data_dir'] == 'gs://b/tfds'
  assert 'multihost' in values
  setup = _script('tpu_pod.sh', 'setup', '--dry-run', **env)
  assert setup.returncode == 0 and 'scp' in setup.stdout
  assert 'pip install' in ' '.join(shlex.split(setup.stdout))


@pytest.fixture
def parsed_flags(monkeypatch):
  for name in launch_flags.ENV.values():
    monkeypatch.delenv(name, raising=False)
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  with flagsaver.flagsaver():
    yield


def test_flags_then_environment_decide_the_launch(parsed_flags, monkeypatch):
  assert launch_flags.launch_values() == (
    False,
    {'coordinator_address': None, 'num_processes': None, 'process_id': None},
  )
  flags.FLAGS.multihost = True
  assert launch_flags.launch_values()[0]
  flags.FLAGS.multihost = False
  monkeypatch.setenv('AAC_COORDINATOR_ADDRESS', '10.0.0.2:1234')
  monkeypatch.setenv('AAC_NUM_PROCESSES', '4')
  monkeypatch.setenv('AAC_PROCESS_ID', '3')
  flags.FLAGS.process_id = 1  # A flag wins over its variable.
  assert launch_flags.launch_values() == (
    True,
    {'coordinator_address': '10.0.0.2:1234', 'num_processes': 4, 'process_id': 1},
  )
  monkeypatch.setenv('AAC_NUM_PROCESSES', 'four')
  with pytest.raises(multihost.LaunchError, match="AAC_NUM_PROCESSES='four'"):
    launch_flags.launch_values()


@pytest.mark.parametrize(
  ('kwargs', 'message'),
  [
    ({'coordinator_address': 'nohost'}, 'use HOST:PORT'),
    ({'coordinator_address': 'h:1', 'num_processes': 0, 'process_id': 0}, 'must be >= 1'),
    ({'coordinator_address': 'h:1', 'num_processes': 2, 'process_id': 2}, r'in \[0, 2\)'),
  ],
)
def test_bad_launch_values_fail_before_connecting(kwargs, message):
  with pytest.raises(multihost.LaunchError, match=message):
    multihost.initialize(**kwargs)


def test_one_process_runs_first_run_work_directly(monkeypatch):
  assert multihost.process_0_first('count', lambda: 42) == 42
  assert multihost.sync_timeout_s() == multihost.DEFAULT_TIMEOUT_S
  monkeypatch.setenv(multihost.TIMEOUT_ENV, '90')
  assert multihost.sync_timeout_s() == 90.0
  monkeypatch.setenv(multihost.TIMEOUT_ENV, 'soon')
  with pytest.raises(multihost.LaunchError, match='AAC_JAX_SYNC_TIMEOUT_S'):
    multihost.sync_timeout_s()


@pytest.mark.parametrize(
  ('launch', 'message'),
  [
    (['--process_id=5', '--num_processes=2'], 'process id 5: must be in [0, 2)'),
    (['--process_id=two', '--num_processes=2'], 'flag --process_id=two: invalid literal for int()'),
  ],
)
def test_bad_process_id_on_the_command_line_is_one_line_and_exit_2(tmp_path, launch, message):
  command = [sys.executable, '-m', 'aac_jax.main', '--config=configs/synthetic_demo.py:runlocal']
  command += [f'--workdir={tmp_path / "run"}', '--coordinator_address=127.0.0.1:1', *launch]
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert done.returncode == 2, done.stderr[-3000:]
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f'error: {message}'), done.stderr
  assert not (tmp_path / 'run').exists()


def test_process_id_without_the_other_values_says_what_to_give(tmp_path):
  command = [sys.executable, '-m', 'aac_jax.main', '--config=configs/synthetic_demo.py:runlocal']
  command += [f'--workdir={tmp_path / "run"}', '--process_id=1']
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert done.returncode == 2, done.stderr[-3000:]
  assert done.stderr.strip().splitlines() == [
    'error: coordinator_address should be defined. Give --coordinator_address, --num_processes '
    'and --process_id together, or --multihost where JAX discovers the cluster (TPU VMs, SLURM).'
  ]


@pytest.mark.parametrize('process_id', [0, 1], ids=['peer_never_starts', 'no_coordinator'])
def test_processes_that_never_connect_are_one_line_and_exit_3(tmp_path, process_id):
  command = [sys.executable, '-m', 'aac_jax.main', '--config=configs/synthetic_demo.py:runlocal']
  command += [f'--workdir={tmp_path / "run"}', '--coordinator_address=127.0.0.1:29877']
  command += ['--num_processes=2', f'--process_id={process_id}', '--connect_timeout_s=3']
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert done.returncode == multihost.CONNECT_ERROR_STATUS, done.stderr[-3000:]
  said = f'Process {process_id} of 2: connecting to 127.0.0.1:29877, waiting up to 3 s'
  assert said in done.stderr  # At once, before the wait.
  lines = [line for line in done.stderr.splitlines() if line.startswith('error: ')]
  assert lines == [
    f'error: process {process_id} of 2: not every process connected to 127.0.0.1:29877 within 3 '
    's (process 0 not started or not reachable at that address, or a process of the run not '
    'started); start every process, check the address and port, or allow more time with '
    '--connect_timeout_s'
  ], done.stderr[-3000:]
  assert 'Check failure' not in done.stderr and not (tmp_path / 'run').exists()
