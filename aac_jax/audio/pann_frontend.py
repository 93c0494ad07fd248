"""The torchlibrosa log-mel front end of PANNs CNN14 and the AudioSet ConvNeXt, in JAX.

Both pretrained taggers compute their input with torchlibrosa: a centred STFT
with *reflect* padding (`pad_mode='reflect'`), a periodic Hann window, the
power spectrum, a Slaney mel bank from `librosa.filters.mel`, then
`10 * log10(max(mel, amin))` (`ref = 1`, no `top_db`). The settings differ
per model and travel with a converted checkpoint (`PannFrontendSettings`).

Quiet bins: a float32 FFT's rounding error is relative to the whole frame
(about 1e-7 of its loudest bin), so in a frame with loud low frequencies the
bins 110 dB or more below them (the int16 noise floor of a real recording's
high bands, about -95 dB) were up to 0.26 dB off (torchlibrosa's float32
DFT: 0.03-0.2 dB). The window, the FFT and the power are therefore computed in
float64 where the backend has it (CPU, GPU: `jax.enable_x64` around those
three operations only); the mel bank and the log stay float32 (sums of
positive terms and a log lose nothing there). Backends without float64 (TPU)
keep the float32 spectrum.

Padded batches: upstream reflects the end of the *batch tensor*, so a short
clip in a zero-padded batch sees zeros where it would see its own reflection
alone. Here every clip is reflected at its own end, so each real frame equals
what upstream computes for that clip by itself; a clip of `n` samples has
`1 + n // hop` real frames (upstream's own count for that clip).
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import librosa
import numpy as np

from aac_jax.audio import stft


@dataclasses.dataclass(frozen=True)
class PannFrontendSettings:
  """torchlibrosa `Spectrogram` + `LogmelFilterBank` settings.

  Attributes:
    sample_rate: Hz the model was trained at.
    n_fft: FFT size (= window length in both models).
    hop_length: STFT hop in samples.
    n_mels: mel bins.
    fmin: lowest mel frequency (Hz).
    fmax: highest mel frequency (Hz).
    amin: floor of the power before `10 * log10`.
  """

  sample_rate: int = 32000
  n_fft: int = 1024
  hop_length: int = 320
  n_mels: int = 64
  fmin: float = 50.0
  fmax: float = 14000.0
  amin: float = 1e-10

  def to_dict(self) -> dict[str, Any]:
    """Plain JSON-able dict."""
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> 'PannFrontendSettings':
    """Inverse of `to_dict`; unknown keys are an error."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f'unknown front-end settings {unknown}; known: {sorted(known)}')
    return cls(**values)


def reflect_each_clip(waveform: jax.Array, lengths: jax.Array, pad: int) -> jax.Array:
  """Pads every clip by reflection at its own start and end (as torch `reflect`).

  Args:
    waveform: `[batch, samples]`.
    lengths: `[batch]` int, real samples of each clip (each > `pad`).
    pad: samples added on each side.

  Returns:
    `[batch, samples + 2 * pad]`: position `pad + i` holds sample `i` for
    `i < length`, `length - 2 - (i - length)` past it, `-i` before 0.
  """
  samples = waveform.shape[1]
  positions = jnp.arange(samples + 2 * pad)[None, :] - pad  # [1, padded]
  last = lengths[:, None] - 1
  index = jnp.where(positions < 0, -positions, positions)
  index = jnp.where(index > last, 2 * last - index, index)
  index = jnp.clip(index, 0, samples - 1)
  return jnp.take_along_axis(waveform, index, axis=1)


def pann_log_mel(
  waveform: jax.Array, paddings: jax.Array, settings: PannFrontendSettings
) -> tuple[jax.Array, jax.Array]:
  """torchlibrosa log-mel of padded waveforms.

  Args:
    waveform: `[batch, samples]` float at `settings.sample_rate`.
    paddings: `[batch, samples]`, 1.0 = padding (trailing).
    settings: the model's front-end settings.

  Returns:
    `(log_mel, frame_paddings)`: float32 `[batch, frames, n_mels]` in dB with
    `frames = 1 + samples // hop_length`, and `[batch, frames]` (frame `t` of
    a clip of `n` samples is real iff `t <= n // hop_length`).
  """
  waveform = waveform.astype(jnp.float32)
  lengths = jnp.sum(paddings < 0.5, axis=1).astype(jnp.int32)
  frames_count = stft.num_frames(waveform.shape[1], settings.hop_length)
  padded = reflect_each_clip(waveform, lengths, settings.n_fft // 2)
  frames = stft.slice_frames(padded, settings.n_fft, settings.hop_length, frames_count)
  power = power_spectrum(frames, settings.n_fft)
  filters = stft.mel_matrix(
    settings.sample_rate, settings.n_fft, settings.n_mels, settings.fmin, settings.fmax
  )
  mel = jnp.einsum('btf,fm->btm', power, filters, precision=jax.lax.Precision.HIGHEST)
  log_mel = 10.0 * jnp.log10(jnp.maximum(mel, settings.amin))
  real_frames = 1 + lengths // settings.hop_length
  frame_paddings = (jnp.arange(frames_count)[None, :] >= real_frames[:, None]).astype(jnp.float32)
  return log_mel, frame_paddings


# Backends whose XLA has float64 FFTs (`jax.default_backend()` names).
FLOAT64_BACKENDS = ('cpu', 'gpu', 'cuda', 'rocm')


@functools.lru_cache(maxsize=8)
def _hann64(n_fft: int) -> np.ndarray:
  """torchlibrosa's window (`librosa.filters.get_window('hann', n_fft, fftbins=True)`), float64."""
  window = librosa.filters.get_window('hann', n_fft, fftbins=True).astype(np.float64)
  window.setflags(write=False)
  return window


def power_spectrum(frames: jax.Array, n_fft: int) -> jax.Array:
  """`|rfft(frames * hann)|^2`, computed in float64 where the backend has it.

  Args:
    frames: `[batch, frames, n_fft]` float32 (exact copies of the samples).
    n_fft: FFT size (= window length).

  Returns:
    `[batch, frames, n_fft // 2 + 1]` float32 power; in a float64 backend each
    value is the float64 power rounded once (see the module docstring).
  """
  if jax.default_backend() not in FLOAT64_BACKENDS:
    spectrum = jnp.fft.rfft(frames * stft.fft_window(n_fft, n_fft), axis=-1)
    return jnp.real(spectrum) ** 2 + jnp.imag(spectrum) ** 2
  with jax.enable_x64(True):
    spectrum = jnp.fft.rfft(frames.astype(jnp.float64) * _hann64(n_fft), axis=-1)
    power = jnp.real(spectrum) ** 2 + jnp.imag(spectrum) ** 2
    return power.astype(jnp.float32)


def expected_mel_bank(settings: PannFrontendSettings) -> np.ndarray:
  """`[n_fft // 2 + 1, n_mels]` mel bank these settings use (torchlibrosa's `melW`)."""
  return stft.mel_matrix(
    settings.sample_rate, settings.n_fft, settings.n_mels, settings.fmin, settings.fmax
  )
