"""Tests of the synthetic caption grammar (captions.py, lexicon.py)."""

import collections
import re

import numpy as np

from aac_jax.data.synthetic import captions, clips, events, lexicon, scenes


def _clip_captions(index: int, split: str = 'train') -> tuple[list[dict], list[str]]:
  scene_rng, _, caption_rng = clips.clip_rngs(0, split, index)
  gt = [e.to_json() for e in scenes.sample_scene(scene_rng).events]
  return gt, captions.make_captions(gt, caption_rng)


def test_five_distinct_plain_lowercase_references():
  for index in range(200):
    _, refs = _clip_captions(index)
    assert len(refs) == 5
    assert len(set(refs)) == 5, refs
    for ref in refs:
      assert re.fullmatch(r'[a-z]+( [a-z]+)*', ref), ref
      assert 3 <= len(ref.split()) <= 30, ref


def test_vocabulary_and_paraphrase_variety():
  vocab = collections.Counter()
  lengths = []
  for index in range(300):
    _, refs = _clip_captions(index)
    for ref in refs:
      vocab.update(ref.split())
      lengths.append(len(ref.split()))
  assert len(vocab) >= 150, len(vocab)
  for word in ('followed', 'then', 'while', 'background', 'twice', 'three', 'times', 'single'):
    assert vocab[word] > 0, word
  assert np.mean(np.array(lengths) <= captions.MAX_WORDS) > 0.95
  assert 8 <= np.mean(lengths) <= 20


def test_references_differ_like_crowd_captions():
  """Pairs of references of a clip share well under all their words."""
  overlaps = []
  for index in range(100):
    _, refs = _clip_captions(index)
    for i, a in enumerate(refs):
      for b in refs[i + 1 :]:
        sa, sb = set(a.split()), set(b.split())
        overlaps.append(len(sa & sb) / len(sa | sb))
  assert np.mean(overlaps) < 0.5


def test_every_event_type_is_named():
  seen = set()
  for index in range(300):
    gt, refs = _clip_captions(index)
    for e in gt:
      keywords = lexicon.TYPE_WORDS[e['type']].keywords
      for ref in refs:
        padded = f' {ref} '
        assert any(f' {k} ' in padded for k in keywords), (e['type'], ref)
      seen.add(e['type'])
  assert seen == set(events.EVENT_TYPES)


def test_keywords_name_exactly_one_type():
  owners = collections.defaultdict(set)
  for name, words in lexicon.TYPE_WORDS.items():
    for k in words.keywords:
      owners[k].add(name)
  assert not {k: v for k, v in owners.items() if len(v) > 1}
  function_words = set(
    lexicon.BOUNDARIES
    + lexicon.BACKGROUND_MARKERS
    + lexicon.BACKGROUND_PREFIX
    + lexicon.DETERMINERS
    + lexicon.REVERSING
  )
  for counts in (lexicon.COUNT_BEFORE, lexicon.COUNT_AFTER):
    function_words.update(w for words in counts.values() for w in words)
  assert not function_words & set(owners)


def test_count_words_match_ground_truth_counts():
  said = {2: ('twice', 'two'), 3: ('three',), 4: ('four',)}
  for index in range(150):
    gt, refs = _clip_captions(index)
    for e in gt:
      if e['count'] > 1:
        for ref in refs:
          assert any(w in ref.split() or 'a pair of' in ref for w in said[e['count']]), ref


def test_captions_are_deterministic():
  assert _clip_captions(5) == _clip_captions(5)
  assert _clip_captions(5)[1] != _clip_captions(5, split='test')[1]
