"""Test setup: 8 simulated CPU devices so every parallel path runs."""

import os

import pytest

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
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


def pytest_configure(config):
  config.addinivalue_line(
    'markers',
    'multiprocess: starts real multi-process runs (minutes); runs in CI like every test',
  )
