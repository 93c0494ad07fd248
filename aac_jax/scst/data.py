"""SCST input: training clips that carry their index, and every reference per clip.

The cross-entropy pipeline (`aac_jax.data.pipeline`) draws one reference
caption per clip as the target. SCST needs no target, but its reward scores
a sampled caption against *all* references of the clip. So the SCST train
batches carry `index`, the clip's position in the train split, and the host
keeps the split's references in an `EvalSplit` (`read_train_references`),
looked up by that index.

Batches follow one global order, like the CE pipeline's
(`aac_jax.data.global_order`): shuffled, repeated forever, each clip randomly
cropped (or zero padded) to `max_audio_seconds` with randomness keyed by its
global position, each process reading its slice of every global batch. The
iterator's state is one global position, saved in the run's orbax checkpoint
(`aac_jax.train.checkpointing`) and restored on any process count.
"""

import dataclasses
from typing import Any

import grain
import jax
import ml_collections
import numpy as np

from aac_jax.data import clips, global_order, pipeline, sources


def read_train_references(cfg: ml_collections.ConfigDict) -> sources.EvalSplit:
  """Ids and raw reference captions of every train clip, in source order.

  Args:
    cfg: `config.dataset` (`train_split`).

  Returns:
    An `EvalSplit`; `references[i]` belongs to the clip of batch `index == i`.

  Raises:
    ValueError: if a train clip has no caption (nothing to reward against).
  """
  split = sources.read_eval_split(sources.open_source(cfg, cfg.train_split), cfg.train_split)
  empty = [clip_id for clip_id, refs in zip(split.ids, split.references, strict=True) if not refs]
  if empty:
    raise ValueError(f'{len(empty)} train clips have no caption, e.g. {empty[:3]}')
  return split


@dataclasses.dataclass(frozen=True)
class _IndexedClip(grain.transforms.RandomMap):
  """Clip index -> `audio`, `audio_paddings` (random crop), `index` and,
  with a tokenizer, `targets` (one random reference, as the CE pipeline's)."""

  source: Any
  max_samples: int
  tokenizer: Any = None
  max_tokens: int = 0

  def random_map(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    index = int(index)
    record = self.source[index]
    audio = record['audio']
    start = int(rng.integers(max(len(audio) - self.max_samples, 0) + 1))
    waveform, paddings = clips.fit_audio(audio, self.max_samples, start)
    out = {'audio': waveform, 'audio_paddings': paddings, 'index': np.int32(index)}
    if self.tokenizer is not None:
      captions = record['captions']
      caption = captions[int(pipeline.pick_references(len(captions), 1, rng)[0])]
      caption = caption.decode('utf-8') if isinstance(caption, bytes) else caption
      out['targets'] = self.tokenizer.encode_targets(caption, self.max_tokens)
    return out


def make_scst_train_iterator(
  cfg: ml_collections.ConfigDict,
  global_batch_size: int,
  process_index: int | None = None,
  process_count: int | None = None,
  tokenizer: Any = None,
) -> global_order.GlobalBatches:
  """This process's infinite, checkpointable SCST train iterator.

  Args:
    cfg: `config.dataset` (`train_split`, `max_audio_seconds`,
      `sample_rate`, `num_workers`, `seed`).
    global_batch_size: clips per step over all processes.
    process_index: this process (default `jax.process_index()`).
    process_count: number of processes (default `jax.process_count()`).
    tokenizer: with one, batches also carry `targets` int32
      `[b, max_caption_tokens]`, one random reference per clip (for
      `scst.ce_weight`); the crops are the same either way.

  Returns:
    A `GlobalBatches` iterator of dicts: `audio`, `audio_paddings` float32
    `[b, max_samples]` and `index` int32 `[b]` (position in the train
    split), `b = global_batch_size / process_count`.
  """
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  source = sources.open_source(cfg, cfg.train_split)
  transform = _IndexedClip(
    source=source,
    max_samples=int(round(cfg.max_audio_seconds * cfg.sample_rate)),
    tokenizer=tokenizer,
    max_tokens=int(cfg.max_caption_tokens),
  )
  seed = pipeline.train_seed(cfg, stream=1)
  examples = grain.MapDataset.range(len(source)).seed(seed).shuffle().repeat()
  return global_order.GlobalBatches(
    examples.random_map(transform), global_batch_size, index, count, int(cfg.num_workers)
  )
