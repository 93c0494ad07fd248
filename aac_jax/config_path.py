"""Config flags on the command line: finding `configs/`, one line for a bad flag.

Config files are plain Python files under `configs/` that import their
shared pieces (`configs.base`). `python -m aac_jax.main` from the repository
root finds them through the current directory; a console script started
elsewhere does not, so the entry points put the folder above each
`--config*` file's `configs/` on `sys.path` before the flags are parsed.

A misspelt field (`--config.optim.lrr=1`), variant (`:runlokal`) or a value
of the wrong type makes the flag parser raise with a nested traceback;
`parse_flags` (given to `absl.app.run` as its `flags_parser`) prints one
line naming the flag instead and exits with status 2, like bad config
values (`aac_jax.config_validation`).
"""

import pathlib
import re
import sys

from absl import flags

BAD_FLAG_STATUS = 2  # The status of bad config values too (`aac_jax.main`).
HELP_FLAGS = frozenset({'--help', '--helpshort', '--helpfull', '--helpxml', '-?'})


def add_config_root_to_path(argv: list[str]) -> None:
  """Puts the parent folder of every `--config*=FILE[:variant]` on sys.path."""
  values = []
  for i, arg in enumerate(argv):
    name, sep, value = arg.partition('=')
    if not name.startswith('--') or '.' in name or not name[2:].endswith('config'):
      continue
    if sep:
      values.append(value)
    elif i + 1 < len(argv):
      values.append(argv[i + 1])
  for value in values:
    path = pathlib.Path(value.split(':', 1)[0]).expanduser().resolve()
    root = str(path.parent.parent)
    if path.parent.name == 'configs' and root not in sys.path:
      sys.path.insert(0, root)


def _unquote(text: str) -> str:
  """The text of a `KeyError`/`AttributeError` from a `ConfigDict` (a repr inside a repr)."""
  while len(text) > 1 and text[0] == text[-1] and text[0] in '\'"':
    text = text[1:-1].replace("\\'", "'").replace('\\n', '\n')
  return text


def flag_error_message(error: Exception, argv: list[str]) -> str:
  """One line for a flag that does not parse.

  Args:
    error: what `absl.flags.FLAGS(argv)` raised.
    argv: the command line (to name the flag of an unknown config field).

  Returns:
    The flag and the reason, without tracebacks or line breaks.
  """
  text = _unquote(str(error.args[0]) if len(error.args) == 1 else str(error)).strip()
  if 'Traceback (most recent call last)' in text:  # An error raised inside the config file.
    head = text.split('Traceback', 1)[0].strip().rstrip(':')
    head = head.removesuffix('Error whilst parsing config file').strip().rstrip(':')
    text = f'{head}: {text.splitlines()[-1].strip()}'
  elif isinstance(error, KeyError | AttributeError):  # An unknown config field.
    key, _, hint = text.partition('\n')
    key = key.strip('\'"')
    used = [a.split('=', 1)[0] for a in argv if re.search(rf'^--\w+(\.\w+)*\.{key}(\.|=|$)', a)]
    text = f'{used[0] if used else "a config flag"}: no config field {key!r}. {hint}'.strip()
  return ' '.join(text.split())


def parse_flags(argv: list[str]) -> list[str]:
  """`absl.app.run`'s `flags_parser`: parses `argv`, or prints one line and exits 2.

  The help flags print absl's usage and exit 0 (absl itself exits 1), so
  every entry point answers `--help` with status 0. Every absl entry point
  (`aac_jax.main`, `aac_jax.scst.main`, the demo, sweeps, tools) uses it.

  Returns:
    The arguments left after the flags (as absl's own parser).
  """
  try:
    return flags.FLAGS(argv)
  except SystemExit as stop:
    # absl prints the help asked for, then exits 1; asking for help is no error.
    if stop.code == 1 and HELP_FLAGS.intersection(argv[1:]):
      sys.exit(0)
    raise
  except Exception as error:  # noqa: BLE001 - the config parser raises several kinds.
    print(f'error: {flag_error_message(error, argv)}', file=sys.stderr)
    sys.exit(BAD_FLAG_STATUS)
