"""Grain input pipelines: infinite shuffled training batches, exact eval passes.

Both read a TFDS split with `tfds.data_source` (no TensorFlow) and emit numpy
batches in the layout of docs/CONTRACTS.md, per process: with P processes,
each one reads its slice of every global batch, `global_batch_size / P`
examples, and the trainer assembles the global batch with
`jax.make_array_from_process_local_data`.

Train: one global order for every topology (`aac_jax.data.global_order`):
the split shuffled with the run's seed, repeated forever, each clip randomly
cropped (or zero padded) to `max_audio_seconds` and its reference(s) drawn
with randomness keyed by the clip's global position. The iterator's state is
that one position (`GlobalBatches.get_state()`), which the checkpoint saves
and any number of processes restores, giving the identical next global batch.

Eval: every clip exactly once, in source order, cropped from its start to
the eval maximum; the last batches are filled with filler examples
(`example_mask` 0, `index` -1) so every process gets the same number of
full-size batches. References stay on the host, in an `EvalSplit`.
"""

import dataclasses
import math
from typing import Any

import grain
import jax
import ml_collections
import numpy as np

from aac_jax.data import clips, embeddings, global_order, mixture, sources
from aac_jax.data.batching import finish, per_process_batch_size
from aac_jax.data.sources import EvalSplit
from aac_jax.data.tokenizer import Tokenizer

__all__ = [
  'EvalSplit',
  'eval_batch_indices',
  'make_eval_batches',
  'train_seed',
  'make_train_iterator',
  'per_process_batch_size',
]


def _process_index_and_count(process_index: int | None, process_count: int | None):
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if not 0 <= index < count:
    raise ValueError(f'process index {index} is not in [0, {count})')
  return index, count


def _eval_max_samples(cfg: ml_collections.ConfigDict) -> int:
  # `max_eval_audio_seconds` <= 0 means the train length.
  seconds = cfg.max_eval_audio_seconds
  if seconds <= 0:
    seconds = cfg.max_audio_seconds
  return clips.seconds_to_samples(seconds, cfg.sample_rate)


def pick_references(
  num_captions: int, captions_per_clip: int, rng: np.random.Generator
) -> np.ndarray:
  """Indices of the references a training example uses.

  One reference (`captions_per_clip == 1`) is drawn at random; more are
  drawn without replacement, in random order, as many as the clip has up
  to `captions_per_clip` (the missing rows become padding). Needs
  `num_captions >= 1` (`_TrainExample` checks it, naming the clip).
  """
  if captions_per_clip == 1:
    return np.array([int(rng.integers(num_captions))])
  return rng.permutation(num_captions)[:captions_per_clip]


