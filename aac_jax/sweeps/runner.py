"""Runs the points of a sweep: locally N at a time, or as printed commands.

Every point trains with `python -m aac_jax.main` in `<root>/<point name>`.
Before anything starts, every point's config is resolved (a bad field or
value stops the sweep with one message) and the datasets are checked (the
synthetic benchmark is built once here, not by two runs at a time).

Locally, finished points are skipped, points a live process trains are
left alone, and the rest start (a started run resumes from its own latest
checkpoint). A point that fails is reported with its log and the others go
on.
"""

import contextlib
import dataclasses
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import ml_collections
from absl import flags as absl_flags
from etils import epath
from ml_collections import config_flags

from aac_jax import config_path
from aac_jax.sweeps import define, results

LAUNCHERS = ('local', 'tpu_pod')
RESUME_HINT = '  rerun the same command to resume them (finished points are skipped)'


def resolve_config(config_arg: str, flags: Sequence[str]) -> ml_collections.ConfigDict:
  """The config `python -m aac_jax.main --config=<config_arg> <flags>` would train.

  Raises:
    ValueError: the file, a field or a value is wrong (message from the flag parser).
  """
  config_path.add_config_root_to_path([f'--config={config_arg}'])
  argv = ['sweep', f'--config={config_arg}', *flags]
  values = absl_flags.FlagValues()
  config_flags.DEFINE_config_file(
    'config', None, 'Experiment config.', flag_values=values, sys_argv=argv
  )
  try:
    values(argv)
    return values.config
  except Exception as e:  # The parser raises several types; all mean a bad argument.
    raise ValueError(f'--config={config_arg} {shlex.join(flags)}: {_message(e)}') from e


def _message(error: Exception) -> str:
  """The readable text of a config parsing error (unknown fields come as nested reprs)."""
  text = str(error.args[0]) if len(error.args) == 1 else str(error)
  while len(text) > 1 and text[0] == text[-1] and text[0] in '\'"':
    text = text[1:-1].replace("\\'", "'").replace('\\n', ' ')
  return text.replace('\n', ' ')


def point_flags(sweep: define.Sweep, point: define.Point) -> list[str]:
  """`--config.*` flags of one point: the sweep's extra flags, then its own."""
  return [*sweep.extra_flags, *point.flags()]


def train_command(sweep: define.Sweep, point: define.Point, python: str) -> list[str]:
  return [
    python,
    '-m',
    'aac_jax.main',
    f'--config={sweep.config}',  # First: the overrides that follow apply to it.
    f'--workdir={sweep.workdir(point)}',
    *point_flags(sweep, point),
  ]


def check_points(sweep: define.Sweep) -> list[ml_collections.ConfigDict]:
  """Resolves and validates every point's config (fails before any training starts).

  Raises:
    ValueError: a point's flags do not parse, or its values are bad
      (`aac_jax.config_validation`, checked for this machine's devices).
  """
  import jax

  from aac_jax import config_validation

  configs = []
  for point in sweep.points:
    config = resolve_config(sweep.config, point_flags(sweep, point))
    problems = config_validation.problems(config, 'train', jax.device_count())
    if problems:
      raise ValueError(f'{sweep.workdir(point)}: ' + '; '.join(problems))
    configs.append(config)
  return configs


def prepare_datasets(configs: Sequence[ml_collections.ConfigDict]) -> None:
  """Builds (synthetic) or checks each distinct dataset once, before runs start."""
  from aac_jax.train import prepare

  seen = set()
  for config in configs:
    key = (config.dataset.name, config.dataset.builder_config, config.dataset.data_dir)
    if key not in seen:
      seen.add(key)
      prepare.prepare_dataset(config.dataset)


def print_commands(sweep: define.Sweep, launcher: str, echo: Callable[[str], None] = print) -> None:
  """One shell command per point (for pod slices, SLURM arrays, other machines).

  Args:
    sweep: the sweep.
    launcher: 'local' (`python -m aac_jax.main ...`, e.g. one line per
      SLURM array task: see launch/slurm_array.sh) or 'tpu_pod'
      (`launch/tpu_pod.sh train` with CONFIG, WORKDIR and EXTRA_FLAGS set;
      add TPU_NAME and ZONE of the slice that runs the point).
    echo: where lines go.
  """
  if launcher not in LAUNCHERS:
    raise ValueError(f'launcher must be one of {LAUNCHERS}, got {launcher!r}')
  for point in sweep.points:
    if launcher == 'local':
      echo(shlex.join(train_command(sweep, point, 'python')))
    else:
      env = {
        'CONFIG': sweep.config,
        'WORKDIR': str(sweep.workdir(point)),
        'EXTRA_FLAGS': shlex.join(point_flags(sweep, point)),
      }
      echo(
        ' '.join(f'{k}={shlex.quote(v)}' for k, v in env.items()) + ' bash launch/tpu_pod.sh train'
      )


@dataclasses.dataclass(frozen=True)
class Outcome:
  """How one point ended in this invocation ('skipped' when not started)."""

  point: define.Point
  state: str
  detail: str = ''
  log: str = ''


def _child_env() -> dict[str, str]:
  """This environment, with this checkout's aac_jax importable (also when not installed)."""
  env = dict(os.environ)
  root = str(pathlib.Path(__file__).resolve().parents[2])
  env['PYTHONPATH'] = os.pathsep.join(p for p in (root, env.get('PYTHONPATH', '')) if p)
  return env


