"""METEOR through the official jar equals pycocoevalcap's METEOR."""

import collections
import csv
import shutil

import numpy as np
import pytest
from corpora import corpora_dir

from aac_jax.metrics import compute_caption_metrics, meteor, ptb_tokenizer


def _needs_meteor():
  pytest.importorskip('pycocoevalcap')
  if shutil.which('java') is None:
    pytest.skip('METEOR needs Java')


def _audiocaps_test(num_clips: int) -> tuple[list[str], list[list[str]]]:
  groups = collections.defaultdict(list)
  with open(corpora_dir() / 'audiocaps' / 'test.csv', encoding='utf-8', newline='') as f:
    for row in csv.DictReader(f):
      groups[row['youtube_id']].append(row['caption'])
  clips = list(groups.values())[:num_clips]
  cands = [clip[0] for clip in clips]
  # Perturbations: shuffled, truncated, repeated, empty.
  for i, clip in enumerate(clips[:60]):
    words = clip[0].split()
    cands[i] = [' '.join(words[::-1]), ' '.join(words[:3]), ' '.join(words + words), ''][i % 4]
  return cands, [clip[1:] for clip in clips]


def test_meteor_equals_pycocoevalcap():
  _needs_meteor()
  from pycocoevalcap.meteor.meteor import Meteor as ReferenceMeteor

  # Both JVMs load the paraphrase table at the same time (seconds each).
  reference = ReferenceMeteor()
  meteor.shared_meteor()
  raw_cands, raw_refs = _audiocaps_test(200)
  cands = ptb_tokenizer.tokenize_captions(raw_cands)
  refs = ptb_tokenizer.tokenize_references(raw_refs)
  expected, expected_clip = reference.compute_score(
    dict(enumerate(refs)), {i: [c] for i, c in enumerate(cands)}
  )
  # The facade's shared process, twice: it stays up between calls.
  result = compute_caption_metrics(raw_cands, raw_refs, meteor=True)
  again = compute_caption_metrics(raw_cands[:10], raw_refs[:10], meteor=True)
  assert result.corpus['meteor'] == expected
  np.testing.assert_array_equal(result.per_clip['meteor'], expected_clip)
  np.testing.assert_array_equal(again.per_clip['meteor'], expected_clip[:10])
  assert 'meteor' not in result.unavailable
  assert 0.2 < expected < 0.4


def test_missing_java_is_reported():
  with pytest.raises(meteor.MeteorUnavailable, match='needs Java'):
    meteor.Meteor(java='no-such-java-binary')
  result = compute_caption_metrics(['a dog'], [['a dog barks']], meteor=True, java='no-java-here')
  assert 'meteor' not in result.corpus and 'meteor' not in result.per_clip
  assert 'needs Java' in result.unavailable['meteor']
  assert 'bleu_1' in result.corpus


def test_missing_jar_is_reported(monkeypatch, tmp_path):
  monkeypatch.setenv('AAC_METEOR_JAR', str(tmp_path / 'absent.jar'))
  monkeypatch.setattr(meteor.importlib.util, 'find_spec', lambda name: None)
  with pytest.raises(meteor.MeteorUnavailable, match='eval extra'):
    meteor.find_meteor_jar()
