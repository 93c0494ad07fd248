"""Faults a real user meets, survived: NaN, corrupt checkpoints, a full disk, bad configs.

Real processes and real files: `python -m aac_jax.main` subprocesses for
what the console shows and the exit status, real orbax checkpoints damaged
on disk, a real full tmpfs.
"""

import logging
import os
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import toy_dataset
from absl import logging as absl_logging
from etils import epath

from aac_jax import config_validation, files, inference
from aac_jax.train import checkpointing, logs, trainer
from configs import base

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def toy(tmp_path_factory, jax_cache):
  """`(config, cache_dir)`: the runlocal demo on `toy_aac`, a shared compilation cache."""
  config = toy_dataset.demo_config(str(tmp_path_factory.mktemp('tfds')))
  config.train.num_steps = 100
  config.train.log_every = 1
  config.train.checkpoint_every = 2
  config.train.eval_every = 1000
  config.eval.test_at_end = False
  return config, jax_cache


def _overrides(config) -> list[str]:
  keys = ('name', 'builder_config', 'data_dir', 'max_audio_seconds')
  flags = [f'--config.dataset.{k}={config.dataset[k]}' for k in keys]
  for key in ('num_steps', 'log_every', 'checkpoint_every', 'eval_every'):
    flags.append(f'--config.train.{key}={config.train[key]}')
  return [*flags, '--config.eval.test_at_end=False']


def _main(
  cache, workdir, flags, timeout=600, config='configs/synthetic_demo.py:runlocal', module='main'
) -> subprocess.CompletedProcess:
  env = dict(
    os.environ,
    XLA_FLAGS='--xla_force_host_platform_device_count=8',
    JAX_PLATFORMS='cpu',
    JAX_COMPILATION_CACHE_DIR=str(cache),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
  )
  command = [sys.executable, '-m', f'aac_jax.{module}', f'--config={config}']
  return subprocess.run(
    [*command, f'--workdir={workdir}', *flags],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def _saved_steps(workdir) -> list[int]:
  path = checkpointing.checkpoint_dir(workdir)
  return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit())


def _own_loss(config, workdir, step) -> float:
  """The loss of a saved checkpoint's parameters on one training batch, as the trainer checks it."""
  from aac_jax import inference
  from aac_jax.data import pipeline
  from aac_jax.train import parallel

  params = inference.load_model(workdir, step).params
  exp = trainer.start_experiment(config, str(workdir))
  params = jax.device_put(params, exp.state_sharding.params)
  batch = next(pipeline.make_train_iterator(config.dataset, exp.tokenizer, config.train.batch_size))
  batch = parallel.shard_batch(batch, exp.mesh)
  return float(exp.own_loss(params, {k: batch[k] for k in ('audio', 'audio_paddings', 'targets')}))


def test_nan_mid_run_keeps_only_checkpoints_with_a_finite_loss(toy, tmp_path):
  config, cache = toy
  # lr 1e30 after warm-up: step 1 runs at lr 0 (finite), step 2 sends the
  # parameters to ~1e29, whose own loss is not finite.
  flags = [*_overrides(config), '--config.optim.lr=1e30', '--config.optim.warmup_steps=4']
  flags += ['--config.optim.clip_norm=0', '--config.train.checkpoint_every=1']
  proc = _main(cache, tmp_path, flags)
  output = proc.stdout + proc.stderr
  assert proc.returncode == 1, output[-3000:]
  assert re.search(r'non-finite loss=\S+ of the step-2 parameters \(not saved\)', output), output
  assert f'the last checkpoint kept is step 1 in {tmp_path}' in output
  assert _saved_steps(tmp_path) == [1]
  assert np.isfinite(_own_loss(config, tmp_path, 1))
  # Resuming with a sane learning rate, as the message advises, trains on.
  resumed = config.copy_and_resolve_references()  # Same optimizer (no clipping), lower lr.
  resumed.optim.lr, resumed.optim.warmup_steps, resumed.optim.clip_norm = 1e-3, 4, 0.0
  resumed.train.stop_at_step, resumed.train.checkpoint_every = 3, 1
  result = trainer.train_and_evaluate(resumed, str(tmp_path))
  assert (result.step, result.reason) == (3, 'stopped')
  assert np.isfinite(_own_loss(config, tmp_path, 3))


