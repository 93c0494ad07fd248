"""Dataset look-up: clear errors for unbuilt real data, on-demand synthetic."""

import ml_collections
import pytest

from aac_jax.data import registry, sources


def _cfg(name, data_dir, builder_config='', build=True):
  return ml_collections.ConfigDict(
    dict(
      name=name,
      builder_config=builder_config,
      data_dir=str(data_dir),
      build_if_missing=build,
      sample_rate=16000,
    )
  )


@pytest.mark.parametrize(
  'name,tool_arg', [('clotho_aac', 'clotho'), ('audiocaps_aac', 'audiocaps')]
)
def test_unbuilt_real_dataset_names_the_build_command(tmp_path, name, tool_arg):
  with pytest.raises(registry.DatasetNotBuiltError) as err:
    sources.open_source(_cfg(name, tmp_path), 'train')
  message = str(err.value)
  assert f'tools/build_dataset.py {tool_arg}' in message
  assert str(tmp_path) in message


def test_synthetic_without_build_if_missing_says_how(tmp_path):
  with pytest.raises(registry.DatasetNotBuiltError, match='not built'):
    registry.ensure_built(_cfg('synthetic_aac', tmp_path, 'tiny', build=False))


def test_synthetic_is_built_on_demand(tmp_path):
  source = sources.open_source(_cfg('synthetic_aac', tmp_path, 'tiny'), 'validation')
  assert len(source) == 16
  assert (tmp_path / 'synthetic_aac' / 'tiny').is_dir()
