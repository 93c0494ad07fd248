"""Feature normalisation statistics: measured exactly, saved, reused, inherited."""

import json

import jax
import numpy as np
import pytest
import toy_dataset
from etils import epath

from aac_jax.audio import frontend
from aac_jax.data import clips, feature_stats, sources
from aac_jax.train import prepare
from configs import synthetic_demo


@pytest.fixture(scope='module')
def config(tmp_path_factory):
  return toy_dataset.demo_config(str(tmp_path_factory.mktemp('tfds')))


def _numpy_reference(config, indices, split='train', more=()):
  """Mean/std of the raw log-mel of each clip alone (no batching, no padding).

  A padded batch counts the frames centred on a real sample,
  `ceil(length / hop)`; the clip alone has one more when `hop` divides it.
  `more`: further `(split, indices)` measured with them.
  """
  values = np.concatenate(
    [_log_mel_values(config, name, chosen) for name, chosen in [(split, indices), *more]]
  )
  return values.mean(), values.std(), len(values)


def _log_mel_values(config, split, indices):
  """`[frames, n_mels]` raw log-mel values of the real frames of `indices` of `split`."""
  source = sources.open_source(config.dataset, split)
  num_samples = int(config.dataset.max_audio_seconds * config.dataset.sample_rate)
  raw = config.frontend.copy_and_resolve_references()
  raw.feature_mean, raw.feature_std = 0.0, 1.0
  values = []
  for i in indices:
    waveform, _ = clips.fit_audio(source[int(i)]['audio'], num_samples)
    length = min(len(source[int(i)]['audio']), num_samples)
    log, _ = frontend.log_mel(waveform[None, :length], np.zeros((1, length), np.float32), raw)
    real_frames = -(-length // config.frontend.hop_length)
    values.append(np.asarray(log[0, :real_frames], np.float64))
  return np.concatenate(values)


def _train(config):
  return sources.open_source(config.dataset, 'train')


def test_measure_equals_per_clip_reference(config):
  source = sources.open_source(config.dataset, 'train')
  stats = feature_stats.measure(source, config.dataset, config.frontend, num_clips=10)
  indices = feature_stats.clip_indices(toy_dataset.DEFAULT_SPLITS['train'], 10)
  assert len(indices) == stats['num_clips'] == 10
  mean, std, frames = _numpy_reference(config, indices)
  assert stats['num_frames'] == frames
  np.testing.assert_allclose(stats['mean'], mean, rtol=1e-5)
  np.testing.assert_allclose(stats['std'], std, rtol=1e-4)


def test_clip_indices_spread_and_cap():
  np.testing.assert_array_equal(feature_stats.clip_indices(5, 10), np.arange(5))
  idx = feature_stats.clip_indices(1000, 5)
  assert idx[0] == 0 and idx[-1] == 999 and len(idx) == 5
  with pytest.raises(ValueError, match='empty'):
    feature_stats.clip_indices(0, 5)


def test_resolve_measures_saves_reuses_and_inherits(config, tmp_path):
  run = config.copy_and_resolve_references()
  run.frontend.feature_stats_clips = 8
  first = epath.Path(tmp_path / 'first')
  feature_stats.resolve(run, first, _train(config))
  saved = json.loads((first / feature_stats.STATS_FILENAME).read_text())
  assert run.frontend.feature_mean == saved['mean'] and run.frontend.feature_std == saved['std']
  assert saved['num_clips'] == 8 and saved['std'] > 0

  # A restart reads the file (edited here to prove it is not measured again).
  (first / feature_stats.STATS_FILENAME).write_text(json.dumps({'mean': -3.0, 'std': 2.0}))
  again = config.copy_and_resolve_references()
  feature_stats.resolve(again, first, _train(config))
  assert (again.frontend.feature_mean, again.frontend.feature_std) == (-3.0, 2.0)

  # A run started from another run's parameters takes that run's numbers.
  child = config.copy_and_resolve_references()
  child.train.init_from = str(first)
  (tmp_path / 'child').mkdir()
  prepare.inherit_from_init_run(child, epath.Path(tmp_path / 'child'))
  feature_stats.resolve(child, epath.Path(tmp_path / 'child'), _train(config))
  assert (child.frontend.feature_mean, child.frontend.feature_std) == (-3.0, 2.0)
  assert (tmp_path / 'child' / feature_stats.STATS_FILENAME).exists()


def test_mixture_is_measured_over_its_entries_by_weight(config, tmp_path):
  """A mixture's statistics: its entries' clips in the weights' proportions, not dataset.name's."""
  run = config.copy_and_resolve_references()
  run.dataset.mixture = (
    (toy_dataset.NAME, 'train', 3.0, ''),
    (toy_dataset.NAME, 'validation', 1.0, 'other'),
  )
  run.frontend.feature_stats_clips = 8
  feature_stats.resolve(run, epath.Path(tmp_path), _train(config))
  saved = json.loads((tmp_path / feature_stats.STATS_FILENAME).read_text())
  assert saved['clips_per_entry'] == {'toy_aac:train': 6, 'toy_aac:validation': 2}
  picks = {
    s: feature_stats.clip_indices(toy_dataset.DEFAULT_SPLITS[s], n)
    for s, n in (('train', 6), ('validation', 2))
  }
  mean, std, frames = _numpy_reference(
    config, picks['train'], more=[('validation', picks['validation'])]
  )
  assert saved['num_clips'] == 8 and saved['num_frames'] == frames
  np.testing.assert_allclose(saved['mean'], mean, rtol=1e-5)
  np.testing.assert_allclose(saved['std'], std, rtol=1e-4)
  assert run.frontend.feature_mean == saved['mean']


def test_mixture_clip_counts_follow_the_weights():
  assert feature_stats.mixture_clip_counts([0.5, 0.3, 0.2], 10) == [5, 3, 2]
  assert feature_stats.mixture_clip_counts([0.7, 0.2, 0.1], 4) == [3, 1, 1]  # Remainders.
  assert feature_stats.mixture_clip_counts([0.99, 0.01], 10) == [10, 1]  # One at least.


def test_fixed_mode_and_bad_values(config, tmp_path):
  fixed = config.copy_and_resolve_references()
  fixed.frontend.feature_stats = 'fixed'
  fixed.frontend.feature_mean, fixed.frontend.feature_std = -5.0, 3.0
  feature_stats.resolve(fixed, epath.Path(tmp_path), _train(config))
  assert (fixed.frontend.feature_mean, fixed.frontend.feature_std) == (-5.0, 3.0)
  assert not (tmp_path / feature_stats.STATS_FILENAME).exists()
  fixed.frontend.feature_std = 0.0
  with pytest.raises(ValueError, match='feature_std must be > 0'):
    feature_stats.resolve(fixed, epath.Path(tmp_path), _train(config))
  fixed.frontend.feature_stats = 'auto'
  with pytest.raises(ValueError, match='feature_stats must be one of'):
    feature_stats.resolve(fixed, epath.Path(tmp_path), _train(config))


def test_log_mel_applies_the_normalisation():
  cfg = synthetic_demo.get_config().frontend
  rng = np.random.default_rng()
  waveform = rng.normal(0, 0.1, (2, 4000)).astype(np.float32)
  paddings = np.zeros_like(waveform)
  raw, _ = frontend.log_mel(waveform, paddings, cfg)
  cfg.feature_mean, cfg.feature_std = -7.5, 2.5
  normalised, _ = jax.jit(lambda w, p: frontend.log_mel(w, p, cfg))(waveform, paddings)
  np.testing.assert_allclose(normalised, (np.asarray(raw) + 7.5) / 2.5, rtol=1e-5, atol=1e-5)
