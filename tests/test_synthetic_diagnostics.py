"""Tests of the caption parser and event scorer (diagnostics.py)."""

import copy
import json

import numpy as np
import pytest

from aac_jax.data.synthetic import captions, clips, diagnostics, events, scenes

NUM_CLIPS = 300


def _corpus(num_clips: int = NUM_CLIPS, split: str = 'validation'):
  """[(ground truth, caption rng)] of the first clips of a split."""
  corpus = []
  for index in range(num_clips):
    scene_rng, _, caption_rng = clips.clip_rngs(0, split, index)
    corpus.append(([e.to_json() for e in scenes.sample_scene(scene_rng).events], caption_rng))
  return corpus


@pytest.fixture(scope='module')
def corpus():
  return _corpus()


def _types(mentions):
  return [(m.type, m.count, m.background) for m in mentions]


def test_parse_hand_written_captions():
  parse = lambda s: _types(diagnostics.parse_caption(s))  # noqa: E731
  assert parse('a bell rings twice after three knocks') == [
    ('knock', 3, False),
    ('bell', 2, False),
  ]
  assert parse('Two beeps, followed by a siren, while rain patters in the background.') == [
    ('beep', 2, False),
    ('siren', 1, False),
    ('rain', 1, True),
  ]
  assert parse('over a constant hum someone knocks on a door four times then a bird chirps') == [
    ('hum', 1, True),
    ('knock', 4, False),
    ('bird', 1, False),
  ]
  assert parse('a single whistle preceded by a pair of high beeps') == [
    ('beep', 2, False),
    ('whistle', 1, False),
  ]
  assert parse('a bell a bell') == [('bell', 1, False), ('bell', 1, False)]
  mention = diagnostics.parse_caption('a loud short high pitched beep')[0]
  assert mention.attributes == {'loudness': 'loud', 'duration': 'short', 'pitch': 'high'}
  assert diagnostics.parse_caption('a machine beeps quietly for a long time')[0].attributes == {
    'loudness': 'quiet',
    'duration': 'long',
  }


def test_references_score_perfectly(corpus):
  all_captions, all_events = [], []
  for gt, caption_rng in corpus:
    for ref in captions.make_captions(gt, caption_rng):
      metrics = diagnostics.score_captions([ref], [gt])
      assert metrics == {
        'event_precision': 1.0,
        'event_recall': 1.0,
        'event_f1': 1.0,
        'order_accuracy': 1.0,
        'count_accuracy': 1.0,
      }, (ref, gt, diagnostics.parse_caption(ref))
      all_captions.append(ref)
      all_events.append(json.dumps(gt))  # The stored JSON form works too.
  assert diagnostics.score_captions(all_captions, all_events)['event_f1'] == 1.0


def _caption_of(gt, rng):
  return captions.write_caption(gt, rng, attr_p=0.5)


def test_swapped_order_lowers_order_accuracy(corpus):
  wrong, right, gts = [], [], []
  for gt, _ in corpus:
    fg = [e for e in gt if not e['background']]
    if len(fg) < 2:
      continue
    swapped = copy.deepcopy(gt)
    fg_index = [i for i, e in enumerate(swapped) if not e['background']]
    a, b = swapped[fg_index[0]], swapped[fg_index[-1]]
    a['onset'], b['onset'] = b['onset'], a['onset']  # First and last swap places.
    rng = np.random.default_rng(len(gts))
    wrong.append(_caption_of(swapped, rng))
    right.append(_caption_of(gt, rng))
    gts.append(gt)
  bad, good = diagnostics.score_captions(wrong, gts), diagnostics.score_captions(right, gts)
  assert good['order_accuracy'] == 1.0
  assert bad['order_accuracy'] < 0.3
  assert bad['event_f1'] == 1.0  # Same events, wrong order.


def test_wrong_counts_lower_count_accuracy(corpus):
  wrong, gts = [], []
  for i, (gt, _) in enumerate(corpus):
    miscounted = copy.deepcopy(gt)
    for e in miscounted:
      if events.EVENT_SPECS[e['type']].countable:
        e['count'] = e['count'] % 4 + 1
    wrong.append(_caption_of(miscounted, np.random.default_rng(i)))
    gts.append(gt)
  bad = diagnostics.score_captions(wrong, gts)
  countable = sum(events.EVENT_SPECS[e['type']].countable for gt in gts for e in gt)
  total = sum(len(gt) for gt in gts)
  assert bad['count_accuracy'] == pytest.approx(1 - countable / total, abs=1e-9)
  assert bad['count_accuracy'] < 0.6
  assert bad['event_f1'] == 1.0


def test_missing_and_wrong_events_lower_f1(corpus):
  missing, replaced, gts = [], [], []
  for i, (gt, _) in enumerate(corpus):
    if len(gt) < 2:
      continue
    rng = np.random.default_rng(i)
    missing.append(_caption_of(gt[:-1], rng))
    other = copy.deepcopy(gt)
    unused = [t for t in events.EVENT_TYPES if t not in {e['type'] for e in gt}]
    new_type = str(rng.choice([t for t in unused if events.EVENT_SPECS[t].countable]))
    other[0].update(type=new_type, attributes={'loudness': 'loud'}, count=1)
    replaced.append(_caption_of(other, rng))
    gts.append(gt)
  m = diagnostics.score_captions(missing, gts)
  assert m['event_precision'] == 1.0 and m['event_recall'] < 0.75 and m['event_f1'] < 0.85
  r = diagnostics.score_captions(replaced, gts)
  assert r['event_precision'] < 0.8 and r['event_recall'] < 0.8


def test_word_salad_and_empty_captions(corpus):
  rng = np.random.default_rng(0)
  vocab = sorted({w for gt, _ in corpus[:50] for w in _caption_of(gt, rng).split()})
  salad = [' '.join(rng.choice(vocab, size=12)) for _ in corpus]
  gts = [gt for gt, _ in corpus]
  metrics = diagnostics.score_captions(salad, gts)
  assert all(0.0 <= v <= 1.0 for v in metrics.values())
  assert metrics['event_f1'] < 0.3
  empty = diagnostics.score_captions([''] * len(gts), gts)
  assert empty['event_f1'] == 0.0 and empty['event_recall'] == 0.0
  assert diagnostics.parse_caption('!!! 123 ??') == []


def test_score_captions_checks_lengths():
  with pytest.raises(ValueError):
    diagnostics.score_captions(['a beep'], [])