class _Running:
  """One started training process and its log file."""

  def __init__(self, sweep: define.Sweep, point: define.Point):
    self.point = point
    self.workdir = sweep.workdir(point)
    self.workdir.mkdir(parents=True, exist_ok=True)
    self.log = self.workdir / results.RUN_LOG
    command = train_command(sweep, point, sys.executable)
    self._log_file = open(self.log, 'a')  # noqa: SIM115 - closed in finish().
    self._log_file.write(f'\n=== {time.strftime("%Y-%m-%d %H:%M:%S")} {shlex.join(command)}\n')
    self._log_file.flush()
    self.process = subprocess.Popen(
      command, stdout=self._log_file, stderr=subprocess.STDOUT, env=_child_env()
    )
    results.write_status(self.workdir, state='running', pid=self.process.pid, log=str(self.log))

  def finish(self, interrupted: bool = False) -> Outcome:
    """Records the exit status; call once `process.poll()` is not None.

    Args:
      interrupted: the runner stopped it (SIGINT or SIGTERM).
    """
    self._log_file.close()
    code = self.process.returncode
    results.write_status(
      self.workdir, state='exited', returncode=code, log=str(self.log), interrupted=interrupted
    )
    state = results.point_state(self.workdir)
    return Outcome(self.point, state.state, state.detail, str(self.log))


def _to_start(sweep: define.Sweep, echo) -> tuple[list[define.Point], list[Outcome]]:
  todo, skipped = [], []
  for point in sweep.points:
    state = results.point_state(sweep.workdir(point))
    if state.state in ('finished', 'running'):
      echo(f'[sweep] {point.name}: {state.state} {state.detail}'.rstrip() + ', skipped')
      skipped.append(Outcome(point, state.state, 'skipped'))
    else:
      todo.append(point)
  return todo, skipped


class Interrupted(Exception):
  """The runner got SIGINT (Ctrl-C) or SIGTERM; its trainers were stopped with a save."""

  def __init__(self, signal_name: str, outcomes: list['Outcome']):
    super().__init__(signal_name)
    self.signal_name = signal_name
    self.outcomes = outcomes


class _SignalsToException:
  """SIGTERM raises KeyboardInterrupt like SIGINT does, while in the block."""

  def __init__(self):
    self.received = 'SIGINT'
    self._previous = None

  def _handle(self, signum, frame):
    del frame
    self.received = signal.Signals(signum).name
    raise KeyboardInterrupt

  def __enter__(self):
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc_info):
    signal.signal(signal.SIGTERM, self._previous)


def run_local(
  sweep: define.Sweep, parallel: int, *, echo: Callable[[str], None] = print, poll_s: float = 0.5
) -> list[Outcome]:
  """Trains the unfinished points, `parallel` processes at a time.

  On SIGINT (Ctrl-C, which the trainers get too) or SIGTERM to the runner,
  every running trainer is sent SIGTERM, saves at its next step and exits
  (a preemption); then `Interrupted` is raised with every outcome.

  Returns:
    One `Outcome` per point, in the order they ended (skipped ones first).
  """
  if parallel < 1:
    raise ValueError(f'--parallel must be >= 1, got {parallel}')
  todo, outcomes = _to_start(sweep, echo)
  active: list[_Running] = []
  with _SignalsToException() as signals:
    try:
      while todo or active:
        while todo and len(active) < parallel:
          run = _Running(sweep, todo.pop(0))
          echo(f'[sweep] {run.point.name}: started (pid {run.process.pid}, log {run.log})')
          active.append(run)
        time.sleep(poll_s)
        for run in [r for r in active if r.process.poll() is not None]:
          active.remove(run)
          outcomes.append(run.finish())
          echo(_describe(outcomes[-1]))
    except KeyboardInterrupt:
      echo(f'[sweep] {signals.received}: stopping {len(active)} runs (each saves first)')
      outcomes += _stop(active)
      raise Interrupted(signals.received, outcomes) from None
  return outcomes


def _stop(active: Sequence[_Running]) -> list[Outcome]:
  """SIGTERMs the runs (a preemption: they save at the next step) and waits for them."""
  for sig in (signal.SIGINT, signal.SIGTERM):  # A second interrupt must not cut the waiting.
    signal.signal(sig, signal.SIG_IGN)
  try:
    for run in active:
      with contextlib.suppress(ProcessLookupError):
        run.process.send_signal(signal.SIGTERM)
    for run in active:
      run.process.wait()
    return [run.finish(interrupted=True) for run in active]
  finally:  # (SIGTERM's handler comes back when `_SignalsToException` exits.)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _describe(outcome: Outcome) -> str:
  if outcome.state == 'finished':
    return f'[sweep] {outcome.point.name}: finished'
  return (
    f'[sweep] {outcome.point.name}: {outcome.state.upper()} ({outcome.detail}); log: {outcome.log}'
  )


def summary(outcomes: Sequence[Outcome]) -> tuple[str, bool]:
  """`(text, all finished)` for the end of `run_local`."""
  bad = [o for o in outcomes if o.state not in ('finished', 'running')]
  lines = [f'[sweep] {len(outcomes) - len(bad)} of {len(outcomes)} points finished or running']
  lines += [f'  {o.point.name}: {o.state} ({o.detail}); log: {o.log}' for o in bad]
  if bad:
    lines.append(RESUME_HINT)
  return '\n'.join(lines), not bad


def make_sweep(
  config_arg: str, root: str | os.PathLike, seeds: int, extra_flags: Sequence[str]
) -> define.Sweep:
  """The sweep of `config_arg`'s `get_sweep` times `seeds`, rooted at `root`."""
  for flag in extra_flags:
    if not flag.startswith('--config.'):
      raise ValueError(f'extra flag {flag!r} must look like --config.FIELD=VALUE')
  points = define.expand(define.load_sweep(config_arg), seeds)
  return define.Sweep(epath.Path(root), config_arg, tuple(extra_flags), tuple(points))
