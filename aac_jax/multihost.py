"""Several processes, one run: starting JAX's distributed runtime, first-run files once.

`initialize(...)` starts `jax.distributed` from explicit values (clusters
where JAX cannot discover the topology) or by discovery (TPU VMs, SLURM);
`aac_jax.launch_flags` feeds it from the command line and environment.

`process_0_first(what, fn)` is how a run makes its first-run files (the
synthetic dataset, the vocabulary, the feature statistics, files inherited
from `init_from`): process 0 runs `fn`, which writes them (atomically, see
`aac_jax.files`); the other processes wait for it, up to
`sync_timeout_s()` seconds, through the distributed runtime's key-value
store, then run `fn` themselves, which now only reads what process 0 wrote.
A failure on process 0 reaches the others at once, as a `ProcessSyncError`
naming it, instead of a timeout.

`wait_for_all(what)` holds every process until the last one arrives (same
timeout), before a run's first cross-process execution: XLA's first
collective would give up on a peer more than 30 s late.
"""

import itertools
import json
import os
import re
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

import jax
from absl import logging

T = TypeVar('T')

TIMEOUT_ENV = 'AAC_JAX_SYNC_TIMEOUT_S'
DEFAULT_TIMEOUT_S = 1800.0  # Building the default synthetic dataset takes minutes.
_DONE = 'done'
DEFAULT_CONNECT_TIMEOUT_S = 300.0  # JAX's own default initialization timeout.
CONNECT_ERROR_STATUS = 3  # Exit status when the processes could not connect.
_counter = itertools.count()


def _give_up(where: str, address: str, timeout_s: float) -> None:
  """Ends the process with one line (JAX's connect blocks in C++, then aborts)."""
  sys.stderr.write(
    f'error: {where}: not every process connected to {address} within {timeout_s:.0f} s '
    '(process 0 not started or not reachable at that address, or a process of the run not '
    'started); start every process, check the address and port, or allow more time with '
    '--connect_timeout_s\n'
  )
  sys.stderr.flush()
  os._exit(CONNECT_ERROR_STATUS)


class ProcessSyncError(RuntimeError):
  """Processes could not agree: process 0 failed, or did not answer in time."""


class LaunchError(ValueError):
  """Bad multi-process launch values; the message names the value and the fix."""


def sync_timeout_s() -> float:
  """How long processes wait for process 0: `$AAC_JAX_SYNC_TIMEOUT_S`, else 1800 s."""
  raw = os.environ.get(TIMEOUT_ENV, '')
  if not raw:
    return DEFAULT_TIMEOUT_S
  try:
    value = float(raw)
  except ValueError:
    value = -1.0
  if not value > 0:
    raise LaunchError(f'{TIMEOUT_ENV}={raw!r}: must be a number of seconds > 0')
  return value


def _client():
  from jax._src import distributed

  client = distributed.global_state.client
  if client is None:
    raise ProcessSyncError(
      f'{jax.process_count()} processes but no distributed runtime client: start the run with '
      'jax.distributed.initialize (the --multihost or --coordinator_address flags)'
    )
  return client


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return f'{type(error).__name__}: {text.splitlines()[0][:300] if text else ""}'


