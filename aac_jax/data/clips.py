"""Fixed-length clips from stored waveforms: what every reader of the records cuts.

The training and evaluation pipelines, the SCST data, the feature statistics
and the embedding extraction all turn a stored int16 waveform into a float32
clip of a fixed number of samples with its paddings (1.0 = pad).
"""

import numpy as np


def fit_audio(audio: np.ndarray, num_samples: int, start: int = 0):
  """Cuts `num_samples` from `start` or zero-pads to that length.

  Args:
    audio: `[n]` int16 waveform.
    num_samples: output length.
    start: first sample kept (only used when `n > num_samples`).

  Returns:
    `(waveform, paddings)`, both float32 `[num_samples]`: the samples scaled
    by 1/32768 (zeros after the clip), and 1.0 where a sample is padding.
  """
  clip = np.asarray(audio)[start : start + num_samples]
  waveform = np.zeros((num_samples,), np.float32)
  waveform[: len(clip)] = clip.astype(np.float32) / 32768.0
  paddings = np.ones((num_samples,), np.float32)
  paddings[: len(clip)] = 0.0
  return waveform, paddings


def seconds_to_samples(seconds: float, sample_rate: int) -> int:
  """Samples in `seconds` of audio at `sample_rate` (rounded)."""
  return int(round(seconds * sample_rate))
