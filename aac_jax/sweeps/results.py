"""What a sweep point's workdir says: its state and its final metrics.

A point is judged from the files its run writes (`config.json`,
`checkpoints/<step>/`, `predictions/<split>_step<step>.json`, the event
files), plus `sweep_status.json`, which `runner.run_local` writes around
each process it starts (points launched elsewhere have none).

States:
  finished     the last step is saved (and tested, with `eval.test_at_end`)
  running      a live process on this machine is training it
  failed       its process exited with an error (the log says why)
  interrupted  its process stopped early without an error (SIGINT or SIGTERM:
               it saved at the next step and exited, or died before
               training started; or its runner was killed): rerun to resume
  incomplete   started elsewhere (no status file) and not finished: running
               there, or interrupted
  pending      not started
"""

import dataclasses
import json
import os
import signal
import socket
from typing import Any

import ml_collections
from etils import epath

from aac_jax.sweeps import events
from aac_jax.train.checkpointing import CHECKPOINT_DIR

STATUS_FILE = 'sweep_status.json'
RUN_LOG = 'sweep_run.log'  # stdout and stderr of every process runner started.
PREDICTIONS_DIR = 'predictions'  # Where aac_jax.train.evaluation writes them.
# Exit statuses of a trainer stopped by SIGINT or SIGTERM before its loop
# (where it would have saved and exited 0): an interruption, not a failure.
_INTERRUPT_CODES = (-signal.SIGINT, -signal.SIGTERM)


@dataclasses.dataclass(frozen=True)
class PointState:
  """Where one point stands.

  Attributes:
    state: see the module docstring.
    step: its latest saved step (None before the first save).
    num_steps: `train.num_steps` from its config.json (None when pending).
    detail: a short explanation (exit status, process id).
    log: the log to read when it failed (the runner's log, else train.log).
  """

  state: str
  step: int | None = None
  num_steps: int | None = None
  detail: str = ''
  log: str = ''


def read_config(workdir: epath.Path) -> ml_collections.ConfigDict | None:
  """The run's resolved `config.json`, or None before the run wrote it."""
  path = workdir / 'config.json'
  if not path.is_file():
    return None
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def saved_steps(workdir: epath.Path) -> list[int]:
  """Steps with a finished checkpoint (orbax renames temporary folders when done)."""
  path = workdir / CHECKPOINT_DIR
  if not path.is_dir():
    return []
  return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit())


def prediction_file(workdir: epath.Path, split: str, step: int) -> epath.Path:
  return workdir / PREDICTIONS_DIR / f'{split}_step{step}.json'


def _tested(workdir: epath.Path, config: ml_collections.ConfigDict) -> bool:
  return any((workdir / PREDICTIONS_DIR).glob(f'{config.dataset.test_split}_step*.json'))


def is_finished(workdir: epath.Path, config: ml_collections.ConfigDict) -> bool:
  """The last step is saved and, with `eval.test_at_end`, the test split was scored."""
  if int(config.train.num_steps) not in saved_steps(workdir):
    return False
  return not config.eval.test_at_end or _tested(workdir, config)


def write_status(workdir: epath.Path, **fields: Any) -> None:
  """Replaces `<workdir>/sweep_status.json` (atomically) with `fields`."""
  workdir.mkdir(parents=True, exist_ok=True)
  tmp = workdir / f'.{STATUS_FILE}.{os.getpid()}.tmp'
  tmp.write_text(json.dumps({'host': socket.gethostname(), **fields}, indent=1))
  tmp.replace(workdir / STATUS_FILE)


def read_status(workdir: epath.Path) -> dict[str, Any]:
  path = workdir / STATUS_FILE
  return json.loads(path.read_text()) if path.is_file() else {}


def _alive(status: dict[str, Any]) -> bool:
  """Whether the status's process still runs (only knowable on its own machine)."""
  if status.get('host') != socket.gethostname() or not status.get('pid'):
    return False
  try:
    os.kill(int(status['pid']), 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def point_state(workdir: epath.Path) -> PointState:
  """Judges one point from its workdir (see the module docstring)."""
  workdir = epath.Path(workdir)
  status, config = read_status(workdir), read_config(workdir)
  steps = saved_steps(workdir)
  step = steps[-1] if steps else None
  num_steps = int(config.train.num_steps) if config is not None else None
  log = status.get('log') or str(workdir / 'train.log')
  if config is not None and is_finished(workdir, config):
    return PointState('finished', step, num_steps)
  if status.get('state') == 'running' and _alive(status):
    return PointState('running', step, num_steps, f'pid {status["pid"]}', log)
  code = status.get('returncode')
  stopped = status.get('interrupted') or code in _INTERRUPT_CODES
  if status.get('state') == 'exited' and code and not stopped:
    return PointState('failed', step, num_steps, f'exit status {code}', log)
  if status:
    saved = 'nothing saved' if step is None else f'saved step {step}'
    return PointState('interrupted', step, num_steps, f'stopped before the end, {saved}', log)
  if config is not None:
    return PointState('incomplete', step, num_steps, 'started elsewhere, not finished', log)
  return PointState('pending')


def _step_of_best(scalars: events.Scalars, config: ml_collections.ConfigDict) -> int | None:
  name = f'{config.dataset.validation_split}/{config.train.best_metric}'
  values = scalars.get(name, [])
  if not values:
    return None
  sign = 1.0 if config.train.best_mode == 'max' else -1.0
  return max(values, key=lambda sv: (sign * sv[1], -sv[0]))[0]


def final_metrics(workdir: epath.Path) -> tuple[int | None, dict[str, float]]:
  """The scores of the checkpoint a finished run was tested with.

  That is the step of its test scalars (the best validation checkpoint);
  without a test evaluation, the best validation step by
  `train.best_metric`. Returns `(step, {'<split>/<metric>': value})` with
  the validation and test scalars of that step (train scalars left out).
  """
  workdir = epath.Path(workdir)
  config = read_config(workdir)
  if config is None:
    return None, {}
  scalars = events.read_scalars(workdir)
  splits = (config.dataset.validation_split, config.dataset.test_split)
  test = [v[-1][0] for tag, v in scalars.items() if tag.startswith(f'{splits[1]}/') and v]
  step = max(test) if test else _step_of_best(scalars, config)
  if step is None:
    return None, {}
  metrics = {}
  for split in splits[::-1]:  # Test first.
    for tag, values in scalars.items():
      at_step = [v for s, v in values if s == step]
      if tag.startswith(f'{split}/') and at_step:
        metrics[tag] = at_step[0]
  return step, metrics
