"""Grain pipelines on the toy TFDS dataset: one global order, exact eval, resume."""

import numpy as np
import orbax.checkpoint as ocp
import pytest
import toy_dataset

from aac_jax.data import clips, pipeline, sources, text
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


def _global_batches(cfg, tokenizer, global_batch, process_count, steps, state=None):
  """`steps` global batches read by `process_count` processes, slices side by side."""
  iterators = [
    pipeline.make_train_iterator(cfg, tokenizer, global_batch, p, process_count)
    for p in range(process_count)
  ]
  if state is not None:
    for it in iterators:
      it.set_state(state)
  return [
    {k: np.concatenate([b[k] for b in parts]) for k in parts[0]}
    for parts in zip(*[_next_batches(it, steps) for it in iterators], strict=True)
  ]


def test_train_order_is_the_same_on_any_process_count(cfg, records, tokenizer):
  clips = [r['audio'] for r in records['train']]
  global_batch, steps_per_epoch = 6, NUM_TRAIN // 6
  max_samples = int(cfg.max_audio_seconds * cfg.sample_rate)
  single = _global_batches(cfg, tokenizer, global_batch, 1, 2 * steps_per_epoch)
  epochs = [[], []]
  for step, batch in enumerate(single):
    assert batch['audio'].shape == (global_batch, max_samples)
    assert batch['audio'].dtype == batch['audio_paddings'].dtype == np.float32
    assert batch['targets'].shape == (global_batch, 8) and batch['targets'].dtype == np.int32
    for row in range(global_batch):
      clip, start = _locate(batch['audio'][row], batch['audio_paddings'][row], clips)
      _check_train_row(batch, row, records['train'][clip], tokenizer, max_samples, start)
      epochs[step // steps_per_epoch].append(clip)
  # Each pass visits every clip once, in a new order.
  assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(NUM_TRAIN))
  assert epochs[0] != epochs[1]
  for process_count in (2, 3):
    # Crops and references too are the same: they are keyed by global position.
    sliced = _global_batches(cfg, tokenizer, global_batch, process_count, 2 * steps_per_epoch)
    _assert_same_batches(sliced, single)


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
  waveform, paddings = clips.fit_audio(audio, 5)
  np.testing.assert_array_equal(waveform, [0.5, -0.5, 0.25, 0, 0])
  np.testing.assert_array_equal(paddings, [0, 0, 0, 1, 1])
  waveform, paddings = clips.fit_audio(audio, 2, start=1)
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


def test_two_process_position_resumes_on_one_and_four(cfg, tokenizer, tmp_path):
  straight = _global_batches(cfg, tokenizer, 4, 1, 9)
  two = [pipeline.make_train_iterator(cfg, tokenizer, 4, p, 2) for p in range(2)]
  for it in two:
    _next_batches(it, 5)  # Into the second pass over the 24 clips.
  assert two[0].get_state() == two[1].get_state() == {'next_position': 20, 'global_batch_size': 4}
  manager = ocp.CheckpointManager(tmp_path / 'ckpt')
  manager.save(5, args=ocp.args.Composite(data=ocp.args.JsonSave(two[0].get_state())))
  manager.wait_until_finished()
  manager.close()

  manager = ocp.CheckpointManager(tmp_path / 'ckpt')
  state = manager.restore(5, args=ocp.args.Composite(data=ocp.args.JsonRestore())).data
  manager.close()
  for process_count in (1, 4):
    resumed = _global_batches(cfg, tokenizer, 4, process_count, 4, state=state)
    _assert_same_batches(resumed, straight[5:])


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
        audio, paddings = clips.fit_audio(record['audio'], max_samples)
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
  with pytest.raises(ValueError, match='multiple of the 3 processes'):
    pipeline.make_train_iterator(cfg, tokenizer, 4, 0, 3)
  with pytest.raises(ValueError, match='lacks'):
    pipeline.make_train_iterator(cfg, tokenizer, 4, 0, 1).set_state({'next_index': 3})
  wrong_rate = cfg.copy_and_resolve_references()
  wrong_rate.sample_rate = 44100
  with pytest.raises(ValueError, match='44100'):
    sources.open_source(wrong_rate, 'validation')