def process_0_first(what: str, fn: Callable[[], T], timeout_s: float | None = None) -> T:
  """Runs `fn` on process 0, then (once it succeeded) on every other process.

  Every process must call this, in the same order (the calls are matched by
  their rank among this module's calls).

  Args:
    what: what `fn` does, for messages ('prepare the first-run files').
    fn: writes what is missing and returns what the caller needs; run on the
      other processes after process 0, it finds the files and only reads.
    timeout_s: how long the others wait (default `sync_timeout_s()`).

  Returns:
    This process's `fn()`.

  Raises:
    ProcessSyncError: process 0 failed (its error is named) or did not
      finish within the timeout.
  """
  if jax.process_count() == 1:
    return fn()
  timeout_s = sync_timeout_s() if timeout_s is None else timeout_s
  key = f'aac_jax/process_0_first/{next(_counter)}/{re.sub(r"[^a-z0-9]+", "_", what.lower())}'
  client = _client()
  if jax.process_index() == 0:
    try:
      result = fn()
    except BaseException as error:
      client.key_value_set(key, f'failed with {_first_line(error)}')
      raise
    client.key_value_set(key, _DONE)
    return result
  logging.info('Waiting up to %.0f s for process 0 to %s', timeout_s, what)
  try:
    status = client.blocking_key_value_get(key, int(timeout_s * 1000))
  except Exception as error:  # noqa: BLE001 - the runtime raises its own error kinds.
    raise ProcessSyncError(
      f'process {jax.process_index()} waited {timeout_s:.0f} s for process 0 to {what} and '
      f"gave up ({_first_line(error)}); look at process 0's log, or allow more time with "
      f'{TIMEOUT_ENV}=SECONDS'
    ) from None
  if status != _DONE:
    raise ProcessSyncError(f'process 0 could not {what}: {status}')
  return fn()


def wait_for_all(what: str, timeout_s: float | None = None) -> None:
  """Waits until every process has reached this call, through the key-value store.

  XLA's first collective between processes (gloo on CPU) gives up after a
  fixed 30 s when a peer is late to it (a process held up by a loaded
  machine, a slower compile, a stopped job): call this right before a run's
  first cross-process execution so that processes meet here instead, under
  the `sync_timeout_s()` rule. Every process must call it, in the same
  order as this module's other calls.

  Args:
    what: what the processes are about to do, for messages ('start training').
    timeout_s: how long to wait for the last process (default `sync_timeout_s()`).

  Raises:
    ProcessSyncError: not every process arrived in time (the late ones named).
  """
  if jax.process_count() == 1:
    return
  timeout_s = sync_timeout_s() if timeout_s is None else timeout_s
  client, me = _client(), jax.process_index()
  tag = f'aac_jax/wait_for_all/{next(_counter)}/{re.sub(r"[^a-z0-9]+", "_", what.lower())}'
  client.key_value_set(f'{tag}/{me}', _DONE)
  logging.info('Waiting up to %.0f s for every process to %s', timeout_s, what)
  try:
    client.wait_at_barrier(tag, int(timeout_s * 1000))
  except Exception as error:  # noqa: BLE001 - the runtime raises its own error kinds.
    arrived = {key.rsplit('/', 1)[-1] for key, _ in client.key_value_dir_get(tag)}
    late = [str(p) for p in range(jax.process_count()) if str(p) not in arrived]
    who = f'process {", ".join(late)} did not arrive' if late else _first_line(error)
    raise ProcessSyncError(
      f'process {me} waited {timeout_s:.0f} s for every process to {what} ({who}); look at '
      f"the late process's log, or allow more time with {TIMEOUT_ENV}=SECONDS"
    ) from None


