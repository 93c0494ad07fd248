"""Log-mel parity with librosa, padding invariance, SpecAugment bounds."""

import functools

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest

from aac_jax.audio import frontend, stft
from configs import base

SAMPLE_RATE = 16000


@pytest.fixture
def cfg():
  return base.get_frontend_config()


@pytest.fixture(scope='module')
def log_mel():
  """One jitted log-mel for the module (compiles once per input shape)."""
  cfg = base.get_frontend_config()
  return jax.jit(functools.partial(frontend.log_mel, cfg=cfg, sample_rate=SAMPLE_RATE))


@pytest.fixture(scope='module')
def augment_cfg():
  cfg = base.get_frontend_config()
  cfg.freq_mask_width, cfg.time_mask_ratio = 10, 0.1
  return cfg


@pytest.fixture(scope='module')
def augment(augment_cfg):
  """One jitted SpecAugment for the module."""
  return jax.jit(functools.partial(frontend.spec_augment, cfg=augment_cfg))


def _librosa_power_mel(signal: np.ndarray, cfg) -> np.ndarray:
  """`[frames, mels]` power mel from librosa with the same parameters."""
  mel = librosa.feature.melspectrogram(
    y=signal.astype(np.float64),
    sr=SAMPLE_RATE,
    n_fft=cfg.n_fft,
    hop_length=cfg.hop_length,
    win_length=cfg.win_length,
    window='hann',
    center=True,
    pad_mode='constant',
    power=2.0,
    n_mels=cfg.n_mels,
    fmin=cfg.fmin,
    fmax=cfg.fmax,
  )
  return mel.T


def _padded_batch(signals: list[np.ndarray], total: int):
  audio = np.zeros((len(signals), total), np.float32)
  paddings = np.ones((len(signals), total), np.float32)
  for i, s in enumerate(signals):
    audio[i, : len(s)] = s
    paddings[i, : len(s)] = 0.0
  return audio, paddings


def test_window_matches_librosa(cfg):
  window = librosa.filters.get_window('hann', cfg.win_length, fftbins=True)
  expected = librosa.util.pad_center(window, size=cfg.n_fft)
  np.testing.assert_allclose(stft.fft_window(cfg.n_fft, cfg.win_length), expected, atol=1e-7)


@pytest.mark.filterwarnings('ignore:n_fft=512 is too large')
def test_power_mel_matches_librosa_on_fresh_signals(cfg):
  seed = np.random.SeedSequence().entropy
  rng = np.random.default_rng(seed)
  # Lengths around hop multiples, shorter than n_fft, and a few seconds.
  lengths = [32000, 1600, 1601, 1599, 300, int(rng.integers(5000, 20000))]
  signals = [rng.uniform(-1, 1, n).astype(np.float32) * rng.uniform(0.01, 1) for n in lengths]
  audio, paddings = _padded_batch(signals, max(lengths) + 7)
  power_mel = jax.jit(functools.partial(frontend.power_mel, cfg=cfg, sample_rate=SAMPLE_RATE))
  mel, frame_paddings = power_mel(audio, paddings)
  for i, signal in enumerate(signals):
    expected = _librosa_power_mel(signal, cfg)
    real = int(np.sum(frame_paddings[i] == 0))
    # Frame t is real iff sample t * hop is real; librosa adds a last frame
    # centred just past the end when the length is a multiple of hop.
    assert real == (len(signal) - 1) // cfg.hop_length + 1
    got = np.asarray(mel[i, :real])
    error = np.linalg.norm(got - expected[:real]) / np.linalg.norm(expected[:real])
    assert error < 1e-5, f'seed {seed}, length {len(signal)}: relative error {error}'


def test_log_mel_applies_floor_and_shapes(cfg, log_mel):
  rng = np.random.default_rng(0)
  signal = rng.normal(0, 0.1, 4000).astype(np.float32)
  signal[:2000] = 0.0  # Silence hits the floor.
  audio, paddings = _padded_batch([signal], 4000)
  features, frame_paddings = log_mel(audio, paddings)
  assert features.shape == (1, 1 + 4000 // cfg.hop_length, cfg.n_mels)
  assert frame_paddings.shape == features.shape[:2]
  expected = np.log(np.maximum(_librosa_power_mel(signal, cfg), cfg.log_floor))
  np.testing.assert_allclose(features[0], expected, atol=2e-4)
  assert float(jnp.min(features)) == pytest.approx(np.log(cfg.log_floor), rel=1e-6)


def test_padding_does_not_change_real_frames(log_mel):
  rng = np.random.default_rng(1)
  signal = rng.uniform(-1, 1, 5000).astype(np.float32)
  short_audio, short_paddings = _padded_batch([signal], 5000)
  long_audio, long_paddings = _padded_batch([signal], 9000)
  long_audio[0, 5000:] = rng.uniform(-1, 1, 4000)  # Garbage under the padding.
  short, short_fp = log_mel(short_audio, short_paddings)
  long, long_fp = log_mel(long_audio, long_paddings)
  real = int(np.sum(short_fp == 0))
  assert real == int(np.sum(long_fp == 0)) == 32
  np.testing.assert_array_equal(long_fp[0, :real], 0.0)
  np.testing.assert_array_equal(long_fp[0, real:], 1.0)
  np.testing.assert_allclose(long[0, :real], short[0, :real], rtol=1e-5, atol=1e-5)


def _augment_inputs(batch=3, frames=200, mels=64, lengths=(200, 120, 37)):
  features = jax.random.normal(jax.random.key(7), (batch, frames, mels)) - 5.0
  frame_paddings = (np.arange(frames)[None, :] >= np.array(lengths)[:, None]).astype(np.float32)
  return features, jnp.asarray(frame_paddings), lengths


def test_spec_augment_is_deterministic_per_rng(cfg, augment):
  features, frame_paddings, _ = _augment_inputs()
  a = augment(jax.random.key(0), features, frame_paddings)
  b = augment(jax.random.key(0), features, frame_paddings)
  c = augment(jax.random.key(1), features, frame_paddings)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  cfg.spec_augment = False
  np.testing.assert_array_equal(
    frontend.spec_augment(jax.random.key(0), features, frame_paddings, cfg), features
  )


def test_spec_augment_masks_stay_within_bounds(augment, augment_cfg):
  cfg = augment_cfg
  features, frame_paddings, lengths = _augment_inputs()
  saw_time_mask = saw_freq_mask = False
  for seed in range(20):
    out = np.asarray(augment(jax.random.key(seed), features, frame_paddings))
    masked = out != np.asarray(features)
    for i, length in enumerate(lengths):
      assert not masked[i, length:].any(), 'padded frames were changed'
      real = masked[i, :length]
      freq_bands = real.all(axis=0)  # Bins masked in every real frame.
      time_bands = real.all(axis=1)  # Frames masked in every bin.
      assert freq_bands.sum() <= cfg.freq_masks * cfg.freq_mask_width
      assert time_bands.sum() <= cfg.time_masks * int(cfg.time_mask_ratio * length)
      # Everything masked is in a frequency band or a time band.
      np.testing.assert_array_equal(real, freq_bands[None, :] | time_bands[:, None])
      fill = np.asarray(features[i, :length]).mean()
      np.testing.assert_allclose(out[i, :length][real], fill, rtol=1e-5)
      saw_freq_mask |= freq_bands.any()
      saw_time_mask |= time_bands.any() and not freq_bands.all()
  assert saw_freq_mask and saw_time_mask
