"""Dynamic batching: windows of many requests captioned together.

A request is a list of windows (float32 clips). `DynamicBatcher.submit`
queues them and returns a `concurrent.futures.Future` of their captions. One
worker thread takes the oldest queued window, waits until `max_batch`
windows of the same length bucket are queued or `max_wait_s` has passed
since that window arrived, and captions them in one call of `run_batch`.
A batch padded to more rows than it has windows (`rows_of`) fills those
rows with waiting windows of shorter buckets (`take_batch`): the padded rows
are computed anyway, so they cost nothing; a batch is never padded to a
longer length for them (on a CPU that costs as much as their own call).
Windows of one request may be split over several batches; its future is
resolved when the last one is done.

The queue holds at most `max_queue` windows; `submit` raises `QueueFull`
beyond that (the server answers 503 with Retry-After). A request whose
future was cancelled (its client went away) before its windows were taken
is dropped from the queue without being captioned. `close` stops taking
requests and captions everything already queued (graceful drain).

Nothing here knows about HTTP or JAX: `run_batch` is any function from clips
to captions, so the batching is tested on its own.
"""

import collections
import concurrent.futures
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
from absl import logging


class QueueFull(Exception):
  """The queue has no room for the request's windows (retry later)."""


class Closed(Exception):
  """The batcher is draining or stopped and takes no new requests."""


@dataclasses.dataclass(eq=False)
class _Request:
  clips: Sequence[np.ndarray]
  future: concurrent.futures.Future
  captions: list[str | None]
  remaining: int


@dataclasses.dataclass(eq=False)
class _Item:
  request: _Request
  index: int
  bucket: int
  arrived: float


