"""Grain pipelines on the toy TFDS dataset: sharding, exact eval, resume."""

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
import toy_dataset

from aac_jax.data import pipeline, sources, text
from aac_jax.data.tokenizer import EOS_ID, PAD_ID, Tokenizer
from configs import base

NUM_TRAIN = 24
NUM_VALIDATION = 11


@pytest.fixture(scope='module')
def cfg(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('data')
  toy_dataset.build_toy_dataset(
    str(data_dir),
    splits={'train': NUM_TRAIN, 'validation': NUM_VALIDATION},
    min_seconds=0.2,
    max_seconds=1.0,
  )
  c = base.get_dataset_config()
  c.name, c.data_dir, c.build_if_missing = toy_dataset.NAME, str(data_dir), False
  c.max_audio_seconds = 0.5  # Some clips are cropped, some padded.
  c.max_caption_tokens = 8  # Some captions are truncated.
  return c


@pytest.fixture(scope='module')
def records(cfg):
  """`{split: [record, ...]}` in source order."""
  return {split: list(sources.open_source(cfg, split)) for split in (cfg.train_split, 'validation')}


@pytest.fixture(scope='module')
def tokenizer(cfg):
  return Tokenizer.build(sources.load_split_captions(cfg, cfg.train_split))


def _locate(row_audio, row_paddings, clips):
  """Finds which clip (and where) a training row was cut from."""
  real = row_audio[row_paddings == 0]
  samples = np.round(real * 32768.0).astype(np.int16)
  for i, clip in enumerate(clips):
    if len(clip) < len(samples):
      continue
    for start in np.flatnonzero(clip[: len(clip) - len(samples) + 1] == samples[0]):
      if np.array_equal(clip[start : start + len(samples)], samples):
        return i, int(start)
  raise AssertionError('a training row matches no clip')


def _check_train_row(batch, row, record, tokenizer, max_samples, start):
  n = min(len(record['audio']), max_samples)
  assert np.sum(batch['audio_paddings'][row] == 0) == n
  np.testing.assert_array_equal(batch['audio_paddings'][row, :n], 0.0)
  np.testing.assert_array_equal(batch['audio'][row, n:], 0.0)
  assert 0 <= start <= len(record['audio']) - n
  targets = batch['targets'][row]
  length = int(np.sum(targets != PAD_ID))
  assert targets[length - 1] == EOS_ID and EOS_ID not in targets[: length - 1]
  words = tokenizer.decode(targets).split()
  assert any(
    text.caption_words(c.decode())[: len(targets) - 1] == words for c in record['captions']
  ), 'targets are not a caption of the clip'


@pytest.mark.parametrize(('process_count', 'global_batch'), [(1, 6), (2, 8), (3, 6)])
def test_train_shards_are_disjoint_epochs(cfg, records, tokenizer, process_count, global_batch):
  clips = [r['audio'] for r in records['train']]
  batch_size = global_batch // process_count
  steps_per_epoch = NUM_TRAIN // global_batch
  max_samples = int(cfg.max_audio_seconds * cfg.sample_rate)
  seen = []
  for p in range(process_count):
    it = pipeline.make_train_iterator(cfg, tokenizer, global_batch, p, process_count)
    epochs = []
    for _ in range(2):
      order = []
      for _ in range(steps_per_epoch):
        batch = next(it)
        assert batch['audio'].shape == (batch_size, max_samples)
        assert batch['audio'].dtype == batch['audio_paddings'].dtype == np.float32
        assert batch['targets'].shape == (batch_size, 8) and batch['targets'].dtype == np.int32
        for row in range(batch_size):
          clip, start = _locate(batch['audio'][row], batch['audio_paddings'][row], clips)
          _check_train_row(batch, row, records['train'][clip], tokenizer, max_samples, start)
          order.append(clip)
      epochs.append(order)
    # Each pass visits the shard once, in a new order.
    assert sorted(epochs[0]) == sorted(epochs[1]) and len(set(epochs[0])) == len(epochs[0])
    assert epochs[0] != epochs[1]
    seen.append(set(epochs[0]))
  assert set().union(*seen) == set(range(NUM_TRAIN))
  assert sum(map(len, seen)) == NUM_TRAIN


def test_train_example_draws_every_reference_and_crop():
  tok = Tokenizer.build(['one', 'two', 'three'])
  record = {
    'id': b'x',
    'audio': np.arange(10, dtype=np.int16),
    'captions': [b'one', b'two', b'three'],
  }
  transform = pipeline._TrainExample(tokenizer=tok, max_samples=4, max_tokens=3)
  rng = np.random.default_rng(0)
  outputs = [transform.random_map(record, rng) for _ in range(100)]
  assert {tok.decode(o['targets']) for o in outputs} == {'one', 'two', 'three'}
  starts = {int(round(o['audio'][0] * 32768)) for o in outputs}
  assert starts == set(range(7))  # Every crop position 0 .. 10 - 4.
  with pytest.raises(ValueError, match='no caption'):
    transform.random_map({**record, 'captions': []}, rng)


def test_train_example_with_several_references_per_clip():
  tok = Tokenizer.build(['one', 'two', 'three'])
  record = {
    'id': b'x',
    'audio': np.arange(10, dtype=np.int16),
    'captions': [b'one', b'two', b'three'],
  }
  rng = np.random.default_rng(0)
  both = pipeline._TrainExample(tokenizer=tok, max_samples=4, max_tokens=3, captions_per_clip=2)
  pairs = set()
  for _ in range(60):
    targets = both.random_map(record, rng)['targets']
    assert targets.shape == (2, 3) and targets.dtype == np.int32
    pair = tuple(tok.decode(row) for row in targets)
    assert pair[0] != pair[1]  # Drawn without replacement.
    pairs.add(pair)
  assert len(pairs) == 6  # Every ordered pair of distinct references.
  four = pipeline._TrainExample(tokenizer=tok, max_samples=4, max_tokens=3, captions_per_clip=4)
  targets = four.random_map(record, rng)['targets']
  assert sorted(tok.decode(row) for row in targets[:3]) == ['one', 'three', 'two']
  np.testing.assert_array_equal(targets[3], PAD_ID)  # The clip has only 3.


def test_train_iterator_with_several_references(cfg, records, tokenizer):
  multi = cfg.copy_and_resolve_references()
  multi.captions_per_clip = 2
  batch = next(pipeline.make_train_iterator(multi, tokenizer, 4, 0, 1))
  assert batch['targets'].shape == (4, 2, 8) and batch['audio'].shape[0] == 4
  clips = [r['audio'] for r in records['train']]
  for row in range(4):
    clip, _ = _locate(batch['audio'][row], batch['audio_paddings'][row], clips)
    refs = [text.caption_words(c.decode())[:7] for c in records['train'][clip]['captions']]
    for targets in batch['targets'][row]:
      if np.any(targets != PAD_ID):
        assert tokenizer.decode(targets).split() in refs
  multi.captions_per_clip = 0
  with pytest.raises(ValueError, match='captions_per_clip must be >= 1'):
    pipeline.make_train_iterator(multi, tokenizer, 4, 0, 1)


def test_fit_audio_pads_and_crops():
  audio = np.array([16384, -16384, 8192], np.int16)
  waveform, paddings = pipeline.fit_audio(audio, 5)
  np.testing.assert_array_equal(waveform, [0.5, -0.5, 0.25, 0, 0])
  np.testing.assert_array_equal(paddings, [0, 0, 0, 1, 1])
  waveform, paddings = pipeline.fit_audio(audio, 2, start=1)
  np.testing.assert_array_equal(waveform, [-0.5, 0.25])
  np.testing.assert_array_equal(paddings, [0, 0])


def _next_batches(it, n):
  return [next(it) for _ in range(n)]


def _assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b, strict=True):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_train_iterator_resumes_from_orbax_checkpoint(cfg, tokenizer, tmp_path):
  it = pipeline.make_train_iterator(cfg, tokenizer, 4, 1, 2)
  _next_batches(it, 5)  # Into the second pass over the 12-clip shard.
  manager = ocp.CheckpointManager(tmp_path / 'ckpt')
  manager.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  manager.wait_until_finished()
  expected = _next_batches(it, 4)
  manager.close()

  fresh = pipeline.make_train_iterator(cfg, tokenizer, 4, 1, 2)
  first = next(fresh)
  manager = ocp.CheckpointManager(tmp_path / 'ckpt')
  assert manager.latest_step() == 5
  restored = manager.restore(
    5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh))
  )
  manager.close()
  assert not np.array_equal(first['audio'], expected[0]['audio'])
  _assert_same_batches(_next_batches(restored.data, 4), expected)