def test_nan_before_any_save_says_there_is_no_checkpoint(toy, tmp_path, caplog):
  config, _ = toy
  config = config.copy_and_resolve_references()
  config.optim.lr, config.optim.warmup_steps, config.optim.clip_norm = 1e30, 0, 0.0
  caplog.set_level(logging.INFO)
  assert trainer.run(config, str(tmp_path)) == 1
  assert 'no checkpoint was saved, so a rerun starts from the beginning' in caplog.text
  assert not checkpointing.checkpoint_dir(tmp_path).exists() or _saved_steps(tmp_path) == []


def _truncate_array_file(step_dir) -> None:
  """Cuts the array data files (OCDBT `d/` folders) of the state to half their size."""
  data = [p for p in pathlib.Path(step_dir, 'state').rglob('*') if p.parent.name == 'd']
  assert data, 'no array data files found'
  for path in data:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _delete_metadata(step_dir: pathlib.Path) -> None:
  (step_dir / 'state' / '_METADATA').unlink()


def _delete_iterator_file(step_dir: pathlib.Path) -> None:
  for path in (step_dir / 'data_iter').iterdir():
    path.unlink()


@pytest.fixture(scope='module')
def run_to_four(toy, tmp_path_factory):
  """A workdir with checkpoints at steps 2 and 4."""
  config, _ = toy
  workdir = tmp_path_factory.mktemp('four')
  config = config.copy_and_resolve_references()
  config.train.stop_at_step = 4
  trainer.train_and_evaluate(config, str(workdir))
  assert _saved_steps(workdir) == [2, 4]
  return workdir


@pytest.mark.parametrize(
  'damage',
  [_truncate_array_file, _delete_metadata, _delete_iterator_file],
  ids=lambda f: f.__name__,
)
def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(
  toy, run_to_four, tmp_path, caplog, damage
):
  config, _ = toy
  workdir = tmp_path / 'run'
  shutil.copytree(run_to_four, workdir)
  damage(checkpointing.checkpoint_dir(workdir) / '4')
  caplog.set_level(logging.INFO)
  config = config.copy_and_resolve_references()
  config.train.stop_at_step = 5
  result = trainer.train_and_evaluate(config, str(workdir))
  assert (result.step, result.reason) == (5, 'stopped')
  assert re.search(r'Checkpoint step 4 in \S+ is unreadable, trying an older one: \w+', caplog.text)
  assert f'resumed from {checkpointing.checkpoint_dir(workdir)} at step 2' in caplog.text
  # Kept for inspection, out of the way of the new step-4 save.
  assert (workdir / 'checkpoints_unreadable' / '4').is_dir()
  assert _saved_steps(workdir) == [2, 4, 5]


def _orbax_params(workdir, step, target):
  """The parameters of `step` as orbax alone reads them (no checksums)."""
  options = ocp.CheckpointManagerOptions(read_only=True)
  with ocp.CheckpointManager(checkpointing.checkpoint_dir(workdir), options=options) as manager:
    restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding), target)
    item = ocp.args.PyTreeRestore(
      item={'params': target}, restore_args={'params': restore_args}, partial_restore=True
    )
    return manager.restore(step, args=ocp.args.Composite(state=item)).state['params']


