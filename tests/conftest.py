"""Test setup: 8 simulated CPU devices so every parallel path runs.

XLA's CPU backend compiles at LLVM optimisation level 0 in tests
(`--xla_backend_optimization_level=0`, added to `$XLA_FLAGS` unless it names
a level): the same operations and results within the parity tolerances,
compiled several times faster, and the suite's tiny shapes spend far more
time compiling than running (see the log of any run with
`jax.config.update('jax_log_compiles', True)`). Subprocesses the tests start
inherit it.
"""

import os

import pytest

TEST_XLA_FLAGS = ('--xla_force_host_platform_device_count=8', '--xla_backend_optimization_level=0')


def _with_test_xla_flags(flags: str) -> str:
  """`flags` plus each of TEST_XLA_FLAGS whose option it does not set already."""
  given = {flag.split('=')[0] for flag in flags.split()}
  return ' '.join([flags] + [f for f in TEST_XLA_FLAGS if f.split('=')[0] not in given]).strip()


os.environ['XLA_FLAGS'] = _with_test_xla_flags(os.environ.get('XLA_FLAGS', ''))
os.environ.setdefault('JAX_PLATFORMS', 'cpu')


@pytest.fixture(scope='session')
def jax_cache(tmp_path_factory):
  """A persistent compilation cache shared by the session's runs (and their subprocesses)."""
  import jax

  cache = tmp_path_factory.getbasetemp() / 'jax_cache'
  previous = jax.config.jax_compilation_cache_dir
  jax.config.update('jax_compilation_cache_dir', str(cache))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  yield cache
  jax.config.update('jax_compilation_cache_dir', previous)


@pytest.fixture(autouse=True)
def absl_logging_restored():
  """Undoes what a command's `main()` run in-process did to absl logging.

  The captioning and export commands lower absl's verbosity and filter its
  logger for their console (`aac_jax.train.logs.quiet_console`); in their own
  process that is what a user wants, but it must not silence the INFO
  records (`train.log`) of the tests that run after them.
  """
  from absl import logging as absl_logging

  logger = absl_logging.get_absl_logger()
  verbosity, filters = absl_logging.get_verbosity(), list(logger.filters)
  yield
  absl_logging.set_verbosity(verbosity)
  logger.filters[:] = filters


def pytest_configure(config):
  config.addinivalue_line(
    'markers',
    'multiprocess: starts real multi-process runs (minutes); runs in CI like every test',
  )


# The files that take minutes, longest first (`pytest --durations` on the 2-core
# VM). Under `tools/test.sh` (pytest-xdist, --dist loadfile) a file is one unit of
# work and units go to workers in collection order: starting these first keeps
# one long file from running alone at the end. Order only; nothing is skipped.
SLOW_FILES_FIRST = (
  'test_multihost.py',
  'test_pretrained_recipe.py',
  'test_conette_convert.py',
  'test_training_faults.py',
  'test_sweeps.py',
  'test_checkpoint_resume.py',
  'test_embeddings.py',
  'test_scst_trainer.py',
  'test_metrics_fense.py',
  'test_caption_cli.py',
)


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # Stable: file order kept.
