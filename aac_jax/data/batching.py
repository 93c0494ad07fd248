"""Turning a random-access dataset into batches read by threads or worker processes."""

import grain
from absl import flags

# Threads assembling whole batches in the main process (no workers) or in
# each worker process; each thread holds one batch in flight.
_READ_THREADS = 4
_WORKER_READ_THREADS = 2


def per_process_batch_size(global_batch_size: int, process_count: int) -> int:
  """Returns `global_batch_size / process_count`, which must be whole."""
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(
      f'global batch size {global_batch_size} is not a positive multiple of the '
      f'{process_count} processes'
    )
  return global_batch_size // process_count


def _ensure_flags_parsed() -> None:
  # Grain worker processes read absl flags; a library caller (a test, a
  # notebook) may never have parsed them.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def finish(dataset: grain.MapDataset, batch_size: int, num_workers: int) -> grain.IterDataset:
  """Batches, reads batches with threads, and moves the work to worker processes.

  Batching the random-access dataset (not the iterator) makes batch `k`
  the examples `k * b .. k * b + b - 1` whatever the number of workers:
  workers take whole batches in turn, so the output is the same with 0 or N
  workers and nothing is dropped or regrouped in eval.
  """
  threads = _WORKER_READ_THREADS if num_workers > 0 else _READ_THREADS
  read_options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=threads)
  iter_dataset = dataset.batch(batch_size, drop_remainder=True).to_iter_dataset(read_options)
  if num_workers > 0:
    _ensure_flags_parsed()
    iter_dataset = iter_dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return iter_dataset
