"""Tests of the synthetic_aac TFDS builder (builds real array_record files)."""

import json
import re
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from aac_jax.data.synthetic import builder, clips, scenes


@pytest.fixture(scope='module')
def tiny_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('tfds')
  # Two workers: the records must equal clips made one by one in this process.
  built = builder.build(data_dir, 'tiny', num_workers=2)
  assert {s: built.info.splits[s].num_examples for s in ('train', 'validation', 'test')} == {
    'train': 48,
    'validation': 16,
    'test': 16,
  }
  return data_dir


@pytest.mark.parametrize('split, size', [('train', 48), ('validation', 16), ('test', 16)])
def test_tiny_reads_back(tiny_dir, split, size):
  source = tfds.data_source('synthetic_aac/tiny', split=split, data_dir=tiny_dir)
  assert len(source) == size
  ids = []
  for i in range(len(source)):
    example = source[i]
    assert set(example) == {'id', 'audio', 'captions', 'events'}
    ids.append(example['id'].decode())
    audio = example['audio']
    assert audio.dtype == np.int16 and audio.ndim == 1
    assert scenes.MIN_SECONDS <= audio.shape[0] / clips.SAMPLE_RATE <= scenes.MAX_SECONDS + 1e-3
    refs = [c.decode() for c in example['captions']]
    assert len(refs) == 5 and all(refs)
    assert 1 <= len(json.loads(example['events'])) <= 4
  assert len(set(ids)) == size
  assert all(re.fullmatch(rf'synthetic_{split}_\d{{6}}', i) for i in ids)
  assert sorted(int(i.rsplit('_', 1)[1]) for i in ids) == list(range(size))


def test_records_equal_in_process_generation(tiny_dir):
  source = tfds.data_source('synthetic_aac/tiny', split='validation', data_dir=tiny_dir)
  for i in (0, 5):
    example = source[i]
    index = int(example['id'].decode().rsplit('_', 1)[1])
    expected = clips.make_example(0, 'validation', index)
    assert example['audio'].tobytes() == expected['audio'].tobytes()
    assert [c.decode() for c in example['captions']] == expected['captions']
    assert example['events'].decode() == expected['events']


def test_metadata_and_no_tensorflow(tiny_dir):
  built = builder.build(tiny_dir, 'tiny')  # Already there: reused.
  assert built.info.metadata['sample_rate'] == 16000
  assert str(built.info.file_format.value) == 'array_record'
  assert 'tensorflow' not in sys.modules


def test_custom_config_sizes(tmp_path):
  config = builder.make_config(6, 3, 0, seed=4)
  assert config.name == 'custom_6_3_0_seed4'
  builder.build(tmp_path, config, num_workers=0)
  train = tfds.data_source(f'synthetic_aac/{config.name}', split='train', data_dir=tmp_path)
  validation = tfds.data_source(
    f'synthetic_aac/{config.name}', split='validation', data_dir=tmp_path
  )
  assert (len(train), len(validation)) == (6, 3)
  example = train[0]
  index = int(example['id'].decode().rsplit('_', 1)[1])
  assert example['audio'].tobytes() == clips.make_example(4, 'train', index)['audio'].tobytes()
  with pytest.raises(ValueError):
    builder.make_config(0, 0, 0)


def test_registered_configs():
  sizes = {
    c.name: (c.num_train, c.num_validation, c.num_test)
    for c in builder.SyntheticAac.BUILDER_CONFIGS
  }
  assert sizes == {'default': (5000, 500, 500), 'small': (600, 100, 100), 'tiny': (48, 16, 16)}
  assert builder.SyntheticAac.name == 'synthetic_aac'
  with pytest.raises(ValueError):
    builder.get_config('huge')
