"""METEOR 1.5 through the official jar, as pycocoevalcap runs it.

The jar (and its paraphrase table) ship in the pycocoevalcap wheel: install
the `eval` extra (``pip install 'aac_jax[eval]'``) or point
``$AAC_METEOR_JAR`` at a ``meteor-1.5.jar`` with ``data/paraphrase-en.gz``
beside it. Java must be on PATH (any Java 8+ runs it).

One ``java -jar meteor-1.5.jar - - -stdio -l en -norm`` process is started
on first use and kept for later calls (loading the paraphrase table takes
seconds). The protocol is pycocoevalcap's: one ``SCORE ||| refs ||| hyp``
line per clip returns statistics, then one ``EVAL ||| stats ...`` line
returns each clip's score and the corpus score (computed by METEOR from the
pooled statistics, not the mean of clip scores).
"""

import atexit
import importlib.util
import os
import pathlib
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence

import numpy as np


class MeteorUnavailable(RuntimeError):
  """METEOR cannot run here (no Java or no jar); the message says why."""


def find_meteor_jar() -> pathlib.Path:
  """Locates meteor-1.5.jar ($AAC_METEOR_JAR, else the pycocoevalcap wheel).

  Raises:
    MeteorUnavailable: no jar found.
  """
  env = os.environ.get('AAC_METEOR_JAR')
  candidates = [pathlib.Path(env).expanduser()] if env else []
  spec = importlib.util.find_spec('pycocoevalcap')
  for location in (spec.submodule_search_locations or []) if spec else []:
    candidates.append(pathlib.Path(location) / 'meteor' / 'meteor-1.5.jar')
  for path in candidates:
    if path.is_file():
      return path
  raise MeteorUnavailable(
    'METEOR needs meteor-1.5.jar: install the eval extra (pip install "aac_jax[eval]", '
    'which brings pycocoevalcap 1.2 and its jars) or set AAC_METEOR_JAR '
    f'(looked at {[str(c) for c in candidates] or "nothing"})'
  )


def find_java(java: str = 'java') -> str:
  """Returns the java executable's absolute path (the jar runs from its own folder).

  Args:
    java: a name looked up on PATH, or a path (relative to the current folder).

  Raises:
    MeteorUnavailable: Java is not installed.
  """
  path = shutil.which(java)
  if path is None:
    raise MeteorUnavailable(
      f'METEOR needs Java, but "{java}" is not on PATH: install a Java runtime '
      '(8 or newer, e.g. "apt-get install default-jre-headless") or pass java=<path>'
    )
  return os.path.abspath(path)


class Meteor:
  """A long-lived METEOR 1.5 process.

  Use as a context manager or call `close()`; `shared_meteor()` keeps one
  for the whole program.
  """

  def __init__(self, jar: str | os.PathLike | None = None, java: str = 'java', memory: str = '2G'):
    """Starts the jar.

    Args:
      jar: meteor-1.5.jar (default: `find_meteor_jar()`).
      java: java executable.
      memory: JVM heap (-Xmx), as pycocoevalcap.

    Raises:
      MeteorUnavailable: no Java or no jar.
    """
    jar = pathlib.Path(jar) if jar else find_meteor_jar()
    command = [find_java(java), '-jar', f'-Xmx{memory}', jar.name, '-', '-', '-stdio']
    self._stderr = tempfile.TemporaryFile()
    self._process = subprocess.Popen(
      command + ['-l', 'en', '-norm'],
      cwd=jar.parent,
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      stderr=self._stderr,
    )
    self._lock = threading.Lock()

  def _ask(self, line: str, answers: int = 1) -> list[str]:
    self._process.stdin.write((line + '\n').encode())
    self._process.stdin.flush()
    out = []
    for _ in range(answers):
      reply = self._process.stdout.readline()
      if not reply:
        self._stderr.seek(0)
        detail = self._stderr.read().decode(errors='replace')[-2000:]
        raise MeteorUnavailable(f'METEOR process ended unexpectedly: {detail}')
      out.append(reply.decode().strip())
    return out

  def score(
    self, candidates: Sequence[str], references: Sequence[Sequence[str]]
  ) -> tuple[float, np.ndarray]:
    """Corpus and per-clip METEOR.

    Args:
      candidates: [n] candidates (pycocoevalcap passes PTB-tokenized text).
      references: [n] lists of references.

    Returns:
      (corpus score, per-clip scores [n]).
    """
    if len(candidates) != len(references):
      raise ValueError(f'{len(candidates)} candidates but {len(references)} reference lists')
    if not candidates:
      return 0.0, np.zeros(0)
    with self._lock:
      stats = []
      for cand, refs in zip(candidates, references, strict=True):
        hypothesis = cand.replace('|||', '').replace('  ', ' ')
        stats.append(self._ask(' ||| '.join(('SCORE', ' ||| '.join(refs), hypothesis)))[0])
      replies = self._ask(' ||| '.join(['EVAL'] + stats), len(stats) + 1)
    return float(replies[-1]), np.array([float(r) for r in replies[:-1]])

  def close(self) -> None:
    """Stops the process."""
    if self._process.poll() is None:
      self._process.stdin.close()
      self._process.kill()
      self._process.wait()
    self._stderr.close()

  def __enter__(self) -> 'Meteor':
    return self

  def __exit__(self, *exc) -> None:
    self.close()


_SHARED: dict[tuple[str, str], Meteor] = {}


def shared_meteor(java: str = 'java') -> Meteor:
  """One `Meteor` per java executable for the whole program (closed at exit)."""
  key = (find_java(java), str(find_meteor_jar()))
  meteor = _SHARED.get(key)
  if meteor is None or meteor._process.poll() is not None:
    meteor = _SHARED[key] = Meteor(java=key[0])
    atexit.register(meteor.close)
  return meteor