def test_worker_processes_give_the_same_batches_and_resume(cfg, tokenizer):
  cfg = cfg.copy_and_resolve_references()
  in_process = _next_batches(pipeline.make_train_iterator(cfg, tokenizer, 4, 0, 1), 4)
  cfg.num_workers = 2
  it = pipeline.make_train_iterator(cfg, tokenizer, 4, 0, 1)
  _assert_same_batches(_next_batches(it, 2), in_process[:2])
  state = it.get_state()
  _assert_same_batches(_next_batches(it, 2), in_process[2:])
  # Rewinding reuses the running workers (a fresh iterator is tested above).
  it.set_state(state)
  _assert_same_batches(_next_batches(it, 2), in_process[2:])
  it.close()  # Stops the worker processes now rather than at garbage collection.


@pytest.mark.parametrize('process_count', [1, 2, 3])
@pytest.mark.parametrize('per_process_batch', [1, 2, 4, 5])
def test_eval_visits_every_clip_once(cfg, records, process_count, per_process_batch):
  global_batch = per_process_batch * process_count
  max_samples = int(cfg.max_audio_seconds * cfg.sample_rate)
  expected_batches = -(-NUM_VALIDATION // global_batch)
  real = []
  for p in range(process_count):
    split, batches = pipeline.make_eval_batches(cfg, 'validation', global_batch, p, process_count)
    batches = list(batches)
    assert len(batches) == expected_batches
    for batch in batches:
      assert batch['audio'].shape == (per_process_batch, max_samples)
      assert batch['index'].dtype == np.int32 and batch['example_mask'].dtype == np.float32
      np.testing.assert_array_equal(batch['example_mask'], batch['index'] >= 0)
      for row, index in enumerate(batch['index']):
        if index < 0:
          np.testing.assert_array_equal(batch['audio'][row], 0.0)
          np.testing.assert_array_equal(batch['audio_paddings'][row], 1.0)
          continue
        record = records['validation'][index]
        audio, paddings = pipeline.fit_audio(record['audio'], max_samples)
        np.testing.assert_array_equal(batch['audio'][row], audio)
        np.testing.assert_array_equal(batch['audio_paddings'][row], paddings)
        real.append(int(index))
  assert sorted(real) == list(range(NUM_VALIDATION))
  assert split.ids == [r['id'].decode() for r in records['validation']]
  assert split.references == [[c.decode() for c in r['captions']] for r in records['validation']]


def test_eval_batch_indices_cover_range_exactly():
  for n in [0, 1, 7, 12, 13]:
    for process_count in [1, 2, 3]:
      for global_batch in [process_count, 2 * process_count, 12]:
        parts = [
          pipeline.eval_batch_indices(n, global_batch, p, process_count)
          for p in range(process_count)
        ]
        assert len({part.shape for part in parts}) == 1
        # Side by side in process order, the global batches are the clips in order.
        joined = np.concatenate(parts, axis=1).reshape(-1)
        np.testing.assert_array_equal(joined[:n], np.arange(n))
        np.testing.assert_array_equal(joined[n:], -1)


def test_eval_crop_length_and_max_examples(cfg, records):
  cfg = cfg.copy_and_resolve_references()
  cfg.max_eval_audio_seconds = 0.75
  split, batches = pipeline.make_eval_batches(cfg, 'validation', 4, 0, 1, max_examples=6)
  assert len(split) == 6
  batches = list(batches)
  assert [b['index'].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, -1, -1]]
  for batch in batches:
    for row, index in enumerate(batch['index'][batch['index'] >= 0]):
      clip = records['validation'][index]['audio']
      n = min(len(clip), 12000)
      np.testing.assert_array_equal(batch['audio'][row, :n] * 32768, clip[:n])
      assert np.sum(batch['audio_paddings'][row] == 0) == n


def test_bad_arguments_raise(cfg, tokenizer):
  with pytest.raises(ValueError, match='multiple'):
    pipeline.make_eval_batches(cfg, 'validation', 5, 0, 2)
  with pytest.raises(ValueError, match='process index'):
    pipeline.make_train_iterator(cfg, tokenizer, 4, 2, 2)
  wrong_rate = cfg.copy_and_resolve_references()
  wrong_rate.sample_rate = 44100
  with pytest.raises(ValueError, match='44100'):
    sources.open_source(wrong_rate, 'validation')
