"""Log-mel features and SpecAugment, computed on the device in pure JAX.

The log-mel matches `librosa.feature.melspectrogram` (power 2, `center=True`,
librosa 0.11's default zero `pad_mode='constant'`, periodic Hann window of
`win_length` centred in `n_fft`, Slaney mel filters from
`librosa.filters.mel`), followed by `log(max(mel, log_floor))`.

Padding convention: `paddings` is 1.0 on padded samples. Frame `t` is real
iff its centre sample `t * hop_length` is a real sample; padded samples are
zeroed first, so appending padding never changes the features of real
frames (librosa's own zero centre padding treats the end of a clip the same
way).
"""

import jax
import jax.numpy as jnp
import ml_collections

from aac_jax.audio import clap_frontend, pann_frontend, stft

DEFAULT_SAMPLE_RATE = 16000


def power_mel(
  waveform: jax.Array, paddings: jax.Array, cfg: ml_collections.ConfigDict, sample_rate: int
) -> tuple[jax.Array, jax.Array]:
  """Power mel spectrogram of padded waveforms.

  Args:
    waveform: `[batch, samples]` float.
    paddings: `[batch, samples]`, 1.0 = padding.
    cfg: `config.frontend`.
    sample_rate: Hz of `waveform`.

  Returns:
    `(mel, frame_paddings)`: float32 `[batch, frames, n_mels]` and
    `[batch, frames]`.
  """
  waveform = waveform.astype(jnp.float32) * (1.0 - paddings.astype(jnp.float32))
  frames = stft.frame_signal(waveform, cfg.n_fft, cfg.hop_length)
  spectrum = jnp.fft.rfft(frames * stft.fft_window(cfg.n_fft, cfg.win_length), axis=-1)
  power = jnp.real(spectrum) ** 2 + jnp.imag(spectrum) ** 2
  filters = stft.mel_matrix(sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax)
  mel = jnp.einsum('btf,fm->btm', power, filters, precision=jax.lax.Precision.HIGHEST)
  return mel, stft.frame_paddings_from(paddings, cfg.hop_length)


