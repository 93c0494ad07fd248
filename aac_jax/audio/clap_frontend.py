"""CLAP's log-mel front end in JAX (what `ClapFeatureExtractor` computes in numpy).

Each clip is brought to `max_length_s` seconds first: a shorter clip is
repeated a whole number of times and zero-padded (`repeatpad`); a longer one
is cut. Then a centred STFT with reflect padding and a periodic Hann window,
power spectrum, mel filter bank, floor 1e-10, decibels (`10 log10`).

- Unfused checkpoints (`enable_fusion` false, `truncation='rand_trunc'`):
  Slaney mel bank; one channel `[batch, 1, frames, mels]`. A long clip is cut
  at its start (the extractor cuts at a random offset, a training
  augmentation; evaluation wants one answer).
- Fused checkpoints (`truncation='fusion'`): HTK mel bank, the clip's mel
  repeated in 4 channels and `is_longer` false. Clips longer than
  `max_length_s` are refused in this mode (`ClapFrontendSettings.check`):
  their random-crop fusion input is not implemented.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from aac_jax.audio import stft


@dataclasses.dataclass(frozen=True)
class ClapFrontendSettings:
  """`preprocessor_config.json` of a CLAP checkpoint (its field names in brackets).

  Attributes:
    sample_rate: Hz the audio must have (`sampling_rate`).
    n_mels: mel bands (`feature_size`).
    n_fft: FFT and window length (`fft_window_size`).
    hop_length: frame step (`hop_length`).
    max_length_s: seconds every clip is brought to (`max_length_s`).
    fmin: lowest mel frequency (`frequency_min`).
    fmax: highest mel frequency (`frequency_max`).
    fusion: `truncation == 'fusion'` (4 channels, HTK mel bank).
  """

  sample_rate: int = 48_000
  n_mels: int = 64
  n_fft: int = 1024
  hop_length: int = 480
  max_length_s: int = 10
  fmin: float = 50.0
  fmax: float = 14_000.0
  fusion: bool = False

  @classmethod
  def from_hf(cls, hf: dict) -> 'ClapFrontendSettings':
    """Reads a `preprocessor_config.json` (as a dict)."""
    if hf.get('padding', 'repeatpad') != 'repeatpad':
      raise ValueError(f'unsupported CLAP padding {hf["padding"]!r} (only repeatpad)')
    if hf.get('truncation', 'fusion') not in ('fusion', 'rand_trunc'):
      raise ValueError(f'unsupported CLAP truncation {hf["truncation"]!r}')
    if hf.get('top_db') is not None:
      raise ValueError(f'unsupported CLAP top_db {hf["top_db"]!r} (only null)')
    return cls(
      sample_rate=int(hf.get('sampling_rate', 48_000)),
      n_mels=int(hf.get('feature_size', 64)),
      n_fft=int(hf.get('fft_window_size', 1024)),
      hop_length=int(hf.get('hop_length', 480)),
      max_length_s=int(hf.get('max_length_s', 10)),
      fmin=float(hf.get('frequency_min', 0.0)),
      fmax=float(hf.get('frequency_max', 14_000.0)),
      fusion=hf.get('truncation', 'fusion') == 'fusion',
    )

  @property
  def max_samples(self) -> int:
    return self.max_length_s * self.sample_rate

  @property
  def num_frames(self) -> int:
    return stft.num_frames(self.max_samples, self.hop_length)


def repeat_pad(waveform: jax.Array, lengths: jax.Array, max_samples: int) -> jax.Array:
  """Each clip repeated a whole number of times, zero-padded (or cut) to `max_samples`.

  Args:
    waveform: `[batch, samples]`; samples past a clip's length are ignored.
    lengths: int `[batch]` real samples per clip.
    max_samples: output length.

  Returns:
    `[batch, max_samples]`.
  """
  n = jnp.clip(lengths, 1, max_samples)[:, None]
  index = jnp.arange(max_samples)[None, :]
  repeats = max_samples // n
  picked = jnp.take_along_axis(waveform, jnp.minimum(index % n, waveform.shape[1] - 1), axis=1)
  return jnp.where(index < repeats * n, picked, 0.0)


def log_mel(waveform: jax.Array, lengths: jax.Array, settings: ClapFrontendSettings) -> jax.Array:
  """CLAP's input features.

  Args:
    waveform: float `[batch, samples]` at `settings.sample_rate`, padded at the end.
    lengths: int `[batch]` real samples per clip.
    settings: the checkpoint's front end.

  Returns:
    `[batch, channels, frames, n_mels]` dB log-mel, channels 4 with fusion, else 1;
    `frames = 1 + max_samples // hop_length`.
  """
  s = settings
  x = repeat_pad(waveform.astype(jnp.float32), lengths, s.max_samples)
  half = s.n_fft // 2
  x = jnp.pad(x, ((0, 0), (half, half)), mode='reflect')
  frames = stft.slice_frames(x, s.n_fft, s.hop_length, s.num_frames)
  spectrum = jnp.fft.rfft(frames * stft.fft_window(s.n_fft, s.n_fft), axis=-1)
  power = jnp.real(spectrum) ** 2 + jnp.imag(spectrum) ** 2
  filters = stft.mel_matrix(s.sample_rate, s.n_fft, s.n_mels, s.fmin, s.fmax, htk=s.fusion)
  mel = jnp.matmul(power, filters, precision=jax.lax.Precision.HIGHEST)
  db = 10.0 * jnp.log10(jnp.maximum(mel, 1e-10))
  channels = 4 if s.fusion else 1
  return jnp.broadcast_to(db[:, None], (db.shape[0], channels, *db.shape[1:]))


def check_lengths(lengths: np.ndarray, settings: ClapFrontendSettings) -> None:
  """Refuses clips the fused front end cannot take (longer than `max_length_s`)."""
  if settings.fusion and np.max(lengths, initial=0) > settings.max_samples:
    raise ValueError(
      f'a clip of {np.max(lengths) / settings.sample_rate:.1f} s exceeds this fused CLAP '
      f"model's {settings.max_length_s} s; its random-crop fusion input is not implemented: "
      'cut clips first or use an unfused checkpoint'
    )