def _flip_array_bytes(workdir, step, target, expected) -> str:
  """Inverts 64 bytes of a data file of `step` where orbax then reads wrong values silently.

  Tries offsets through the step's array data files until orbax restores
  without an error and a parameter differs from `expected` (as the field
  report found: one parameter at 8e37); returns which one.
  """
  step_dir = pathlib.Path(checkpointing.checkpoint_dir(workdir)) / str(step)
  for path in sorted(p for p in (step_dir / 'state').rglob('*') if p.parent.name == 'd'):
    original = path.read_bytes()
    for at in range(len(original) // 17, len(original) - 64, len(original) // 17):
      raw = bytearray(original)
      raw[at : at + 64] = bytes(b ^ 0xFF for b in raw[at : at + 64])
      path.write_bytes(bytes(raw))
      try:
        got = _orbax_params(workdir, step, target)
      except Exception:  # noqa: BLE001 - orbax noticed this one; try another offset.
        continue
      diff = jax.tree_util.tree_flatten_with_path(
        jax.tree.map(lambda a, b: bool((a != b).any()), got, expected)
      )[0]
      changed = [jax.tree_util.keystr(k) for k, v in diff if v]
      if changed:
        return changed[0]
    path.write_bytes(original)
  raise AssertionError('no flip that orbax reads silently')


def test_flipped_bytes_in_a_checkpoint_are_refused_and_an_older_one_used(
  toy, run_to_four, tmp_path, caplog
):
  config, _ = toy
  workdir = tmp_path / 'run'
  shutil.copytree(run_to_four, workdir)
  loaded = inference.load_model(run_to_four, 4)
  target = inference.abstract_params(loaded.model, int(config.frontend.n_mels))
  changed = _flip_array_bytes(workdir, 4, target, loaded.params)
  caplog.set_level(logging.INFO)
  _, step, kind = checkpointing.restore_params(workdir, config.train, target)
  assert (step, kind) == (2, 'older')  # Captioning, export, init_from and the test pass.
  reason = r'ChecksumMismatchError: checkpoint step 4 params: \d+ of \d+ arrays differ'
  assert re.search(
    rf'Checkpoint step 4 in \S+ is unreadable, trying an older one: {reason}', caplog.text
  )
  assert changed in caplog.text or 'first: ' in caplog.text
  config = config.copy_and_resolve_references()
  config.train.stop_at_step = 5
  result = trainer.train_and_evaluate(config, str(workdir))  # Resuming sets it aside.
  assert (result.step, result.reason) == (5, 'stopped')
  assert f'resumed from {checkpointing.checkpoint_dir(workdir)} at step 2' in caplog.text
  assert (workdir / 'checkpoints_unreadable' / '4').is_dir()


def test_no_readable_checkpoint_is_one_message_and_nothing_is_lost(toy, run_to_four, tmp_path):
  config, _ = toy
  workdir = tmp_path / 'run'
  shutil.copytree(run_to_four, workdir)
  for step in (2, 4):
    _delete_metadata(checkpointing.checkpoint_dir(workdir) / str(step))
  with pytest.raises(checkpointing.CheckpointUnreadableError, match='no readable checkpoint') as e:
    trainer.train_and_evaluate(config, str(workdir))
  assert 'step 4: ' in str(e.value) and 'step 2: ' in str(e.value) and '\n' not in str(e.value)
  assert _saved_steps(workdir) == [2, 4]  # Nothing moved or deleted.


@pytest.fixture
def small_tmpfs(tmp_path):
  """A mounted 64 KiB tmpfs (needs root, as CI and this machine have)."""
  mount = tmp_path / 'full'
  mount.mkdir()
  done = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', str(mount)])
  if done.returncode:
    pytest.skip('cannot mount a tmpfs here (not root)')
  try:
    yield mount
  finally:
    subprocess.run(['umount', str(mount)], check=True)


def _fill(mount: pathlib.Path) -> None:
  """Fills the file system of `mount` with a file `filler`."""
  with open(mount / 'filler', 'ab') as f:
    try:
      f.write(b'\0' * (1 << 20))
      f.flush()
    except OSError:
      pass


@pytest.fixture
def full_tmpfs(small_tmpfs):
  """`small_tmpfs`, filled up."""
  _fill(small_tmpfs)
  return small_tmpfs


def test_write_on_a_full_disk_names_the_file_and_keeps_the_old_one(full_tmpfs):
  with pytest.raises(files.RunFileError) as e:
    files.write_text(full_tmpfs / 'predictions.json', 'x' * 100_000)
  assert str(e.value) == f'cannot write {full_tmpfs / "predictions.json"}: No space left on device'
  assert sorted(p.name for p in full_tmpfs.iterdir()) == ['filler']  # No partial file.


def test_full_disk_during_evaluation_stops_with_one_line(toy, tmp_path, full_tmpfs, caplog):
  config, _ = toy
  workdir = tmp_path / 'run'
  (workdir / 'predictions').parent.mkdir()
  (workdir / 'predictions').symlink_to(full_tmpfs)
  config = config.copy_and_resolve_references()
  config.train.stop_at_step, config.train.eval_every = 2, 2
  caplog.set_level(logging.INFO)
  assert trainer.run(config, str(workdir)) == 1
  expected = f'cannot write {workdir / "predictions" / "validation_step2.json"}: No space left'
  assert expected in caplog.text
  assert not [p for p in full_tmpfs.iterdir() if p.name != 'filler']


def test_full_disk_from_the_start_is_one_line_before_any_work(toy, full_tmpfs):
  config, cache = toy
  proc = _main(cache, full_tmpfs / 'run', _overrides(config), timeout=120)
  assert proc.returncode == 1, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr[-3000:]
  assert lines[0].endswith(
    f'] cannot write {full_tmpfs / "run" / "train.log"}: No space left on device'
  )


def test_run_log_on_a_disk_that_fills_warns_once_and_closes(small_tmpfs, caplog, capfd):
  caplog.set_level(logging.INFO)
  with logs.log_file(epath.Path(small_tmpfs / 'run')):
    absl_logging.info('before the disk filled')
    _fill(small_tmpfs)
    for i in range(100):  # More than the free part of the file's last page.
      absl_logging.info('record %d %s', i, 'x' * 100)
  assert 'before the disk filled' in (small_tmpfs / 'run' / 'train.log').read_text()
  path = small_tmpfs / 'run' / 'train.log'
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert warnings == [
    f'cannot write {path}: No space left on device; the rest of this run logs to the console only'
  ]
  assert 'Logging error' not in capfd.readouterr().err


def test_full_disk_during_an_async_save_stops_with_one_line(toy, tmp_path, full_tmpfs):
  config, cache = toy
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'checkpoints').symlink_to(full_tmpfs)
  flags = [*_overrides(config), '--config.train.async_checkpointing=True']
  flags += ['--config.train.eval_every=4', '--config.train.stop_at_step=8']
  proc = _main(cache, workdir, flags)
  assert proc.returncode == 1, proc.stderr[-3000:]
  errors = re.findall(r'^E\d{4} .*', proc.stderr, re.MULTILINE)
  assert len(errors) == 1, proc.stderr[-3000:]
  assert errors[0].endswith(
    f'Training stopped: cannot write checkpoint step 2 in {workdir / "checkpoints"}: '
    'No space left on device'
  )
  # Orbax's threads log the failure with tracebacks; only the line above reaches the console.
  assert proc.stderr.count('No space left on device') == 1, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert sorted(p.name for p in full_tmpfs.iterdir()) == ['filler']  # No *.orbax-checkpoint-tmp.
  assert not (workdir / 'predictions').exists()  # Stopped before evaluating at step 4.


