"""One synthetic example (audio, captions, ground truth) from (seed, split, index).

Each clip's random streams are derived from `(seed, split, index)` alone, so
any clip can be generated on its own, in any order and in any process, and
the same seed always gives the same bytes. The scene, the audio and the
captions use separate child streams: changing the grammar does not change the
audio and vice versa.
"""

import json
import zlib
from typing import Any

import numpy as np

from aac_jax.data.synthetic import captions as captions_lib
from aac_jax.data.synthetic import scenes

SAMPLE_RATE = 16000


def example_id(split: str, index: int) -> str:
  """The stable id of a clip, unique within its split."""
  return f'synthetic_{split}_{index:06d}'


def clip_rngs(seed: int, split: str, index: int) -> tuple[np.random.Generator, ...]:
  """Independent (scene, audio, captions) generators of one clip."""
  split_key = zlib.crc32(split.encode('utf-8'))  # Stable across runs, unlike hash().
  children = np.random.SeedSequence([seed, split_key, index]).spawn(3)
  return tuple(np.random.default_rng(c) for c in children)


def make_example(
  seed: int,
  split: str,
  index: int,
  sample_rate: int = SAMPLE_RATE,
  num_captions: int = captions_lib.NUM_CAPTIONS,
) -> dict[str, Any]:
  """Generates one example in the TFDS record layout.

  Args:
    seed: Dataset seed.
    split: Split name ('train', 'validation', 'test', ...).
    index: Position of the clip in the split.
    sample_rate: Samples per second of `audio`.
    num_captions: Reference captions per clip.

  Returns:
    `{'id': str, 'audio': int16 [samples], 'captions': list[str],
    'events': JSON str}`; `events` is a list of `Event.to_json()` dicts
    sorted by onset.
  """
  scene_rng, audio_rng, caption_rng = clip_rngs(seed, split, index)
  scene = scenes.sample_scene(scene_rng)
  events = [e.to_json() for e in scene.events]
  return {
    'id': example_id(split, index),
    'audio': scenes.render_scene(scene, audio_rng, sample_rate),
    'captions': captions_lib.make_captions(events, caption_rng, num_captions),
    'events': json.dumps(events, sort_keys=True),
  }


def make_example_star(args: tuple[int, str, int, int]) -> dict[str, Any]:
  """`make_example(*args)`, for `multiprocessing.Pool.imap`."""
  return make_example(*args)
