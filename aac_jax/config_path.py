"""Makes `from configs import base` work inside config files run from anywhere.

Config files are plain Python files under `configs/` that import their
shared pieces (`configs.base`). `python -m aac_jax.main` from the repository
root finds them through the current directory; a console script started
elsewhere does not, so the entry points put the folder above each
`--config*` file's `configs/` on `sys.path` before the flags are parsed.
"""

import pathlib
import sys


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
