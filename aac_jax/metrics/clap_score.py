"""CLAP similarity of predicted captions: to the clip's audio and to its references.

- `clap_sim`: cosine of the prediction's and the clip's CLAP embeddings
  (reference-free; needs the audio files).
- `clap_sim_refs`: mean over the clip's references of the cosine of the
  prediction's and the reference's CLAP text embeddings.

Captions are embedded as written (CLAP was trained on cased, punctuated
captions), not PTB-tokenized. Audio is read with `data.audio_io.load_clip`
at the model's rate (48 kHz for the LAION checkpoints). A metric that cannot
be computed comes back with the reason instead of a score.
"""

import dataclasses
import functools
import os
from collections.abc import Sequence

import numpy as np

NAMES = ('clap_sim', 'clap_sim_refs')


@dataclasses.dataclass(frozen=True)
class ClapOptions:
  """Where the CLAP model and the clips' audio are.

  Attributes:
    clap_dir: CLAP folder (`tools/convert_checkpoint.py clap`); '' = none given.
    audio_paths: one audio file per evaluated clip, in order; empty: no
      `clap_sim` (only `clap_sim_refs`).
    batch_size: clips per forward pass.
  """

  clap_dir: str = ''
  audio_paths: tuple[str, ...] = ()
  batch_size: int = 16


@functools.lru_cache(maxsize=2)
def shared_embedder(clap_dir: str, batch_size: int):
  """One loaded CLAP model per folder (loading and compiling cost seconds)."""
  from aac_jax.metrics.clap import embedder

  return embedder.load(clap_dir, batch_size=batch_size)


def read_clips(paths: Sequence[str], sample_rate: int) -> list[np.ndarray]:
  """Mono float32 clips at `sample_rate`; raises ValueError naming the first bad file."""
  from aac_jax.data import audio_io

  clips = []
  for path in paths:
    try:
      decoded = audio_io.load_clip(path, sample_rate)
    except audio_io.AudioError as e:
      raise ValueError(f'{path}: {e}') from e
    clips.append(decoded.audio.astype(np.float32) / 32768.0)
  return clips


def clap_scores(
  predictions: Sequence[str], references: Sequence[Sequence[str]], options: ClapOptions
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """Per-clip CLAP similarities and the reasons for those that are missing.

  Args:
    predictions: [n] predicted captions.
    references: [n] lists of reference captions.
    options: model folder and audio files.

  Returns:
    `(per_clip, unavailable)`: metric -> float64 [n]; metric -> reason.
  """
  from aac_jax.metrics.clap import embedder

  if not options.clap_dir:
    return {}, {k: f'no CLAP folder given (--clap_dir): {embedder.HINT}' for k in NAMES}
  try:
    model = shared_embedder(os.path.expanduser(options.clap_dir), options.batch_size)
  except embedder.ModelUnavailable as e:
    return {}, {k: str(e) for k in NAMES}
  texts = list(dict.fromkeys([*predictions, *(r for refs in references for r in refs)]))
  table = dict(zip(texts, model.text(texts), strict=True))
  pred = np.stack([table[p] for p in predictions]) if predictions else np.zeros((0, 1))
  per_clip, unavailable = {}, {}
  per_clip['clap_sim_refs'] = np.array(
    [np.mean([table[r] @ p for r in refs]) for p, refs in zip(pred, references, strict=True)],
    np.float64,
  )
  if not options.audio_paths:
    unavailable['clap_sim'] = 'no audio files given (--clap_audio_dir)'
    return per_clip, unavailable
  if len(options.audio_paths) != len(predictions):
    raise ValueError(f'{len(options.audio_paths)} audio files for {len(predictions)} clips')
  try:
    audio = model.audio(read_clips(options.audio_paths, model.settings.sample_rate))
  except ValueError as e:
    unavailable['clap_sim'] = f'audio unreadable: {e}'
    return per_clip, unavailable
  per_clip['clap_sim'] = np.einsum('nd,nd->n', pred, audio).astype(np.float64)
  return per_clip, unavailable
