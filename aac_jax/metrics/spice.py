"""SPICE through the official spice-1.0.jar, and SPIDEr.

spice-1.0.jar and its small libraries ship in the pycocoevalcap wheel (the
`eval` extra), but it also needs Stanford CoreNLP 3.6.0
(``stanford-corenlp-3.6.0.jar`` and ``stanford-corenlp-3.6.0-models.jar``),
which the user downloads once (see docs/evaluation.md) and points to with the
`corenlp_dir` argument, the ``--spice_jars`` flag of ``aac-evaluate`` or
``$AAC_SPICE_CORENLP_DIR``. Nothing is downloaded here. On Java 9+ the
serialisation library SPICE uses needs ``--add-opens`` flags, added here.

Where Java, the jars or the CoreNLP files are missing, `SpiceUnavailable`
says which; callers then report SPICE and SPIDEr as unavailable (never an
estimate). SPIDEr = (CIDEr-D + SPICE) / 2, per clip and for the corpus.
"""

import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence

import numpy as np

CORENLP_JARS = ('stanford-corenlp-3.6.0.jar', 'stanford-corenlp-3.6.0-models.jar')
ENV_VAR = 'AAC_SPICE_CORENLP_DIR'
# Packages the FST serialiser in spice-1.0.jar reflects into (Java 9+).
_OPENS = (
  'java.base/java.lang',
  'java.base/java.lang.reflect',
  'java.base/java.io',
  'java.base/java.math',
  'java.base/java.net',
  'java.base/java.nio',
  'java.base/java.text',
  'java.base/java.time',
  'java.base/java.util',
  'java.base/java.util.concurrent',
  'java.base/java.util.concurrent.atomic',
  'java.base/java.util.regex',
  'java.sql/java.sql',
)


class SpiceUnavailable(RuntimeError):
  """SPICE cannot run here; the message says what is missing."""


def find_spice_jar() -> pathlib.Path:
  """Locates spice-1.0.jar in the pycocoevalcap wheel.

  Raises:
    SpiceUnavailable: pycocoevalcap (the `eval` extra) is not installed.
  """
  spec = importlib.util.find_spec('pycocoevalcap')
  for location in (spec.submodule_search_locations or []) if spec else []:
    jar = pathlib.Path(location) / 'spice' / 'spice-1.0.jar'
    if jar.is_file():
      return jar
  raise SpiceUnavailable(
    'SPICE needs spice-1.0.jar from pycocoevalcap 1.2: pip install "aac_jax[eval]"'
  )


def find_corenlp(corenlp_dir: str | os.PathLike | None = None) -> list[pathlib.Path]:
  """Locates the two CoreNLP 3.6.0 jars.

  Args:
    corenlp_dir: folder holding them (default: $AAC_SPICE_CORENLP_DIR).

  Returns:
    Paths of the code and models jars.

  Raises:
    SpiceUnavailable: no folder given or a jar missing.
  """
  folder = corenlp_dir or os.environ.get(ENV_VAR)
  if not folder:
    raise SpiceUnavailable(
      f'SPICE needs Stanford CoreNLP 3.6.0 ({", ".join(CORENLP_JARS)}): '
      f'pass their folder (spice_jars=..., --spice_jars) or set ${ENV_VAR}; see docs/evaluation.md'
    )
  jars = [pathlib.Path(folder).expanduser() / name for name in CORENLP_JARS]
  missing = [str(j) for j in jars if not j.is_file()]
  if missing:
    raise SpiceUnavailable(f'SPICE: missing CoreNLP jar(s): {", ".join(missing)}')
  return jars


def java_major_version(java: str) -> int:
  """Major version of a java executable (8 for "1.8.0_x")."""
  out = subprocess.run([java, '-version'], capture_output=True, text=True, check=False)
  match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
  if not match:
    raise SpiceUnavailable(f'SPICE: cannot read the version of {java}: {out.stderr[-300:]}')
  major = int(match.group(1))
  return int(match.group(2) or 0) if major == 1 else major


