"""The multi-process flags of `aac_jax.main` and `aac_jax.scst.main`.

  --multihost                 start jax.distributed by discovery (TPU VMs, SLURM)
  --coordinator_address=H:P   process 0's address    (or $AAC_COORDINATOR_ADDRESS)
  --num_processes=N           processes in the run    (or $AAC_NUM_PROCESSES)
  --process_id=I              this process, 0 .. N-1  (or $AAC_PROCESS_ID)
  --connect_timeout_s=S       wait for all processes to connect (default 300)

Giving any of the last three starts the distributed runtime with them (and
discovery for the others); a flag wins over its environment variable.
Importing this module defines the flags; `initialize_from_flags()` is
called first thing in `main`. Bad values (a process id out of range, a
malformed address) are one line and exit status 2, before any connection;
processes that do not all connect within --connect_timeout_s are one line
naming the address, exit status 3.
"""

import os
import sys

from absl import flags

from aac_jax import multihost

LAUNCH_ERROR_STATUS = 2  # As for other bad command-line values.
ENV = {
  'coordinator_address': 'AAC_COORDINATOR_ADDRESS',
  'num_processes': 'AAC_NUM_PROCESSES',
  'process_id': 'AAC_PROCESS_ID',
}

flags.DEFINE_bool(
  'multihost', False, 'Start jax.distributed by discovery first (TPU VM pod slices, SLURM).'
)
flags.DEFINE_string(
  'coordinator_address', None, f'HOST:PORT of process 0 (or ${ENV["coordinator_address"]}).'
)
flags.DEFINE_integer('num_processes', None, f'Processes in the run (or ${ENV["num_processes"]}).')
flags.DEFINE_integer('process_id', None, f'This process, 0 .. N-1 (or ${ENV["process_id"]}).')
flags.DEFINE_float(
  'connect_timeout_s',
  multihost.DEFAULT_CONNECT_TIMEOUT_S,
  'Seconds to wait for every process to connect at start-up (then exit status 3).',
)


def _value(name: str, convert):
  value = getattr(flags.FLAGS, name)
  if value is not None:
    return value
  raw = os.environ.get(ENV[name], '').strip()
  if not raw:
    return None
  try:
    return convert(raw)
  except ValueError:
    raise multihost.LaunchError(f'${ENV[name]}={raw!r} is not a valid {name}') from None


def launch_values() -> tuple[bool, dict]:
  """`(start, kwargs)`: whether to start `jax.distributed`, and its arguments."""
  kwargs = {
    'coordinator_address': _value('coordinator_address', str),
    'num_processes': _value('num_processes', int),
    'process_id': _value('process_id', int),
  }
  explicit = any(v is not None for v in kwargs.values())
  return bool(flags.FLAGS.multihost) or explicit, kwargs


def initialize_from_flags() -> int:
  """Starts `jax.distributed` when the flags or environment ask for it.

  Returns:
    0 when started (or not asked for); `LAUNCH_ERROR_STATUS` after printing
    one line naming a bad launch value (nothing was started).
  """
  try:
    start, kwargs = launch_values()
    if start:
      multihost.initialize(**kwargs, connect_timeout_s=flags.FLAGS.connect_timeout_s)
  except multihost.LaunchError as error:
    print(f'error: {error}', file=sys.stderr)
    return LAUNCH_ERROR_STATUS
  return 0
