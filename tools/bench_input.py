"""Measures the training input pipeline's throughput (clips/s) on this machine.

Runs the same Grain training pipeline with each worker count in `--workers`
(default 0 and 2), one after the other in this process, and prints one table.
The dataset is `--dataset` in `--data_dir` where it is built there; otherwise
a toy dataset with realistic clip lengths (4-10 s at 16 kHz) is built into a
temporary folder. Each worker count also runs a weighted mixture
(`config.dataset.mixture`, task tokens on), side by side with the single
dataset: `--mixture` entries, or by default three toy splits (0.5, 0.3, 0.2).

  python tools/bench_input.py
  python tools/bench_input.py --dataset=clotho --data_dir=~/tensorflow_datasets \
      --mixture=clotho_aac:development:0.3:clotho,audiocaps_aac:train:0.7:audiocaps
"""

import os
import pathlib
import sys
import tempfile
import time

from absl import app, flags, logging

_REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_REPO), str(_REPO / 'tests')]

import tensorflow_datasets as tfds  # noqa: E402
import toy_dataset  # noqa: E402  (the test fixture builder, found via sys.path)

from aac_jax import config_path  # noqa: E402
from aac_jax.data import mixture, pipeline, sources  # noqa: E402
from aac_jax.data import tokenizer as tokenizer_lib  # noqa: E402
from aac_jax.data.tokenizer import Tokenizer  # noqa: E402
from configs import base  # noqa: E402

_DATASET = flags.DEFINE_string('dataset', 'synthetic_aac', 'TFDS name (name or name/config).')
_DATA_DIR = flags.DEFINE_string('data_dir', '~/tensorflow_datasets', 'TFDS data_dir.')
_SPLIT = flags.DEFINE_string('split', 'train', 'Split read by the training pipeline.')
_BATCH = flags.DEFINE_integer('batch_size', 32, 'Batch size (one process).')
_SECONDS = flags.DEFINE_float('max_audio_seconds', 10.0, 'Crop / pad length.')
_WORKERS = flags.DEFINE_list('workers', ['0', '2'], 'Worker counts to compare.')
_WARMUP = flags.DEFINE_integer('warmup_batches', 3, 'Untimed batches after the first.')
_BATCHES = flags.DEFINE_integer('batches', 30, 'Timed batches per worker count.')
_TOY_CLIPS = flags.DEFINE_integer('toy_clips', 256, 'Clips in the fallback toy dataset.')
_MIXTURE = flags.DEFINE_list(
  'mixture',
  [],
  'Mixture entries dataset:split:weight:task (default: three toy splits).',
)
_TOY_MIX = (('train', 0.5, 'a'), ('train_b', 0.3, 'b'), ('train_c', 0.2, 'c'))
_TOY_CONFIG = flags.DEFINE_enum(
  'toy_config',
  'plain',
  ['plain', 'bytes'],
  "Fallback toy dataset: plain = the contract's Tensor, bytes = raw int16 encoding.",
)


def _dataset_config(name: str, data_dir: str):
  cfg = base.get_dataset_config()
  cfg.name, _, cfg.builder_config = name.partition('/')
  cfg.data_dir, cfg.train_split, cfg.build_if_missing = data_dir, _SPLIT.value, False
  cfg.max_audio_seconds = _SECONDS.value
  return cfg


def _choose_dataset(tmp_dir: str):
  """Returns `(config.dataset, description, mixture entries)` of the data to read."""
  cfg = _dataset_config(_DATASET.value, _DATA_DIR.value)
  entries = tuple(_parse_entry(text) for text in _MIXTURE.value)
  try:
    source = sources.open_source(cfg, cfg.train_split)
    return cfg, f'{_DATASET.value} ({len(source)} clips) in {cfg.data_dir}', entries
  except Exception as e:  # noqa: BLE001 - any failure to open means "not built here".
    print(f'{_DATASET.value} is not readable in {cfg.data_dir} ({type(e).__name__}); using toy_aac')
  name = toy_dataset.build_toy_dataset(
    tmp_dir,
    config=_TOY_CONFIG.value,
    splits={split: _TOY_CLIPS.value for split, _, _ in _TOY_MIX},
    min_seconds=4.0,
    max_seconds=10.0,
  )
  cfg = _dataset_config(name, tmp_dir)
  entries = entries or tuple((name, split, weight, task) for split, weight, task in _TOY_MIX)
  return cfg, f'{name} ({_TOY_CLIPS.value} clips of 4-10 s at 16 kHz, temporary)', entries


