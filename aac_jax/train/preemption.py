"""Noticing preemption (SIGTERM) or Ctrl-C (SIGINT) and agreeing on the step to stop at.

TPU VMs (and most schedulers) announce preemption with SIGTERM some seconds
before the kill. The trainer asks `PreemptionWatcher.should_stop(step)` at
every step boundary; when it says yes the trainer saves a checkpoint at that
step, logs it, and returns normally (exit status 0).

A Ctrl-C in a terminal sends SIGINT to every process of the foreground
group (a sweep's runner and all its trainers): a single-process run treats
it as a preemption too (saves at the next step, exits 0); a second SIGINT
stops at once (KeyboardInterrupt), without that save.

With one process a signal handler sets a flag. With several processes all
of them must stop at the same step: JAX's preemption sync manager (started
by `jax.distributed.initialize`, which installs its own SIGTERM notifier)
picks a common step, so there no handler of ours is installed.
"""

import signal
import threading
import types

import jax
from absl import logging
from jax.experimental import multihost_utils


class PreemptionWatcher:
  """Tells the training loop when to save and stop.

  Use as a context manager so the previous signal handlers come back:

    with PreemptionWatcher() as watcher:
      for step in ...:
        ...
        if watcher.should_stop(step):
          save(step); break
  """

  def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
    self._signals = signals
    self._event = threading.Event()
    self._previous: dict[int, object] = {}
    self._received: int | None = None

  def __enter__(self) -> 'PreemptionWatcher':
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      for sig in self._signals:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc_info) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()

  def _handle(self, signum: int, frame: types.FrameType | None) -> None:
    del frame
    # Only set a flag: the handler runs between bytecodes of the main thread,
    # possibly inside JAX or orbax, so no real work may happen here.
    if self._received is None:  # The first one names the stop (Ctrl-C, then the runner's TERM).
      self._received = signum
    self._event.set()
    if signum == signal.SIGINT and signal.SIGINT in self._previous:
      signal.signal(signal.SIGINT, signal.default_int_handler)  # A second Ctrl-C: stop now.

  def request_stop(self) -> None:
    """Marks a stop as if a signal had come (tests, manual stops)."""
    self._event.set()

  @property
  def signal_name(self) -> str:
    """Name of the signal received, for the log line."""
    return signal.Signals(self._received).name if self._received else 'stop request'

  def should_stop(self, step: int) -> bool:
    """Whether every process should save at `step` and stop.

    Must be called at every step by every process (the multi-process
    agreement counts on it).
    """
    if jax.process_count() > 1:
      try:
        if multihost_utils.reached_preemption_sync_point(step):
          self._received = signal.SIGTERM
          return True
      except RuntimeError:
        logging.log_first_n(logging.WARNING, 'JAX preemption service is off', 1)
      return False
    return self._event.is_set()
