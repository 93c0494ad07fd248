"""Splits larger than TFDS's shuffle buffer build without TensorFlow."""

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import shuffle as tfds_shuffle

from aac_jax.data import tfds_compat
from aac_jax.data.synthetic import builder as synthetic_builder


def _records(data_dir, split):
  source = tfds.data_source('synthetic_aac/tiny', split=split, data_dir=str(data_dir))
  return [source[i] for i in range(len(source))]


def test_spilled_build_equals_in_memory_build(tmp_path, monkeypatch):
  tfds_compat.install()
  synthetic_builder.build(tmp_path / 'memory', 'tiny', num_workers=0)
  # A 4 KB buffer forces every split through the on-disk buckets.
  monkeypatch.setattr(tfds_shuffle, 'MAX_MEM_BUFFER_SIZE', 4096)
  synthetic_builder.build(tmp_path / 'spilled', 'tiny', num_workers=0)
  for split in ('train', 'validation'):
    in_memory, spilled = _records(tmp_path / 'memory', split), _records(tmp_path / 'spilled', split)
    assert len(spilled) == len(in_memory) > 0
    for a, b in zip(in_memory, spilled, strict=True):
      assert a['id'] == b['id']
      np.testing.assert_array_equal(a['audio'], b['audio'])
  leftovers = [p for p in (tmp_path / 'spilled').rglob('*') if 'tmp' in p.name.lower()]
  assert not [p for p in leftovers if p.is_file()], leftovers