def _flat(node: dict, prefix: str = '') -> dict[str, object]:
  flat = {}
  for key, value in node.items():
    if isinstance(value, dict):
      flat.update(_flat(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def config_differences(config_json: str, timeout_s: float | None = None) -> list[str]:
  """How this process's resolved config differs from the others' (every process calls it).

  Processes started with different flags would train together without a
  word (process 0 batch 8, process 1 batch 16: 12 examples a step while the
  checkpoint records 8). Each process publishes its config through the
  distributed runtime; process 0 compares every other's with its own, the
  others compare process 0's.

  Args:
    config_json: the resolved config as JSON (`config.to_json_best_effort()`).
    timeout_s: how long to wait for the others (default `sync_timeout_s()`).

  Returns:
    One line per differing field (`field: here A, on process P B`); empty
    when all agree or with one process.

  Raises:
    ProcessSyncError: another process did not publish its config in time.
  """
  if jax.process_count() == 1:
    return []
  timeout_s = sync_timeout_s() if timeout_s is None else timeout_s
  client, me = _client(), jax.process_index()
  tag = f'aac_jax/config/{next(_counter)}'
  client.key_value_set(f'{tag}/{me}', config_json)
  mine = _flat(json.loads(config_json))
  lines = []
  for other in range(1, jax.process_count()) if me == 0 else [0]:
    try:
      theirs = _flat(
        json.loads(client.blocking_key_value_get(f'{tag}/{other}', int(timeout_s * 1000)))
      )
    except Exception as error:  # noqa: BLE001 - the runtime raises its own error kinds.
      raise ProcessSyncError(
        f'process {me} waited {timeout_s:.0f} s for the config of process {other} '
        f'({_first_line(error)}); allow more time with {TIMEOUT_ENV}=SECONDS'
      ) from None
    for field in sorted(set(mine) | set(theirs)):
      if mine.get(field) != theirs.get(field):
        lines.append(f'{field}: {mine.get(field)!r} here, {theirs.get(field)!r} on process {other}')
  return lines


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
) -> None:
  """Starts JAX's distributed runtime, with discovery for what is not given.

  With no argument JAX discovers the cluster (TPU VMs, SLURM, Open MPI);
  elsewhere give all three. Says at once what it waits for; when not every
  process has connected within `connect_timeout_s` (process 0 not started,
  a wrong address, a peer that never starts) the process prints one line
  naming the address and exits with `CONNECT_ERROR_STATUS` (JAX itself
  would abort minutes later with a C++ stack trace).

  Raises:
    LaunchError: a value is malformed or out of range (before any connection).
  """
  if not connect_timeout_s > 0:
    raise LaunchError(f'connect timeout {connect_timeout_s}: must be a number of seconds > 0')
  if coordinator_address is not None and not re.fullmatch(r'\S+:\d+', coordinator_address):
    raise LaunchError(
      f'coordinator address {coordinator_address!r}: use HOST:PORT of process 0, '
      'e.g. 10.0.0.2:12355'
    )
  if num_processes is not None and num_processes < 1:
    raise LaunchError(f'number of processes {num_processes}: must be >= 1')
  if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
    raise LaunchError(f'process id {process_id}: must be in [0, {num_processes})')
  given = [coordinator_address, num_processes, process_id]
  where = f'process {process_id} of {num_processes}' if None not in given else 'this process'
  address = coordinator_address or 'the discovered coordinator'
  if None not in given or given == [None] * 3:  # Else JAX refuses the values at once.
    logging.info(
      '%s: connecting to %s, waiting up to %.0f s for all processes (--connect_timeout_s)',
      where.capitalize(),
      address,
      connect_timeout_s,
    )
  watchdog = threading.Timer(connect_timeout_s, _give_up, (where, address, connect_timeout_s))
  watchdog.daemon = True
  watchdog.start()
  try:
    jax.distributed.initialize(
      coordinator_address=coordinator_address,
      num_processes=num_processes,
      process_id=process_id,
      initialization_timeout=int(connect_timeout_s) + 60,  # The watchdog speaks first.
    )
  except ValueError as error:  # Values missing where JAX cannot discover the cluster.
    raise LaunchError(
      f'{error} Give --coordinator_address, --num_processes and --process_id together, or '
      '--multihost where JAX discovers the cluster (TPU VMs, SLURM).'
    ) from None
  finally:
    watchdog.cancel()
  if jax.process_count() > 1 and jax.config.jax_enable_compilation_cache:
    # JAX writes persistent-cache entries from process 0 only and the others'
    # keys differ: with a warm cache process 0 skips compiling (7 hits, 1.7 s)
    # while the others compile (16 s) and it waits for them at the first
    # collective, where gloo gives up after a fixed 30 s on a loaded machine.
    jax.config.update('jax_enable_compilation_cache', False)
    logging.info('Persistent compilation cache off: with several processes it skews start-up')
  logging.info(
    'Process %d of %d, %d local of %d devices',
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
