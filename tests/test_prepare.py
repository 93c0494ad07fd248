"""The prepare step: first-run work in one pass, a record, and an experiment built from it."""

import contextlib
import json
import sys

import pytest
import toy_dataset

from aac_jax.data import feature_stats, sources
from aac_jax.data import tokenizer as tokenizer_lib
from aac_jax.train import prepare, trainer

# Modules the experiment must not enter: finding out what to build is `prepare`'s work.
DATA_WORK = ('aac_jax.data.sources', 'aac_jax.data.registry', 'aac_jax.data.feature_stats')


@pytest.fixture(scope='module')
def config(tmp_path_factory):
  return toy_dataset.demo_config(str(tmp_path_factory.mktemp('tfds')))


@contextlib.contextmanager
def calls_into(modules_of_interest: tuple[str, ...]):
  """Records `(caller module, callee module, callee function)` of every Python call."""
  seen = []

  def profile(frame, event, arg):
    del arg
    if event == 'call':
      callee = frame.f_globals.get('__name__', '')
      if callee.startswith(modules_of_interest):
        caller = frame.f_back.f_globals.get('__name__', '') if frame.f_back else ''
        seen.append((caller, callee, frame.f_code.co_name))

  sys.setprofile(profile)
  try:
    yield seen
  finally:
    sys.setprofile(None)


def runs_of(names: list[str]) -> list[str]:
  """`names` with repeats next to each other collapsed (`a a b a` -> `a b a`)."""
  return [n for i, n in enumerate(names) if i == 0 or names[i - 1] != n]


def test_prepare_is_one_pass_and_writes_the_record(config, tmp_path):
  run = config.copy_and_resolve_references()
  with calls_into(('aac_jax.data', 'aac_jax.audio')) as seen:
    run_files = prepare.prepare(run, tmp_path)
  direct = [callee for caller, callee, _ in seen if caller == 'aac_jax.train.prepare']
  visits = runs_of(direct)
  assert len(visits) == len(set(visits)), f'a module entered twice from prepare: {visits}'
  assert visits[0] == 'aac_jax.data.sources'

  record = json.loads((tmp_path / prepare.RUN_FILES_FILENAME).read_text())
  stats = json.loads((tmp_path / feature_stats.STATS_FILENAME).read_text())
  assert record['dataset'] == sources.dataset_name(run.dataset)
  assert record['vocab_size'] == run_files.load_tokenizer().vocab_size
  assert record['frontend']['feature_mean'] == stats['mean'] == run.frontend.feature_mean
  assert prepare.read_run_files(tmp_path, run) == run_files


def test_other_processes_resolve_the_config_from_the_record(config, tmp_path):
  first = config.copy_and_resolve_references()
  run_files = prepare.prepare(first, tmp_path)
  other = config.copy_and_resolve_references()
  assert other.frontend.feature_mean != first.frontend.feature_mean
  prepare.read_run_files(tmp_path, other).apply_to(other)
  assert other.frontend.to_dict() == first.frontend.to_dict()
  assert other.dataset.embeddings_dir == run_files.embeddings_dir


def test_a_run_without_a_record_is_read_from_its_config_and_vocabulary(config, tmp_path):
  run = config.copy_and_resolve_references()
  tokenizer_lib.Tokenizer.build(['a dog barks', 'rain falls']).save(tmp_path / 'vocab.txt')
  run_files = prepare.read_run_files(tmp_path, run)
  assert run_files.vocab_size == 4 + 5 and run_files.frontend == run.frontend.to_dict()


def test_the_experiment_touches_no_data_source(config, tmp_path):
  run = config.copy_and_resolve_references()
  run_files = prepare.prepare(run, tmp_path)
  with calls_into(('aac_jax.data',)) as seen:
    exp = trainer.create_experiment(run, run_files)
  entered = sorted({callee for _, callee, _ in seen if callee in DATA_WORK})
  assert entered == []
  built = [f for _, callee, f in seen if callee == tokenizer_lib.__name__ and 'build' in f]
  assert built == []
  assert exp.tokenizer.tokens == run_files.load_tokenizer().tokens
