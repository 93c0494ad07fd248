"""One training order for every topology: a global example stream cut into global batches.

Global position `g = 0, 1, 2, ...` is the g-th example of one infinite
stream, the same on every process: the train split shuffled with the run's
seed (a new order each pass), each example transformed with randomness keyed
by `g` (crop, references). Global batch `k` is positions `k * B .. k * B +
B - 1` (B the global batch size); process `p` of `P` reads its slice
`k * B + p * b .. k * B + p * b + b - 1` (`b = B / P`), as the eval batches
do. Put side by side in process order, the slices are the global batch, so
1 process x 4 devices and 2 processes x 2 devices train on the same batches.

Where a run stands is therefore one number, the next global position:
`GlobalBatches.get_state()` is `{'next_position': g, 'global_batch_size': B}`,
saved once per checkpoint (`aac_jax.train.checkpointing`) and restored by
any number of processes with `set_state`.
"""

from typing import Any

import grain

from aac_jax.data.batching import finish, per_process_batch_size

STATE_KEYS = ('next_position', 'global_batch_size')


class ProcessSlice(grain.MapDataset):
  """This process's examples of the global batches from global position `start` on.

  Element `j` is global position `start + (j // b) * B + p * b + j % b`, so
  batching by `b` gives this process's slice of each global batch.
  """

  def __init__(
    self, parent: grain.MapDataset, start: int, global_batch_size: int, index: int, count: int
  ):
    super().__init__(parent)
    self._start, self._global = int(start), int(global_batch_size)
    self._local = per_process_batch_size(global_batch_size, count)
    self._offset = index * self._local
    self._length = (len(parent) - self._start) // self._global * self._local

  def __len__(self) -> int:
    return self._length

  def position(self, j: int) -> int:
    """The global position of element `j`."""
    k, r = divmod(int(j), self._local)
    return self._start + k * self._global + self._offset + r

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self.position(index)]

  def __str__(self) -> str:
    return f'ProcessSlice(start={self._start}, B={self._global}, b={self._local})'


class GlobalBatches:
  """This process's batches of the global order: an iterator whose state is one position.

  Args:
    examples: the infinite global stream, element `g` the example at global
      position `g` (shuffled, repeated, randomly transformed by index).
    global_batch_size: B.
    process_index: p.
    process_count: P.
    num_workers: Grain worker processes (0 = threads in this process).
  """

  def __init__(
    self,
    examples: grain.MapDataset,
    global_batch_size: int,
    process_index: int,
    process_count: int,
    num_workers: int = 0,
  ):
    if not 0 <= process_index < process_count:
      raise ValueError(f'process index {process_index} is not in [0, {process_count})')
    self._examples = examples
    self._global = int(global_batch_size)
    self._local = per_process_batch_size(self._global, process_count)
    self._index, self._count = process_index, process_count
    self._num_workers = int(num_workers)
    self._position = 0
    self._iter: Any = None

  def __iter__(self) -> 'GlobalBatches':
    return self

  def __next__(self) -> dict:
    if self._iter is None:  # Started lazily: a restore right after creation costs nothing.
      mine = ProcessSlice(self._examples, self._position, self._global, self._index, self._count)
      dataset = finish(mine, self._local, self._num_workers)
      self._iter = iter(dataset)
    batch = next(self._iter)
    self._position += self._global
    return batch

  def get_state(self) -> dict[str, int]:
    """`{'next_position': g, 'global_batch_size': B}`: the same on every process."""
    return {'next_position': self._position, 'global_batch_size': self._global}

  def set_state(self, state: dict[str, Any]) -> None:
    """Continues at `state['next_position']` (from a run with any process count).

    With the same global batch size the batches are exactly those the saved
    run would have drawn next; with another one the stream goes on from the
    same example.
    """
    missing = [k for k in STATE_KEYS if k not in state]
    if missing:
      raise ValueError(f'data position {state!r} lacks {missing}')
    position = int(state['next_position'])
    if position < 0:
      raise ValueError(f'data position {position} is negative')
    self.close()
    self._position = position

  def close(self) -> None:
    """Stops Grain worker processes (if any); the next batch restarts them."""
    if self._iter is not None:
      getattr(self._iter, 'close', lambda: None)()
      self._iter = None