@dataclasses.dataclass(frozen=True)
class _TrainExample(grain.transforms.RandomMap):
  """Record -> one training example (random crop, random references)."""

  tokenizer: Tokenizer
  max_samples: int
  max_tokens: int
  captions_per_clip: int = 1

  def random_map(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    captions = record['captions']
    if len(captions) == 0:
      raise ValueError(f'training clip {record["id"]!r} has no caption')
    chosen = pick_references(len(captions), self.captions_per_clip, rng)
    audio = record['audio']
    start = int(rng.integers(max(len(audio) - self.max_samples, 0) + 1))
    waveform, paddings = clips.fit_audio(audio, self.max_samples, start)
    rows = [self._encode(captions[int(i)]) for i in chosen]
    if self.captions_per_clip == 1:
      targets = rows[0]
    else:
      targets = np.zeros((self.captions_per_clip, self.max_tokens), np.int32)  # PAD rows.
      targets[: len(rows)] = np.stack(rows)
    return {'audio': waveform, 'audio_paddings': paddings, 'targets': targets}

  def _encode(self, caption) -> np.ndarray:
    caption = caption.decode('utf-8') if isinstance(caption, bytes) else caption
    return self.tokenizer.encode_targets(caption, self.max_tokens)


@dataclasses.dataclass(frozen=True)
class _MixtureExample(grain.transforms.RandomMap):
  """A mixture's `(entry, record index)` -> training example.

  With task ids (any entry names a task) the example also holds
  `task_tokens`, its entry's first decoder token (-1 = BOS), or its
  record source's (`mixture.record_task_id`).
  """

  sources: tuple[Any, ...]
  example: _TrainExample
  task_ids: tuple[int | dict[str, int], ...] | None

  def random_map(self, position: tuple[int, int], rng: np.random.Generator) -> dict:
    entry, index = position
    record = self.sources[entry][index]
    out = self.example.random_map(record, rng)
    if self.task_ids is not None:
      out['task_tokens'] = np.int32(mixture.record_task_id(self.task_ids[entry], record))
    return out


def mixture_stream(
  cfg: ml_collections.ConfigDict, example: _TrainExample, tokens: list[str]
) -> grain.MapDataset:
  """The infinite global stream of a mixture: element `g` the example at position `g`.

  The order is `mixture.positions` (each entry shuffled with its own seed,
  mixed by weight); crops and references are drawn with randomness keyed
  by `g`, as for one dataset.

  Args:
    cfg: `config.dataset` with a non-empty `mixture`.
    example: the record -> example transform.
    tokens: the vocabulary (holding the task tokens the entries name).
  """
  entries = mixture.parse(cfg)
  if cfg.embeddings_dir:
    raise mixture.MixtureError('dataset.mixture reads audio: it cannot be used with embeddings')
  task_ids = tuple(mixture.task_ids(entries, tokens)) if mixture.tasks(entries) else None
  opened = tuple(sources.open_source(mixture.entry_config(cfg, e), e.split) for e in entries)
  order = mixture.positions([len(s) for s in opened], mixture.weights(entries), train_seed(cfg))
  return order.seed(train_seed(cfg)).random_map(_MixtureExample(opened, example, task_ids))


def captions_per_clip(cfg: ml_collections.ConfigDict) -> int:
  """`cfg.captions_per_clip`, checked."""
  value = int(cfg.captions_per_clip)
  if value < 1:
    raise ValueError(f'dataset.captions_per_clip must be >= 1, got {value}')
  return value


def train_seed(cfg: ml_collections.ConfigDict, stream: int = 0) -> int:
  """The seed of a training order: `cfg.seed` and the stage (0 cross-entropy, 1 SCST)."""
  return int(np.random.SeedSequence([int(cfg.seed), stream]).generate_state(1)[0])


def _train_example(cfg: ml_collections.ConfigDict, tokenizer: Tokenizer) -> _TrainExample:
  return _TrainExample(
    tokenizer=tokenizer,
    max_samples=clips.seconds_to_samples(cfg.max_audio_seconds, cfg.sample_rate),
    max_tokens=int(cfg.max_caption_tokens),
    captions_per_clip=captions_per_clip(cfg),
  )


def make_train_iterator(
  cfg: ml_collections.ConfigDict,
  tokenizer: Tokenizer,
  global_batch_size: int,
  process_index: int | None = None,
  process_count: int | None = None,
) -> global_order.GlobalBatches:
  """This process's infinite training batches, in the global order.

  Args:
    cfg: `config.dataset` (`train_split`, `max_audio_seconds`,
      `max_caption_tokens`, `captions_per_clip`, `sample_rate`,
      `num_workers`, `seed`, ...).
    tokenizer: the caption tokenizer.
    global_batch_size: examples (clips) per step over all processes.
    process_index: this process (default `jax.process_index()`).
    process_count: number of processes (default `jax.process_count()`).

  Returns:
    A `GlobalBatches` iterator of dicts: `audio` and `audio_paddings` float32
    `[b, max_samples]`, `targets` int32 `[b, max_caption_tokens]` (one
    random reference), or `[b, R, max_caption_tokens]` with
    `R = captions_per_clip > 1` (R references, all-PAD rows where a clip has
    fewer), with `b = global_batch_size / process_count`. With
    `cfg.embeddings_dir` (set by `aac_jax.models.pretrained_setup`): `frames`
    float32 `[b, max_frames, dim]` and `frame_paddings` instead of audio.
    With `cfg.mixture` (`aac_jax.data.mixture`): the entries' examples in
    their weights' proportions, plus `task_tokens` int32 `[b]` (the first
    decoder token of each example, -1 = BOS) when an entry names a task. Its
    state (one global position) restores on any process count.
  """
  index, count = _process_index_and_count(process_index, process_count)
  per_process_batch_size(global_batch_size, count)  # Fails early on a bad split.
  if cfg.mixture:
    examples = mixture_stream(cfg, _train_example(cfg, tokenizer), tokenizer.tokens)
    return global_order.GlobalBatches(
      examples, global_batch_size, index, count, int(cfg.num_workers)
    )
  if cfg.embeddings_dir:  # Stored tagger frames instead of audio.
    source, max_frames = embeddings.train_source(cfg)
    transform = embeddings.TrainFramesExample(tokenizer, max_frames, int(cfg.max_caption_tokens))
  else:
    source = sources.open_source(cfg, cfg.train_split)
    transform = _train_example(cfg, tokenizer)
  examples = grain.MapDataset.source(source).seed(train_seed(cfg)).shuffle().repeat()
  return global_order.GlobalBatches(
    examples.random_map(transform), global_batch_size, index, count, int(cfg.num_workers)
  )


def eval_batch_indices(
  num_examples: int, global_batch_size: int, process_index: int, process_count: int
) -> np.ndarray:
  """Assigns clips to one process's eval batches.

  Global batch `k` holds clips `k * B .. k * B + B - 1` (B the global batch
  size); process `p` takes its `p`-th slice of `B / P`, so the batches of all
  processes, put side by side in process order, are the clips in order.

  Args:
    num_examples: clips in the split (N).
    global_batch_size: B.
    process_index: p.
    process_count: P.

  Returns:
    `[ceil(N / B), B / P]` int64 clip indices, -1 for fillers.
  """
  batch_size = per_process_batch_size(global_batch_size, process_count)
  num_batches = math.ceil(num_examples / global_batch_size)
  positions = np.arange(num_batches * global_batch_size).reshape(
    num_batches, process_count, batch_size
  )[:, process_index]
  return np.where(positions < num_examples, positions, -1)


@dataclasses.dataclass(frozen=True)
class _EvalExample(grain.transforms.Map):
  """Clip index -> eval example (a filler for index -1)."""

  source: Any
  max_samples: int

  def map(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    if index < 0:
      waveform = np.zeros((self.max_samples,), np.float32)
      paddings = np.ones((self.max_samples,), np.float32)
    else:
      waveform, paddings = clips.fit_audio(self.source[index]['audio'], self.max_samples)
    return {
      'audio': waveform,
      'audio_paddings': paddings,
      'example_mask': np.float32(index >= 0),
      'index': np.int32(index),
    }


def make_eval_batches(
  cfg: ml_collections.ConfigDict,
  split: str,
  global_batch_size: int,
  process_index: int | None = None,
  process_count: int | None = None,
  max_examples: int = -1,
) -> tuple[EvalSplit, grain.IterDataset]:
  """Builds one process's pass over an eval split.

  Args:
    cfg: `config.dataset`; clips longer than `max_eval_audio_seconds` (if set
      and > 0, else `max_audio_seconds`) are cropped from their start.
    split: TFDS split name.
    global_batch_size: examples per step over all processes.
    process_index: this process (default `jax.process_index()`).
    process_count: number of processes (default `jax.process_count()`).
    max_examples: evaluate the first this many clips only (-1 = all).

  Returns:
    `(eval_split, batches)`: the ids and references of the evaluated clips,
    and a re-iterable dataset of dicts: `audio`, `audio_paddings` float32
    `[b, max_samples]`, `example_mask` float32 `[b]`, `index` int32 `[b]`
    (position in `eval_split`, -1 for fillers). Every process gets
    `ceil(N / global_batch_size)` batches of `b = global_batch_size / P`.
  """
  index, count = _process_index_and_count(process_index, process_count)
  source = sources.open_source(cfg, split)
  eval_split = sources.read_eval_split(source, split, max_examples)
  indices = eval_batch_indices(len(eval_split), global_batch_size, index, count)
  transform = _EvalExample(source=source, max_samples=_eval_max_samples(cfg))
  dataset = grain.MapDataset.source(indices.reshape(-1).tolist()).map(transform)
  batch_size = indices.shape[1]
  return eval_split, finish(dataset, batch_size, int(cfg.num_workers))