def spice_command(
  java: str, input_path: str, output_path: str, corenlp: Sequence[pathlib.Path], cache_dir=None
) -> list[str]:
  """The java command line that scores `input_path` into `output_path`.

  Args:
    java: java executable.
    input_path: SPICE input JSON.
    output_path: where SPICE writes its results.
    corenlp: the two CoreNLP jars.
    cache_dir: optional parse cache folder.

  Returns:
    The command as a list.
  """
  spice_jar = find_spice_jar()
  classpath = [str(spice_jar), str(spice_jar.parent / 'lib' / '*')] + [str(j) for j in corenlp]
  flags = ['-Xmx8G']
  if java_major_version(java) >= 9:
    flags += [f'--add-opens={p}=ALL-UNNAMED' for p in _OPENS]
  command = [java, *flags, '-cp', os.pathsep.join(classpath), 'edu.anu.spice.SpiceScorer']
  command += [input_path, '-out', output_path, '-subset', '-silent']
  if cache_dir:
    command += ['-cache', str(cache_dir)]
  return command


def parse_spice_output(results: list[dict], num_clips: int) -> tuple[float, np.ndarray]:
  """Reads SPICE's JSON output (image_id = clip index).

  Args:
    results: the parsed output file.
    num_clips: n.

  Returns:
    (corpus score, per-clip F-scores [n]); like pycocoevalcap, the corpus
    score is the mean of the clips' "All" F-scores (NaN if one is NaN).
  """
  scores = np.full(num_clips, np.nan)
  for item in results:
    value = item['scores']['All']['f']
    scores[int(item['image_id'])] = np.nan if value is None else float(value)
  return float(np.mean(scores)) if num_clips else 0.0, scores


def spice_scores(
  candidates: Sequence[str],
  references: Sequence[Sequence[str]],
  corenlp_dir: str | os.PathLike | None = None,
  java: str = 'java',
  cache_dir: str | os.PathLike | None = None,
) -> tuple[float, np.ndarray]:
  """Corpus and per-clip SPICE with the official jar.

  Args:
    candidates: [n] candidates (pycocoevalcap passes PTB-tokenized text).
    references: [n] lists of references.
    corenlp_dir: folder with the CoreNLP 3.6.0 jars.
    java: java executable.
    cache_dir: optional SPICE parse cache.

  Returns:
    (corpus score, per-clip scores [n]).

  Raises:
    SpiceUnavailable: Java, the jars or CoreNLP missing, or SPICE failed.
  """
  corenlp = find_corenlp(corenlp_dir)
  java_path = shutil.which(java)
  if java_path is None:
    raise SpiceUnavailable(f'SPICE needs Java, but "{java}" is not on PATH')
  java_path = os.path.abspath(java_path)  # SPICE runs from its jar's folder.
  rows = [
    {'image_id': i, 'test': c, 'refs': list(r)}
    for i, (c, r) in enumerate(zip(candidates, references, strict=True))
  ]
  with tempfile.TemporaryDirectory() as tmp:
    in_path, out_path = os.path.join(tmp, 'in.json'), os.path.join(tmp, 'out.json')
    with open(in_path, 'w', encoding='utf-8') as f:
      json.dump(rows, f)
    command = spice_command(java_path, in_path, out_path, corenlp, cache_dir)
    # As pycocoevalcap, from the jar's folder (SPICE finds its data there).
    cwd = find_spice_jar().parent
    run = subprocess.run(command, capture_output=True, text=True, check=False, cwd=cwd)
    if run.returncode != 0 or not os.path.exists(out_path):
      raise SpiceUnavailable(f'SPICE failed (exit {run.returncode}): {run.stderr[-2000:]}')
    with open(out_path, encoding='utf-8') as f:
      return parse_spice_output(json.load(f), len(rows))


def spider(cider_d: float | np.ndarray, spice: float | np.ndarray):
  """SPIDEr = (CIDEr-D + SPICE) / 2 (corpus values or per-clip arrays)."""
  return (np.asarray(cider_d) + np.asarray(spice)) / 2