def _parse_entry(text: str) -> tuple[str, str, float, str]:
  dataset, split, weight, task = text.split(':')
  return dataset, split, float(weight), task


def _tokenizer(cfg) -> Tokenizer:
  """The vocabulary of the single dataset, or of the mixture with its task tokens."""
  if cfg.mixture:
    return tokenizer_lib.load_or_build(cfg, None)
  return Tokenizer.build(sources.load_split_captions(cfg, cfg.train_split))


def _measure(cfg, tokenizer, num_workers: int) -> dict[str, float]:
  """Times one pipeline: start-up to the first batch, then steady state."""
  cfg = cfg.copy_and_resolve_references()
  cfg.num_workers = num_workers
  start = time.perf_counter()
  iterator = pipeline.make_train_iterator(cfg, tokenizer, _BATCH.value, 0, 1)
  next(iterator)
  first = time.perf_counter() - start
  for _ in range(_WARMUP.value):
    next(iterator)
  start = time.perf_counter()
  for _ in range(_BATCHES.value):
    batch = next(iterator)
  elapsed = time.perf_counter() - start
  megabytes = sum(v.nbytes for v in batch.values()) * _BATCHES.value / 1e6
  del batch  # Worker batches live in shared memory: release them before closing.
  iterator.close()
  return {
    'first': first,
    'clips_per_s': _BATCHES.value * _BATCH.value / elapsed,
    'batches_per_s': _BATCHES.value / elapsed,
    'mb_per_s': megabytes / elapsed,
  }


def _print_table(description: str, results: dict[tuple[str, int], dict[str, float]]) -> None:
  print(f'\nTraining input pipeline on {description}')
  print(
    f'batch {_BATCH.value}, crop {_SECONDS.value:g} s, {_BATCHES.value} timed batches '
    f'after {_WARMUP.value} warm-up, {os.cpu_count()} CPUs, load average '
    f'{os.getloadavg()[0]:.1f} (other jobs share the CPUs)\n'
  )
  header = (
    f'| {"pipeline":>8} | {"workers":>7} | {"first batch (s)":>15} | {"batches/s":>9} '
    f'| {"clips/s":>8} | {"MB/s":>7} |'
  )
  print(header)
  print('|' + '|'.join('-' * (len(c)) for c in header.split('|')[1:-1]) + '|')
  for (kind, workers), r in results.items():
    print(
      f'| {kind:>8} | {workers:>7} | {r["first"]:>15.2f} | {r["batches_per_s"]:>9.2f} '
      f'| {r["clips_per_s"]:>8.1f} | {r["mb_per_s"]:>7.1f} |'
    )
  for workers in sorted({w for _, w in results}):
    single, mixed = results[('single', workers)], results[('mixture', workers)]
    ratio = mixed['clips_per_s'] / single['clips_per_s']
    print(f'{workers} workers: mixture / single dataset = {ratio:.2f}x clips/s')


def main(argv):
  del argv
  tfds.disable_progress_bar()
  logging.set_verbosity(logging.WARNING)
  with tempfile.TemporaryDirectory() as tmp_dir:
    cfg, description, entries = _choose_dataset(tmp_dir)
    mixed = cfg.copy_and_resolve_references()
    mixed.mixture = entries
    print(f'mixture: {mixture.parse(mixed)}')
    results = {}
    for kind, config in (('single', cfg), ('mixture', mixed)):
      tokenizer = _tokenizer(config)
      for w in _WORKERS.value:
        results[(kind, int(w))] = _measure(config, tokenizer, int(w))
    _print_table(description, results)


if __name__ == '__main__':
  app.run(main, flags_parser=config_path.parse_flags)
