"""Checks the torchlibrosa front-end tensors a tagger checkpoint carries.

Both published files hold the STFT kernels and the mel bank as parameters;
they are not converted (the JAX front end recomputes them) but must match
the settings written beside the params, else the file is refused.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from aac_jax.audio.pann_frontend import PannFrontendSettings, expected_mel_bank
from aac_jax.convert import mapping
from aac_jax.convert.mapping import ConversionError

STFT_KEYS = (
  'spectrogram_extractor.stft.conv_real.weight',
  'spectrogram_extractor.stft.conv_imag.weight',
)
MEL_KEY = 'logmel_extractor.melW'


def frontend_shapes(settings: PannFrontendSettings) -> dict[str, tuple[int, ...]]:
  """Torch keys and shapes of the front-end tensors for `settings`."""
  bins = settings.n_fft // 2 + 1
  shapes = {key: (bins, 1, settings.n_fft) for key in STFT_KEYS}
  shapes[MEL_KEY] = (bins, settings.n_mels)
  return shapes


def check_mel_bank(state_dict: Mapping[str, np.ndarray], settings: PannFrontendSettings) -> None:
  """Refuses a file whose mel bank is not the one `settings` compute."""
  expected = expected_mel_bank(settings)
  if not np.allclose(state_dict[MEL_KEY], expected, rtol=1e-4, atol=1e-7):
    worst = float(np.max(np.abs(state_dict[MEL_KEY] - expected)))
    raise ConversionError(
      f'{MEL_KEY!r} differs from the mel bank of {settings} (max abs difference {worst:.3g}); '
      'the file was made with other front-end settings.'
    )


def convert_tagger(
  state_dict: Mapping[str, np.ndarray],
  name: str,
  label: str,
  settings: Any,
  entries: list[mapping.Entry],
  linen_shapes: Any,
  frontend: PannFrontendSettings,
) -> tuple[dict[str, Any], dict[str, Any]]:
  """`(params, settings_json)` of an AudioSet tagger file with a torchlibrosa front end.

  Args:
    state_dict: the file's tensors.
    name: the encoder name written into the settings (`model.encoder`).
    label: the model named in refusal messages.
    settings: the architecture dataclass (written as `architecture`).
    entries: torch key -> Linen path mapping (`mapping.convert_state_dict`).
    linen_shapes: the Linen parameter shapes to fill.
    frontend: the front end the file must have been made with.
  """
  params = mapping.convert_state_dict(
    state_dict, entries, linen_shapes, label, frontend_shapes(frontend)
  )
  check_mel_bank(state_dict, frontend)
  info = {
    'encoder': name,
    'frontend': frontend.to_dict(),
    'architecture': dataclasses.asdict(settings),
  }
  return params, info
