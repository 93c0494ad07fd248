"""Locates the real AudioCaps / Clotho caption CSVs used by parity tests.

The CSVs are third-party text and are never copied into this repository.
Tests read them from `$AAC_CORPORA_DIR`, else from `../shared/corpora` next
to the repository, and skip with a clear reason where neither exists.
"""

import os
import pathlib

import pytest

_REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def corpora_dir() -> pathlib.Path:
  """Returns the corpora directory or skips the calling test."""
  env = os.environ.get('AAC_CORPORA_DIR')
  candidates = [pathlib.Path(env)] if env else []
  candidates.append(_REPO_ROOT.parent / 'shared' / 'corpora')
  for path in candidates:
    if (path / 'clotho').is_dir() and (path / 'audiocaps').is_dir():
      return path
  pytest.skip(
    'real caption corpora not found: set AAC_CORPORA_DIR to a folder holding '
    'audiocaps/{train,val,test}.csv and clotho/clotho_captions_*.csv '
    f'(looked in {[str(c) for c in candidates]})'
  )
