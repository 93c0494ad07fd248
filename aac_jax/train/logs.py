"""Where log lines go: the console shows this package's, `train.log` keeps all.

Libraries (orbax at every save, absl, TFDS) log many INFO lines that a
person watching a run does not need. `quiet_console()` filters the console
handler to this package's records and warnings or worse from anywhere;
`--verbosity` (absl's flag) given on the command line turns the filter off.
`log_file(workdir)` appends every INFO-or-worse record, libraries' too, to
`<workdir>/train.log`. On a full disk the run stops at once with one line
(`cannot write .../train.log: No space left on device`) when the file
cannot be written from the start, and the file stops with one warning when
the disk fills later: never a `--- Logging error ---` traceback per record.
"""

import contextlib
import logging as py_logging
import os
import shlex
import sys

import jax
from absl import flags, logging
from etils import epath

from aac_jax import files

LOG_FILENAME = 'train.log'
_PACKAGE_DIR = f'{os.sep}aac_jax{os.sep}'


def is_package_record(record: py_logging.LogRecord) -> bool:
  """Whether a record comes from this package's code."""
  return _PACKAGE_DIR in record.pathname


class _ConsoleFilter(py_logging.Filter):
  """This package's records, and warnings or worse from anywhere but orbax.

  Orbax warns at every save without validation metrics, which is normal
  here, and a failed asynchronous save logs a traceback from each of its
  threads; `aac_jax.train.checkpointing` says in one line what failed, so
  orbax's records (and asyncio's from orbax's event loops) stay in
  `train.log` only.
  """

  def filter(self, record: py_logging.LogRecord) -> bool:
    if is_package_record(record):
      return True
    if _is_orbax_saving(record):
      return False
    return record.levelno >= py_logging.WARNING


def _is_orbax_saving(record: py_logging.LogRecord) -> bool:
  """Orbax's records, and asyncio's about its background saving threads."""
  return f'{os.sep}orbax{os.sep}' in record.pathname or record.name == 'asyncio'


_CONSOLE_FILTER = _ConsoleFilter()


def _drop_closed_loop_noise(unraisable) -> None:
  """`sys.unraisablehook` without orbax's `Event loop is closed` tracebacks.

  When an orbax save or restore fails (a full disk, a damaged checkpoint),
  orbax closes the operation's event loop while tensorstore still completes
  its other reads or writes; each completion then prints this traceback (67
  for one damaged checkpoint). The failure itself is reported in one line.
  """
  error = unraisable.exc_value
  if isinstance(error, RuntimeError) and str(error) == 'Event loop is closed':
    return
  _drop_closed_loop_noise.previous(unraisable)


_drop_closed_loop_noise.previous = sys.__unraisablehook__


def quiet_console(level: int | None = None) -> None:
  """Keeps library INFO lines off the console unless `--verbosity` was given.

  Args:
    level: also the lowest absl level shown (the tools, captioning and
      export, give `absl.logging.WARNING`: this package's warnings, such as
      a checkpoint skipped for an older one and why, still show).
  """
  if flags.FLAGS.is_parsed() and flags.FLAGS['verbosity'].present:
    return
  if sys.unraisablehook is not _drop_closed_loop_noise:
    _drop_closed_loop_noise.previous = sys.unraisablehook
    sys.unraisablehook = _drop_closed_loop_noise
  if level is not None:  # A tool: no log file, and absl's handler may not be the one used.
    logging.set_verbosity(level)
    if _CONSOLE_FILTER not in logging.get_absl_logger().filters:
      logging.get_absl_logger().addFilter(_CONSOLE_FILTER)
  handler = logging.get_absl_handler()
  if _CONSOLE_FILTER not in handler.filters:
    handler.addFilter(_CONSOLE_FILTER)


class _RunLogHandler(py_logging.FileHandler):
  """A `FileHandler` that stops at its first failed write (a full disk) with one warning.

  The standard handler prints a `--- Logging error ---` traceback for every
  record it cannot write, and raises from `close()`; a run on a full disk
  would bury its own one-line reason under hundreds of them.
  """

  def __init__(self, path: str):
    super().__init__(path)
    self.error: OSError | None = None

  def emit(self, record: py_logging.LogRecord) -> None:
    if self.error is None:
      super().emit(record)

  def handleError(self, record: py_logging.LogRecord) -> None:  # noqa: N802 - logging's name.
    error = sys.exc_info()[1]
    if self.error is not None or not isinstance(error, OSError):
      super().handleError(record)
      return
    self.error = error
    if record.name != _OPENING:  # Else `log_file` stops the run with the reason.
      logging.warning('%s; the rest of this run logs to the console only', self.reason())

  def reason(self) -> str:
    """`cannot write <file>: <why>`, as `aac_jax.files.RunFileError` says it."""
    why = getattr(self.error, 'strerror', None) or str(self.error)
    return f'cannot write {self.baseFilename}: {why}'

  def close(self) -> None:
    try:
      super().close()  # Flushes what is buffered: fails again on a full disk.
    except OSError:
      pass


_OPENING = 'aac_jax.log_file'


@contextlib.contextmanager
def log_file(workdir: epath.Path, name: str = LOG_FILENAME):
  """Appends every INFO-or-worse log record to `<workdir>/<name>` (process 0, local workdirs).

  Creates `workdir` where it does not exist yet, and writes the command line
  as the first record. When the disk fills later, the file stops (one
  warning on the console) and the run goes on.

  Raises:
    files.RunFileError: the file cannot be created or written (a full disk,
      no permission): before any work, logged as one line.
  """
  if jax.process_index() > 0 or '://' in str(workdir):
    yield
    return
  handler = _open_handler(workdir / name)
  root = py_logging.getLogger()
  absl_logger = logging.get_absl_logger()
  levels = (root.level, absl_logger.level)
  root.addHandler(handler)
  if root.getEffectiveLevel() > py_logging.INFO:  # Library use without absl flags.
    root.setLevel(py_logging.INFO)
  if absl_logger.getEffectiveLevel() > py_logging.INFO:
    absl_logger.setLevel(py_logging.INFO)
  try:
    yield
  finally:
    root.setLevel(levels[0])
    absl_logger.setLevel(levels[1])
    root.removeHandler(handler)
    handler.close()


def _open_handler(path: epath.Path) -> _RunLogHandler:
  """The handler of `path`, its first record written (so a full disk shows now)."""
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = _RunLogHandler(os.fspath(path))
  except OSError as error:
    failed = files.RunFileError(f'cannot write {path}: {error.strerror or error}')
    logging.error('%s', failed)
    raise failed from error
  handler.setFormatter(py_logging.Formatter('%(asctime)s %(levelname)s %(name)s %(message)s'))
  handler.setLevel(py_logging.INFO)
  first = py_logging.LogRecord(
    _OPENING, py_logging.INFO, __file__, 0, 'Command: %s', (shlex.join(sys.argv),), None
  )
  handler.handle(first)
  if handler.error is not None:
    failed = files.RunFileError(handler.reason())
    handler.close()
    logging.error('%s', failed)
    raise failed
  return handler
