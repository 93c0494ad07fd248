"""SPICE plumbing and SPIDEr; the real score needs the user's CoreNLP jars.

Without the CoreNLP 3.6.0 jars SPICE must be reported unavailable with the
reason, and SPIDEr with it; never a number. With `$AAC_SPICE_CORENLP_DIR`
set, `test_spice_runs_with_corenlp` runs the real jar.
"""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from aac_jax.metrics import compute_caption_metrics, spice


def _fake_corenlp(folder) -> str:
  for name in spice.CORENLP_JARS:
    (folder / name).write_bytes(b'')
  return str(folder)


def test_unavailable_without_corenlp(monkeypatch):
  monkeypatch.delenv(spice.ENV_VAR, raising=False)
  result = compute_caption_metrics(['a dog barks'], [['a dog is barking']], spice=True)
  assert 'spice' not in result.corpus and 'spider' not in result.corpus
  assert 'spice' not in result.per_clip and 'spider' not in result.per_clip
  assert 'CoreNLP 3.6.0' in result.unavailable['spice']
  assert result.unavailable['spider'].startswith('needs SPICE')
  assert result.corpus['cider_d'] >= 0


def test_not_requested_is_explained():
  result = compute_caption_metrics(['a dog barks'], [['a dog is barking']])
  assert result.unavailable['spice'] == 'not requested (spice=False)'


def test_missing_jar_names_it(tmp_path):
  (tmp_path / spice.CORENLP_JARS[0]).write_bytes(b'')
  with pytest.raises(spice.SpiceUnavailable, match='models.jar'):
    spice.find_corenlp(tmp_path)


def test_environment_variable_is_used(monkeypatch, tmp_path):
  monkeypatch.setenv(spice.ENV_VAR, _fake_corenlp(tmp_path))
  assert [p.name for p in spice.find_corenlp()] == list(spice.CORENLP_JARS)


def test_command_line(tmp_path):
  if shutil.which('java') is None:
    pytest.skip('needs Java')
  pytest.importorskip('pycocoevalcap')
  jars = spice.find_corenlp(_fake_corenlp(tmp_path))
  java = shutil.which('java')
  command = spice.spice_command(java, 'in.json', 'out.json', jars, cache_dir=tmp_path)
  assert command[-2:] == ['-cache', str(tmp_path)]
  assert 'edu.anu.spice.SpiceScorer' in command
  classpath = command[command.index('-cp') + 1].split(os.pathsep)
  assert classpath[0].endswith('spice-1.0.jar') and str(jars[1]) in classpath
  opens = [c for c in command if c.startswith('--add-opens')]
  assert bool(opens) == (spice.java_major_version(java) >= 9)


def test_jvm_accepts_the_flags(tmp_path):
  """The real jar starts with our flags and stops only for want of CoreNLP."""
  if shutil.which('java') is None:
    pytest.skip('needs Java')
  pytest.importorskip('pycocoevalcap')
  jars = spice.find_corenlp(_fake_corenlp(tmp_path))
  inp = tmp_path / 'in.json'
  inp.write_text(json.dumps([{'image_id': 0, 'test': 'a dog', 'refs': ['a dog barks']}]))
  command = spice.spice_command(shutil.which('java'), str(inp), str(tmp_path / 'o.json'), jars)
  run = subprocess.run(command, capture_output=True, text=True, cwd=spice.find_spice_jar().parent)
  assert run.returncode != 0
  assert 'edu/stanford/nlp' in run.stderr, run.stderr[-500:]
  assert 'Unrecognized option' not in run.stderr and 'InaccessibleObject' not in run.stderr


def test_parse_output_and_spider():
  results = [
    {'image_id': 1, 'scores': {'All': {'f': 0.5, 'pr': 0.5, 're': 0.5}}},
    {'image_id': 0, 'scores': {'All': {'f': 0.25, 'pr': 0.2, 're': 0.3}}},
  ]
  corpus, per_clip = spice.parse_spice_output(results, 2)
  np.testing.assert_allclose(per_clip, [0.25, 0.5])
  assert corpus == pytest.approx(0.375)
  np.testing.assert_allclose(spice.spider(np.array([1.0, 0.5]), per_clip), [0.625, 0.5])
  nan_corpus, _ = spice.parse_spice_output([{'image_id': 0, 'scores': {'All': {'f': None}}}], 1)
  assert np.isnan(nan_corpus)


def test_spice_runs_with_corenlp():
  folder = os.environ.get(spice.ENV_VAR)
  if not folder:
    pytest.skip(f'set {spice.ENV_VAR} to the CoreNLP 3.6.0 jars to run SPICE')
  result = compute_caption_metrics(
    ['a dog barks loudly', 'a man speaks'],
    [['a dog is barking', 'dog barks'], ['a man talks', 'someone speaks']],
    spice=True,
  )
  assert 0 < result.corpus['spice'] <= 1, result.unavailable
  expected = (result.per_clip['cider_d'] + result.per_clip['spice']) / 2
  np.testing.assert_allclose(result.per_clip['spider'], expected)
