"""Tests of the synthetic clip generator (events.py, scenes.py, clips.py)."""

import collections
import json

import numpy as np
import pytest

from aac_jax.data.synthetic import clips, events, scenes

SR = clips.SAMPLE_RATE


def _scene_events(seed: int, split: str, index: int) -> list[dict]:
  """Ground truth of a clip without rendering its audio (fast)."""
  scene_rng, _, _ = clips.clip_rngs(seed, split, index)
  return [e.to_json() for e in scenes.sample_scene(scene_rng).events]


def test_same_seed_same_bytes():
  for index in (0, 7):
    a = clips.make_example(3, 'train', index)
    b = clips.make_example(3, 'train', index)
    assert a['audio'].tobytes() == b['audio'].tobytes()
    assert a['captions'] == b['captions']
    assert a['events'] == b['events']
    assert a['id'] == b['id'] == f'synthetic_train_{index:06d}'


def test_different_seed_split_or_index_differs():
  base = clips.make_example(0, 'train', 1)
  for other in (
    clips.make_example(1, 'train', 1),
    clips.make_example(0, 'test', 1),
    clips.make_example(0, 'train', 2),
  ):
    assert base['audio'].tobytes() != other['audio'].tobytes()
    assert base['events'] != other['events']


def test_clip_does_not_depend_on_generation_order():
  forward = [clips.make_example(0, 'validation', i)['audio'] for i in range(3)]
  backward = [clips.make_example(0, 'validation', i)['audio'] for i in (2, 1, 0)][::-1]
  for a, b in zip(forward, backward, strict=True):
    np.testing.assert_array_equal(a, b)


def test_clip_lengths_and_events():
  for index in range(30):
    example = clips.make_example(0, 'train', index)
    audio = example['audio']
    assert audio.dtype == np.int16 and audio.ndim == 1
    seconds = audio.shape[0] / SR
    assert scenes.MIN_SECONDS - 1e-3 <= seconds <= scenes.MAX_SECONDS + 1e-3
    assert np.abs(audio).max() > 1000  # Not silent.
    gt = json.loads(example['events'])
    assert 1 <= len(gt) <= 4
    for e in gt:
      assert 0 <= e['onset'] < e['offset'] <= seconds + 1e-3


def test_scene_structure_over_many_clips():
  types, counts, attrs = collections.Counter(), collections.Counter(), collections.Counter()
  num_background = 0
  for index in range(400):
    gt = _scene_events(0, 'train', index)
    assert 1 <= len(gt) <= 4
    assert gt == sorted(gt, key=lambda e: e['onset'])
    bg = [e for e in gt if e['background']]
    fg = [e for e in gt if not e['background']]
    assert len(bg) <= 1 and len(fg) >= 1
    if bg:
      num_background += 1
      assert len(gt) >= 2
      assert events.EVENT_SPECS[bg[0]['type']].can_background
      assert all(bg[0]['onset'] <= e['onset'] and e['offset'] <= bg[0]['offset'] for e in fg)
    for a, b in zip(fg, fg[1:], strict=False):
      assert a['offset'] <= b['onset'], 'foreground events overlap'
    assert len({e['type'] for e in gt}) == len(gt)
    for e in gt:
      spec = events.EVENT_SPECS[e['type']]
      types[e['type']] += 1
      counts[e['count']] += 1
      assert 1 <= e['count'] <= 4 and (spec.countable or e['count'] == 1)
      assert e['attributes']['loudness'] in ('loud', 'quiet')
      assert ('pitch' in e['attributes']) == spec.has_pitch
      assert ('duration' in e['attributes']) == spec.has_duration
      attrs.update(f'{k}={v}' for k, v in e['attributes'].items())
  assert len(events.EVENT_TYPES) >= 12
  assert set(types) == set(events.EVENT_TYPES)
  assert set(counts) == {1, 2, 3, 4}
  assert 40 <= num_background <= 200
  for value in ('pitch=high', 'pitch=low', 'loudness=loud', 'loudness=quiet'):
    assert attrs[value] > 20, value
  assert attrs['duration=short'] > 20 and attrs['duration=long'] > 20


def _log_spectrogram(x: np.ndarray) -> np.ndarray:
  frames = np.lib.stride_tricks.sliding_window_view(x, 512)[::256] * np.hanning(512)
  return np.log(np.abs(np.fft.rfft(frames, axis=1)) + 1e-3)


def test_event_types_have_distinct_signatures():
  n = int(0.6 * SR)
  specs = {}
  for name in events.EVENT_TYPES:
    x = events.synthesize(name, np.random.default_rng(0), n, 'high', SR)
    assert x.dtype == np.float32 and x.shape == (n,)
    assert np.all(np.isfinite(x)) and 0.5 < np.abs(x).max() <= 1.5
    specs[name] = _log_spectrogram(x).ravel()
  corr = np.corrcoef(np.stack(list(specs.values())))
  np.fill_diagonal(corr, 0)
  assert corr.max() < 0.9


@pytest.mark.parametrize('name', ['beep', 'bell', 'whistle', 'siren'])
def test_pitch_attribute_moves_the_spectrum(name):
  def centroid(pitch):
    x = events.synthesize(name, np.random.default_rng(1), SR // 2, pitch, SR)
    mag = np.abs(np.fft.rfft(x))
    return float((mag * np.fft.rfftfreq(x.size, 1 / SR)).sum() / mag.sum())

  assert centroid('high') > 1.5 * centroid('low')


def test_loudness_attribute_sets_the_level():
  peaks = collections.defaultdict(list)
  for index in range(60):
    scene_rng, audio_rng, _ = clips.clip_rngs(0, 'train', index)
    scene = scenes.sample_scene(scene_rng)
    audio = scenes.render_scene(scene, audio_rng, SR).astype(np.float32) / 32768
    for e in scene.foreground:
      segment = audio[int(e.onset * SR) : int(e.offset * SR)]
      peaks[e.attributes['loudness']].append(np.abs(segment).max())
  assert np.median(peaks['loud']) > 3 * np.median(peaks['quiet'])