def log_mel(
  waveform: jax.Array,
  paddings: jax.Array,
  cfg: ml_collections.ConfigDict,
  sample_rate: int | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Log-mel features of padded waveforms.

  Args:
    waveform: `[batch, samples]` float in [-1, 1].
    paddings: `[batch, samples]`, 1.0 = padding.
    cfg: `config.frontend` (`n_fft`, `win_length`, `hop_length`, `n_mels`,
      `fmin`, `fmax`, `log_floor`, `feature_mean`, `feature_std`).
    sample_rate: Hz of `waveform` (`config.dataset.sample_rate`; default 16000).

  Returns:
    `(features, frame_paddings)`: float32 `[batch, frames, n_mels]` with
    `frames = 1 + samples // hop_length` (the normalised log-mel), and
    `[batch, frames]`. With `cfg.kind == 'pann'` (a pretrained tagger's
    front end, set by `aac_jax.models.pretrained_setup`), torchlibrosa's
    dB log-mel (`aac_jax.audio.pann_frontend`); with `cfg.kind == 'clap'`
    (the HTS-AT encoder), CLAP's dB log-mel (`aac_jax.audio.clap_frontend`:
    each clip repeated to `clap_max_length_s`, so every frame is real).
  """
  if sample_rate is None:
    sample_rate = DEFAULT_SAMPLE_RATE
  if cfg.kind == 'pann':
    log, frame_paddings = pann_frontend.pann_log_mel(
      waveform, paddings, pann_settings(cfg, int(sample_rate))
    )
    return normalize_features(log, cfg), frame_paddings
  if cfg.kind == 'clap':
    lengths = jnp.sum(paddings < 0.5, axis=1).astype(jnp.int32)
    log = clap_frontend.log_mel(waveform, lengths, clap_settings(cfg, int(sample_rate)))[:, 0]
    return normalize_features(log, cfg), jnp.zeros(log.shape[:2], jnp.float32)
  mel, frame_paddings = power_mel(waveform, paddings, cfg, int(sample_rate))
  log = jnp.log(jnp.maximum(mel, cfg.log_floor))
  return normalize_features(log, cfg), frame_paddings


def pann_settings(cfg: ml_collections.ConfigDict, sample_rate: int):
  """`PannFrontendSettings` of a `kind = 'pann'` front-end config."""
  if cfg.win_length != cfg.n_fft:
    raise ValueError(
      f'the pann front end needs win_length == n_fft, got {cfg.win_length}, {cfg.n_fft}'
    )
  return pann_frontend.PannFrontendSettings(
    sample_rate=sample_rate,
    n_fft=cfg.n_fft,
    hop_length=cfg.hop_length,
    n_mels=cfg.n_mels,
    fmin=cfg.fmin,
    fmax=cfg.fmax,
    amin=cfg.amin,
  )


def clap_settings(cfg: ml_collections.ConfigDict, sample_rate: int):
  """`ClapFrontendSettings` of a `kind = 'clap'` front-end config (one channel)."""
  if cfg.win_length != cfg.n_fft:
    raise ValueError(
      f'the clap front end needs win_length == n_fft, got {cfg.win_length}, {cfg.n_fft}'
    )
  return clap_frontend.ClapFrontendSettings(
    sample_rate=sample_rate,
    n_mels=cfg.n_mels,
    n_fft=cfg.n_fft,
    hop_length=cfg.hop_length,
    max_length_s=cfg.clap_max_length_s,
    fmin=cfg.fmin,
    fmax=cfg.fmax,
    fusion=cfg.clap_htk,
  )


def normalization(cfg: ml_collections.ConfigDict) -> tuple[float, float]:
  """`(feature_mean, feature_std)` of `config.frontend`, checked.

  A run with `feature_stats = 'measure'` fills both fields from its training
  split (`aac_jax.data.feature_stats`).
  """
  mean = float(cfg.feature_mean)
  std = float(cfg.feature_std)
  if std <= 0:
    raise ValueError(f'frontend.feature_std must be > 0, got {std}')
  return mean, std


def normalize_features(log: jax.Array, cfg: ml_collections.ConfigDict) -> jax.Array:
  """`(log - cfg.feature_mean) / cfg.feature_std` (see `normalization`)."""
  mean, std = normalization(cfg)
  if mean == 0.0 and std == 1.0:
    return log
  return (log - jnp.float32(mean)) * jnp.float32(1.0 / std)


def _band_mask(rng: jax.Array, size: jax.Array, max_width: jax.Array, num: int, axis_len: int):
  """Union of `num` random bands per example, each inside `[0, size)`.

  Args:
    rng: PRNG key.
    size: `[batch]` int, the allowed extent (bands never pass it).
    max_width: `[batch]` int, the widest band (inclusive).
    num: bands per example.
    axis_len: length of the masked axis.

  Returns:
    `[batch, axis_len]` bool, True inside a band.
  """
  width_rng, start_rng = jax.random.split(rng)
  shape = (size.shape[0], num)
  max_width = jnp.minimum(max_width, size)[:, None]
  widths = jax.random.randint(width_rng, shape, 0, max_width + 1)
  starts = jax.random.randint(start_rng, shape, 0, size[:, None] - widths + 1)
  positions = jnp.arange(axis_len)[None, None, :]
  inside = (positions >= starts[..., None]) & (positions < (starts + widths)[..., None])
  return jnp.any(inside, axis=1)


def spec_augment(
  rng: jax.Array, features: jax.Array, frame_paddings: jax.Array, cfg: ml_collections.ConfigDict
) -> jax.Array:
  """SpecAugment frequency and time masks (training only; jittable).

  Masked values are set to the mean of the example's real features, a
  neutral level for log-mel (0 would be a loud power of 1). Padded frames
  are never touched; time masks are at most `time_mask_ratio` of each
  example's real length wide and lie inside it.

  Args:
    rng: PRNG key; the same key gives the same masks.
    features: `[batch, frames, mels]`.
    frame_paddings: `[batch, frames]`, 1.0 = padding.
    cfg: `config.frontend` (`spec_augment`, `freq_masks`,
      `freq_mask_width`, `time_masks`, `time_mask_ratio`).

  Returns:
    `[batch, frames, mels]` masked features (unchanged if disabled).
  """
  if not cfg.spec_augment:
    return features
  batch, frames, mels = features.shape
  real = 1.0 - frame_paddings.astype(features.dtype)
  lengths = jnp.sum(real, axis=1).astype(jnp.int32)
  freq_rng, time_rng = jax.random.split(rng)
  all_bins = jnp.full((batch,), mels, jnp.int32)
  freq = _band_mask(
    freq_rng, all_bins, jnp.full((batch,), cfg.freq_mask_width), cfg.freq_masks, mels
  )
  max_time = jnp.floor(cfg.time_mask_ratio * lengths).astype(jnp.int32)
  time = _band_mask(time_rng, lengths, max_time, cfg.time_masks, frames)
  masked = (freq[:, None, :] | time[:, :, None]) & (real[:, :, None] > 0)
  real_sum = jnp.sum(features * real[:, :, None], axis=(1, 2))
  fill = real_sum / jnp.maximum(lengths * mels, 1).astype(features.dtype)
  return jnp.where(masked, fill[:, None, None].astype(features.dtype), features)
