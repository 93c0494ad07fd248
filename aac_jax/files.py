"""Writing run files whole or not at all.

Every file a run writes for later (config, vocabulary, feature statistics,
predictions, scores, export metadata) goes through `write_text` /
`write_bytes`: the bytes go to a private temporary file beside the target,
which is then renamed over it. A reader (or a restarted run) therefore sees
the old file or the new one, never half of one; after a failed write (disk
full, no permission) the temporary file is removed and `RunFileError` names
the file and the reason in one line.

Temporary names carry the host name, the process id and a random part, so
several processes (several hosts on one bucket too) never share one.
"""

import os
import socket
import uuid

from etils import epath


class RunFileError(OSError):
  """A run file could not be written; the message names the file and why."""


def _temporary_path(path: epath.Path) -> epath.Path:
  tag = f'{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}'
  return path.with_name(f'.{path.name}.{tag}.tmp')


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Writes `data` to `path` atomically (creating the parent folder).

  Raises:
    RunFileError: the file could not be written (the old file, if any, is
      unchanged).
  """
  path = epath.Path(path)
  tmp = _temporary_path(path)
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(data)
    tmp.replace(path)
  except OSError as error:
    try:
      if tmp.exists():
        tmp.unlink()
    except OSError:
      pass
    reason = error.strerror or str(error)
    raise RunFileError(f'cannot write {path}: {reason}') from error


def write_text(path: str | os.PathLike, text: str) -> None:
  """Writes UTF-8 `text` to `path` atomically (see `write_bytes`)."""
  write_bytes(path, text.encode('utf-8'))