class DynamicBatcher:
  """Gathers windows from concurrent requests into batches for one model."""

  def __init__(
    self,
    run_batch: Callable[[list[np.ndarray]], list[str]],
    *,
    max_batch: int,
    max_wait_s: float,
    max_queue: int,
    bucket_of: Callable[[np.ndarray], int] = lambda clip: 0,
    rows_of: Callable[[int], int] = lambda count: count,
    on_batch: Callable[[int, float], None] | None = None,
  ):
    """Starts the worker thread.

    Args:
      run_batch: captions for a list of at most `max_batch` clips, in order.
      max_batch: windows per call of `run_batch`.
      max_wait_s: how long the oldest queued window waits for others.
      max_queue: the most windows queued (not yet in a batch).
      bucket_of: the padded length a clip gets; a batch has the length of its
        oldest window's bucket, so a short clip is never padded to a longer one's.
      rows_of: the rows a batch of this many windows is padded to; free rows
        take windows of shorter buckets.
      on_batch: called with `(batch size, seconds in run_batch)` after each batch.
    """
    if max_batch < 1 or max_queue < 1 or max_wait_s < 0:
      raise ValueError(f'need max_batch, max_queue >= 1 and max_wait_s >= 0: {locals()}')
    self._run_batch = run_batch
    self.max_batch = max_batch
    self.max_wait_s = max_wait_s
    self.max_queue = max_queue
    self._bucket_of = bucket_of
    self._rows_of = rows_of
    self._on_batch = on_batch
    self._queue: collections.deque[_Item] = collections.deque()
    self._lock = threading.Condition()
    self._closed = False
    self._thread = threading.Thread(target=self._work, name='aac-batcher', daemon=True)
    self._thread.start()

  @property
  def queued(self) -> int:
    """Windows waiting for a batch."""
    with self._lock:
      return len(self._queue)

  def submit(self, clips: Sequence[np.ndarray]) -> concurrent.futures.Future:
    """Queues one request's windows.

    Args:
      clips: float32 `[samples]` windows (at least one).

    Returns:
      A future of the captions, one per clip, in order. Cancel it to drop
      the windows not yet taken.

    Raises:
      QueueFull: fewer than `len(clips)` places are free.
      Closed: the batcher is draining.
    """
    if not clips:
      raise ValueError('a request needs at least one window')
    future = concurrent.futures.Future()
    request = _Request(list(clips), future, [None] * len(clips), len(clips))
    now = time.monotonic()
    with self._lock:
      if self._closed:
        raise Closed('the server is shutting down')
      if len(self._queue) + len(clips) > self.max_queue:
        raise QueueFull(f'{len(self._queue)} of {self.max_queue} queue places taken')
      for i, clip in enumerate(clips):
        self._queue.append(_Item(request, i, self._bucket_of(clip), now))
      self._lock.notify_all()
    return future

  def close(self, timeout: float | None = None) -> None:
    """Takes no new requests, captions the queued ones, and stops the worker."""
    with self._lock:
      self._closed = True
      self._lock.notify_all()
    self._thread.join(timeout)

  def _work(self) -> None:
    while True:
      batch = self._next_batch()
      if batch is None:
        return
      self._caption(batch)

  def _next_batch(self) -> list[_Item] | None:
    """Waits for a batch: full, or the oldest window waited `max_wait_s`; None when closed."""
    with self._lock:
      while True:
        self._drop_cancelled()
        if not self._queue:
          if self._closed:
            return None
          self._lock.wait()
          continue
        chosen = take_batch([item.bucket for item in self._queue], self.max_batch, self._rows_of)
        left = self._queue[0].arrived + self.max_wait_s - time.monotonic()
        if len(chosen) >= self.max_batch or left <= 0 or self._closed:
          batch = [self._queue[i] for i in chosen]
          taken = set(chosen)
          self._queue = collections.deque(x for i, x in enumerate(self._queue) if i not in taken)
          return batch
        self._lock.wait(left)

  def _drop_cancelled(self) -> None:
    """Leaves out windows of requests already done: cancelled, or failed in an earlier batch."""
    if any(item.request.future.done() for item in self._queue):
      self._queue = collections.deque(i for i in self._queue if not i.request.future.done())

  def _caption(self, batch: list[_Item]) -> None:
    start = time.monotonic()
    try:
      captions = self._run_batch([item.request.clips[item.index] for item in batch])
    except Exception as error:  # noqa: BLE001 - one bad batch must not stop the server.
      logging.exception('captioning a batch of %d windows failed', len(batch))
      for request in {id(item.request): item.request for item in batch}.values():
        _settle(request.future, error=error)
      return
    if self._on_batch:
      self._on_batch(len(batch), time.monotonic() - start)
    for item, caption in zip(batch, captions, strict=True):
      request = item.request
      request.captions[item.index] = caption
      request.remaining -= 1
      if request.remaining == 0:
        _settle(request.future, result=request.captions)


def take_batch(buckets: Sequence[int], max_batch: int, rows_of: Callable[[int], int]) -> list[int]:
  """Which queued windows make the next batch.

  Args:
    buckets: the padded length of each queued window, oldest first (not empty).
    max_batch: the most windows in a batch.
    rows_of: the rows a batch of `n` windows is padded to (at least `n`).

  Returns:
    Indices into `buckets`, ascending: up to `max_batch` windows of the
    oldest window's bucket, then, while the rows they are padded to have room,
    the oldest windows of shorter buckets (padded up to the batch's length).
  """
  head = buckets[0]
  same = [i for i, bucket in enumerate(buckets) if bucket == head][:max_batch]
  room = rows_of(len(same)) - len(same)
  shorter = [i for i, bucket in enumerate(buckets) if bucket < head][: max(room, 0)]
  return sorted(same + shorter)


def _settle(future: concurrent.futures.Future, result=None, error=None) -> None:
  """Resolves `future` unless it is already done (cancelled by a departed client)."""
  try:
    if error is not None:
      future.set_exception(error)
    else:
      future.set_result(result)
  except concurrent.futures.InvalidStateError:
    pass