BAD_VALUES = {
  'dataset.max_audio_seconds': (0.0, 'dataset.max_audio_seconds=0.0: must be > 0'),
  'optim.lr': (float('nan'), 'optim.lr=nan: must be > 0'),
  'train.batch_size': (12, 'train.batch_size=12: must be divisible by the 8 batch shards'),
  'mesh.fsdp': (3, 'mesh.fsdp=3: data x fsdp x tensor = -1 x 3 x 1 cannot cover the 8 devices'),
  'dataset.name': ('clothoo', "dataset.name='clothoo': unknown dataset; use one of"),
  'decode.max_len': (99, 'decode.max_len=99: must be in [1, model.max_decode_len='),
  'eval.decode.method': ('beems', "eval.decode.method='beems': must be one of"),
}


@pytest.mark.parametrize('field', sorted(BAD_VALUES))
def test_each_bad_config_value_has_its_line(field):
  config = base.get_base_config()
  value, message = BAD_VALUES[field]
  *sections, name = field.split('.')
  node = config
  for section in sections:
    node = node[section]
  node[name] = value
  lines = config_validation.problems(config, 'train', 8)
  assert len(lines) == 1 and lines[0].startswith(message), lines


def test_bad_config_values_fail_before_any_work(toy, tmp_path):
  config, cache = toy
  flags = [*_overrides(config), '--config.dataset.max_audio_seconds=0', '--config.optim.lr=nan']
  flags += ['--config.train.batch_size=12', '--config.dataset.name=clothoo']
  flags += ['--config.mesh.fsdp=3']
  proc = _main(cache, tmp_path / 'run', flags, timeout=120)
  assert proc.returncode == 2, proc.stderr[-3000:]
  fields = ('dataset.max_audio_seconds', 'optim.lr', 'train.batch_size', 'dataset.name')
  for field in (*fields, 'mesh.fsdp'):
    assert proc.stderr.count(BAD_VALUES[field][1]) == 1, proc.stderr
  assert 'Traceback' not in proc.stderr
  assert not (tmp_path / 'run').exists()  # Nothing read, built or written.


