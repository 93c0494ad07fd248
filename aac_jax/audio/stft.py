"""Framing, windows and mel filter banks: the pieces both log-mel front ends share.

`aac_jax.audio.frontend` (librosa's log-mel) and `aac_jax.audio.pann_frontend`
(torchlibrosa's dB log-mel of the pretrained taggers) build on these.
Padding convention: `paddings` is 1.0 on padded samples; frame `t` is real
iff its centre sample `t * hop_length` is a real sample.
"""

import functools

import jax
import jax.numpy as jnp
import librosa
import numpy as np


@functools.lru_cache(maxsize=16)
def mel_matrix(
  sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None, htk: bool = False
) -> np.ndarray:
  """Returns the `[n_fft // 2 + 1, n_mels]` float32 mel filter bank.

  Slaney scale and area normalisation (librosa's default), or with `htk` the
  HTK scale without normalisation (torchaudio's default, CLAP's fusion models).
  """
  filters = librosa.filters.mel(
    sr=sample_rate,
    n_fft=n_fft,
    n_mels=n_mels,
    fmin=fmin,
    fmax=fmax,
    htk=htk,
    norm=None if htk else 'slaney',
    dtype=np.float32,
  )
  filters = filters.T.copy()
  filters.setflags(write=False)
  return filters


@functools.lru_cache(maxsize=16)
def fft_window(n_fft: int, win_length: int) -> np.ndarray:
  """Returns the periodic Hann window of `win_length`, zero-padded to `[n_fft]`."""
  if win_length > n_fft:
    raise ValueError(f'win_length {win_length} exceeds n_fft {n_fft}')
  n = np.arange(win_length, dtype=np.float64)
  window = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / win_length)
  left = (n_fft - win_length) // 2
  window = np.pad(window, (left, n_fft - win_length - left)).astype(np.float32)
  window.setflags(write=False)
  return window


def num_frames(num_samples: int, hop_length: int) -> int:
  """Frames of a centred STFT over `num_samples` samples."""
  return 1 + num_samples // hop_length


def frame_signal(waveform: jax.Array, n_fft: int, hop_length: int) -> jax.Array:
  """Cuts centred, overlapping frames with zero padding at both ends.

  Slicing whole hops instead of gathering sample indices keeps this cheap on
  accelerators.

  Args:
    waveform: `[batch, samples]`.
    n_fft: frame length.
    hop_length: frame step.

  Returns:
    `[batch, frames, n_fft]` with `frames = 1 + samples // hop_length`.
  """
  samples = waveform.shape[1]
  frames = num_frames(samples, hop_length)
  left = n_fft // 2
  # One pad to exactly what `slice_frames` reads (its own pad is then empty).
  total = (frames - 1 + -(-n_fft // hop_length)) * hop_length
  padded = jnp.pad(waveform, ((0, 0), (left, max(total - left - samples, 0))))[:, :total]
  return slice_frames(padded, n_fft, hop_length, frames)


def slice_frames(padded: jax.Array, n_fft: int, hop_length: int, frames: int) -> jax.Array:
  """Frames `t * hop_length : t * hop_length + n_fft` of an already padded signal.

  Args:
    padded: `[batch, samples]`, at least `(frames - 1) * hop_length + n_fft` long.
    n_fft: frame length.
    hop_length: frame step.
    frames: number of frames to cut.

  Returns:
    `[batch, frames, n_fft]`.
  """
  batch = padded.shape[0]
  hops_per_frame = -(-n_fft // hop_length)
  total = (frames - 1 + hops_per_frame) * hop_length
  padded = jnp.pad(padded, ((0, 0), (0, max(total - padded.shape[1], 0))))[:, :total]
  hops = padded.reshape(batch, frames - 1 + hops_per_frame, hop_length)
  pieces = [hops[:, i : i + frames] for i in range(hops_per_frame)]
  return jnp.concatenate(pieces, axis=-1)[..., :n_fft]


def frame_paddings_from(paddings: jax.Array, hop_length: int) -> jax.Array:
  """Frame paddings: frame `t` is padding iff sample `t * hop` is (or is past the end).

  Args:
    paddings: `[batch, samples]`, 1.0 = padding.
    hop_length: frame step.

  Returns:
    `[batch, 1 + samples // hop_length]` float32.
  """
  frames = num_frames(paddings.shape[1], hop_length)
  centres = paddings[:, ::hop_length].astype(jnp.float32)  # Samples 0, hop, ... inside the clip.
  return jnp.pad(centres, ((0, 0), (0, frames - centres.shape[1])), constant_values=1.0)
