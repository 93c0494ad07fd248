"""Where log lines go: the console shows this package's, `train.log` keeps all.

Libraries (orbax at every save, absl, TFDS) log many INFO lines that a
person watching a run does not need. `quiet_console()` filters the console
handler to this package's records and warnings or worse from anywhere;
`--verbosity` (absl's flag) given on the command line turns the filter off.
`log_file(workdir)` appends every INFO-or-worse record, libraries' too, to
`<workdir>/train.log`.
"""

import contextlib
import logging as py_logging
import os

import jax
from absl import flags, logging
from etils import epath

LOG_FILENAME = 'train.log'
_PACKAGE_DIR = f'{os.sep}aac_jax{os.sep}'


def is_package_record(record: py_logging.LogRecord) -> bool:
  """Whether a record comes from this package's code."""
  return _PACKAGE_DIR in record.pathname


class _ConsoleFilter(py_logging.Filter):
  """This package's records, and warnings or worse from anywhere.

  (orbax warns at every save without validation metrics, which is normal
  here, so its warnings stay in `train.log` only.)
  """

  def filter(self, record: py_logging.LogRecord) -> bool:
    if record.levelno >= py_logging.ERROR or is_package_record(record):
      return True
    return record.levelno >= py_logging.WARNING and f'{os.sep}orbax{os.sep}' not in record.pathname


_CONSOLE_FILTER = _ConsoleFilter()


def quiet_console() -> None:
  """Keeps library INFO lines off the console unless `--verbosity` was given."""
  if flags.FLAGS.is_parsed() and flags.FLAGS['verbosity'].present:
    return
  handler = logging.get_absl_handler()
  if _CONSOLE_FILTER not in handler.filters:
    handler.addFilter(_CONSOLE_FILTER)


@contextlib.contextmanager
def log_file(workdir: epath.Path, name: str = LOG_FILENAME):
  """Appends every INFO-or-worse log record to `<workdir>/<name>` (process 0, local workdirs).

  Creates `workdir` where it does not exist yet.
  """
  if jax.process_index() > 0 or '://' in str(workdir):
    yield
    return
  workdir.mkdir(parents=True, exist_ok=True)
  handler = py_logging.FileHandler(os.fspath(workdir / name))
  handler.setFormatter(py_logging.Formatter('%(asctime)s %(levelname)s %(name)s %(message)s'))
  handler.setLevel(py_logging.INFO)
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