MISTYPED = {
  'field': (
    ['--config.optim.lrr=1e-3'],
    """--config.optim.lrr: no config field 'lrr'. Did you mean "lr" instead of "lrr"?""",
  ),
  'section': (
    ['--config.optm.lr=1'],
    """--config.optm.lr: no config field 'optm'. Did you mean "optim" instead of "optm"?""",
  ),
  'value': (
    ['--config.optim.lr=abc'],
    "flag --config.optim.lr=abc: could not convert string to float: 'abc'",
  ),
  'variant': (
    ['--config=configs/synthetic_demo.py:runlokal'],
    'flag --config=configs/synthetic_demo.py:runlokal: ValueError: unknown config variant '
    "'runlokal' in 'runlokal'; accepted: ['data', 'runlocal', 'short'] (example: --config "
    'configs/clotho.py:model=small)',
  ),
}


@pytest.mark.parametrize('what', sorted(MISTYPED))
def test_a_mistyped_config_flag_is_one_line_and_exit_2(tmp_path, jax_cache, what):
  flags, message = MISTYPED[what]
  proc = _main(jax_cache, tmp_path / 'run', flags, timeout=120)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert proc.stderr.strip().splitlines() == [f'error: {message}'], proc.stderr
  assert not (tmp_path / 'run').exists()


def test_scst_command_has_the_same_one_line_for_a_misspelt_field(tmp_path, jax_cache):
  config = f'configs/synthetic_demo_scst.py:init_from={tmp_path / "ce"}'
  proc = _main(jax_cache, tmp_path / 'run', MISTYPED['field'][0], 120, config, 'scst.main')
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert proc.stderr.strip().splitlines() == [f'error: {MISTYPED["field"][1]}']


def test_console_has_no_library_info_lines_and_train_log_keeps_them(toy, tmp_path):
  config, cache = toy
  proc = _main(cache, tmp_path, [*_overrides(config), '--config.train.stop_at_step=2'])
  assert proc.returncode == 0, proc.stderr[-3000:]
  package = {p.name for p in (REPO / 'aac_jax').rglob('*.py')}
  info_sources = re.findall(r'^I\d{4} [\d:.]+\s+\d+ (\S+?):\d+\]', proc.stderr, re.MULTILINE)
  assert info_sources and set(info_sources) <= package, sorted(set(info_sources) - package)
  log = (tmp_path / 'train.log').read_text()
  assert 'orbax' in log and 'Train state: fresh initialisation' in log
