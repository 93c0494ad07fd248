"""Opens the TFDS splits the pipelines read, and reads their captions.

Every builder (synthetic, clotho, audiocaps, custom) stores the records of
docs/CONTRACTS.md; they are read with `tfds.data_source`, never with
TensorFlow. Text comes back as bytes and is decoded here.
"""

import dataclasses
import os

import grain
import ml_collections
import tensorflow_datasets as tfds

from aac_jax.data import registry

# Threads reading records when a whole split is scanned (captions, ids).
_SCAN_THREADS = 8


def dataset_name(cfg: ml_collections.ConfigDict) -> str:
  """Returns the TFDS name (`name` or `name/builder_config`) of `cfg`."""
  builder_config = cfg.builder_config
  return f'{cfg.name}/{builder_config}' if builder_config else cfg.name


def open_source(cfg: ml_collections.ConfigDict, split: str):
  """Opens one split as a random-access source of record dicts.

  Args:
    cfg: `config.dataset`.
    split: TFDS split name (slices like `'train[:10%]'` work too).

  Returns:
    A `tfds` array_record data source; `source[i]` is a dict with `id`
    (bytes), `audio` (int16 `[n]`) and `captions` (list of bytes).

  Raises:
    ValueError: the builder's sample rate differs from `cfg.sample_rate`.
    registry.DatasetNotBuiltError: the dataset is not built and cannot be
      built here.
  """
  registry.ensure_built(cfg)
  source = tfds.data_source(
    dataset_name(cfg), split=split, data_dir=os.path.expanduser(cfg.data_dir), download=False
  )
  stored_rate = (source.dataset_info.metadata or {}).get('sample_rate')
  if stored_rate is not None and int(stored_rate) != int(cfg.sample_rate):
    raise ValueError(
      f'{dataset_name(cfg)} stores audio at {stored_rate} Hz but '
      f'config.dataset.sample_rate is {cfg.sample_rate}'
    )
  return source


def source_dir(source) -> str:
  """Returns the versioned directory holding the split's files."""
  return str(source.dataset_info.data_dir)


def _decode_text(value) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def _id_and_captions(record) -> tuple[str, list[str]]:
  return _decode_text(record['id']), [_decode_text(c) for c in record['captions']]


def scan_ids_and_captions(source, limit: int = -1) -> list[tuple[str, list[str]]]:
  """Reads `(id, captions)` of the first `limit` records (-1 = all), in order.

  The records hold the audio too, so this reads the whole split; threads
  overlap the reads.
  """
  dataset = grain.MapDataset.source(source)
  if limit >= 0:
    dataset = dataset[:limit]
  options = grain.ReadOptions(num_threads=_SCAN_THREADS, prefetch_buffer_size=4 * _SCAN_THREADS)
  return list(dataset.map(_id_and_captions).to_iter_dataset(options))


def load_split_captions(cfg: ml_collections.ConfigDict, split: str) -> list[str]:
  """Returns every raw caption of a split (all references of all clips)."""
  return [c for _, captions in scan_ids_and_captions(open_source(cfg, split)) for c in captions]


@dataclasses.dataclass(frozen=True)
class EvalSplit:
  """Host-side facts about an evaluated split, by clip index.

  Attributes:
    name: split name.
    ids: `[num_clips]` clip ids; `ids[i]` is the clip of eval `index == i`.
    references: `[num_clips]` lists of raw reference captions.
  """

  name: str
  ids: list[str]
  references: list[list[str]]

  def __len__(self) -> int:
    return len(self.ids)


def read_eval_split(source, name: str, max_examples: int = -1) -> EvalSplit:
  """Reads ids and references of the first `max_examples` clips (-1 = all)."""
  records = scan_ids_and_captions(source, limit=max_examples)
  return EvalSplit(name, [i for i, _ in records], [refs for _, refs in records])
