"""FENSE's corruption rules on fixed captions, and the detector trained, saved and reloaded.

The end-to-end checks train a tiny detector on a few hundred synthetic
benchmark captions: the folder it saves is read by the FENSE loader
(`fense_models.load_error_checker`, i.e. `--echecker_dir`) and gives the
training-time probabilities; the tool refuses to overwrite a detector.
"""

import dataclasses
import json
import pathlib
import subprocess
import sys

import jax
import numpy as np

from aac_jax.data.synthetic import captions as synthetic_captions
from aac_jax.data.synthetic import scenes
from aac_jax.metrics import bert, fense_models
from aac_jax.metrics import fluency_corruptions as fc
from aac_jax.metrics import fluency_training as ft

REPO = pathlib.Path(__file__).resolve().parents[1]
TOOL = REPO / 'tools' / 'train_fluency.py'
CORPUS = [
  'A dog barks loudly.',
  'dogs barking in the morning',
  'A machine hums; humming continues',
  'an engine idles and a car is idling',
  'the family sings twice',
  'a man speaks while a woman is speaking',
]
LEXICON = fc.build_lexicon(CORPUS)


def words(text: str) -> list[str]:
  return text.split()


def test_lexicon_finds_verbs_by_their_ing_form_and_adverbs():
  assert LEXICON.verbs == {
    'barks',
    'barking',
    'hums',
    'humming',
    'idles',
    'idling',
    'speaks',
    'speaking',
  }  # 'sings' has no -ing form here; 'morning' is no verb.
  assert LEXICON.adverbs == {'loudly', 'twice'}  # 'family' is no adverb.


def test_add_tail_appends_one_of_fenses_tails():
  caption = words('a dog barks')
  tails = {' '.join(fc.add_tail(caption, np.random.default_rng(s), LEXICON)[3:]) for s in range(60)}
  assert tails == set(fc.TAILS)


def test_split_events_cuts_at_joiners():
  assert fc.split_events(words('a bell rings followed by a dog barking while rain falls')) == [
    words('a bell rings'),
    words('a dog barking'),
    words('rain falls'),
  ]
  assert fc.split_events(words('and a dog barks')) == [words('a dog barks')]


def appended(out: list[str], n: int) -> tuple[str, str]:
  """(joiner, event) that `repeat_event` put after the first `n` words."""
  rest = out[n:]
  size = 2 if rest[0] == 'followed' else 1
  return ' '.join(rest[:size]), ' '.join(rest[size:])


def test_repeat_event_appends_an_event_again():
  caption = words('a dog barks while a man speaks')
  events, joiners = set(), set()
  for seed in range(40):
    out = fc.repeat_event(caption, np.random.default_rng(seed), LEXICON)
    assert out[:7] == caption
    joiner, event = appended(out, 7)
    joiners.add(joiner)
    events.add(event)
  assert events == {'a dog barks', 'dog barks', 'a man speaks', 'man speaks'}
  assert joiners == set(fc.EVENT_JOINERS) - {'with'}
  # No article to drop: one is added.
  outs = [
    fc.repeat_event(words('rain falls'), np.random.default_rng(s), LEXICON) for s in range(20)
  ]
  assert {appended(o, 2)[1] for o in outs} == {'rain falls', 'a rain falls'}


def test_repeat_adverb_repeats_the_last_adverb():
  rng = np.random.default_rng(0)
  assert fc.repeat_adverb(words('a dog barks loudly twice'), rng, LEXICON) == words(
    'a dog barks loudly twice twice'
  )
  assert fc.repeat_adverb(words('loudly a dog barks'), rng, LEXICON) == words(
    'loudly a dog barks loudly'
  )
  assert fc.repeat_adverb(words('a dog barks'), rng, LEXICON) is None
  # Only the last event's adverb: 'twice' said again after another event is fluent.
  assert fc.repeat_adverb(words('a dog barks twice and a man speaks'), rng, LEXICON) is None
  assert fc.repeat_adverb(
    words('a dog barks twice followed by a man speaking loudly'), rng, LEXICON
  ) == words('a dog barks twice followed by a man speaking loudly loudly')


def test_remove_conjunction_drops_the_last_one():
  rng = np.random.default_rng(0)
  assert fc.remove_conjunction(
    words('a dog barks and a man speaks while rain falls'), rng, LEXICON
  ) == words('a dog barks and a man speaks rain falls')
  assert fc.remove_conjunction(words('a dog barks'), rng, LEXICON) is None


def test_remove_verb_drops_the_last_verb_before_the_end():
  rng = np.random.default_rng(0)
  assert fc.remove_verb(words('a dog barks while a man speaks loudly'), rng, LEXICON) == words(
    'a dog barks while a man loudly'
  )
  assert fc.remove_verb(words('a dog is barking nearby'), rng, LEXICON) == words('a dog is nearby')
  # The final verb is spared ('a dog barks while a man' reads as fluent).
  assert fc.remove_verb(words('a dog barks while a man speaks'), rng, LEXICON) == words(
    'a dog while a man speaks'
  )
  assert fc.remove_verb(words('a man speaks'), rng, LEXICON) is None
  assert fc.remove_verb(words('a loud siren'), rng, LEXICON) is None


def test_removals_never_leave_a_word_pair_the_clean_captions_have():
  """A removal that leaves a corpus word pair may read as fluent: it takes an earlier word."""
  corpus = [*CORPUS, 'a bell rings twice then rain falls', 'a loud siren', 'a wailing siren']
  lexicon = fc.build_lexicon(corpus)
  unguarded = dataclasses.replace(lexicon, pairs=frozenset())
  rng = np.random.default_rng(0)
  # 'barks twice then rain falls' is how the corpus writes it: 'and' is not removed.
  caption = words('a man speaks and a dog barks twice and then rain falls')
  assert fc.remove_conjunction(caption, rng, unguarded) == words(
    'a man speaks and a dog barks twice then rain falls'
  )
  assert fc.remove_conjunction(caption, rng, lexicon) == words(
    'a man speaks a dog barks twice and then rain falls'
  )
  assert fc.remove_conjunction(words('a dog barks twice and then rain falls'), rng, lexicon) is None
  # 'wailing' used as an adjective: 'a loud siren' is fluent.
  caption = words('a loud wailing siren sounds')
  assert fc.remove_verb(caption, rng, unguarded) == words('a loud siren sounds')
  assert fc.remove_verb(caption, rng, lexicon) is None
  # A caption's first word: 'wailing siren' -> 'siren' would start a caption as no clean one does.
  assert fc.remove_verb(words('wailing siren sounds'), rng, lexicon) == words('siren sounds')


def test_corrupt_labels_the_rules_applied_and_any_error():
  caption = words('a dog barks and a man speaks loudly')
  counts = np.zeros(len(fc.CLASS_NAMES))
  for seed in range(200):
    out, labels = fc.corrupt(caption, np.random.default_rng(seed), LEXICON)
    assert out != caption and labels[-1] == 1 and labels[:-1].sum() in (1, 2)
    if labels[:-1].sum() == 1:  # One rule (maybe twice): removals shorten, the others lengthen.
      name = fc.ERROR_TYPES[int(np.argmax(labels[:-1]))]
      assert (len(out) < len(caption)) == name.startswith('remove')
    counts += labels
  assert (counts > 0).all()  # Every rule applies to this caption.


def test_make_examples_and_held_out_split():
  caps = ['A dog barks.', 'a dog barks', 'Rain falls loudly', 'a man speaks', 'a man is speaking']
  train, held = fc.split_held_out(caps, 0.25, seed=0)
  assert not set(train) & set(held) and len(held) == 1
  assert sorted(train + held) == sorted(
    {'a dog barks', 'rain falls loudly', 'a man speaks', 'a man is speaking'}
  )
  texts, labels = fc.make_examples(train, np.random.default_rng(0), fc.build_lexicon(caps))
  clean = [t for t, y in zip(texts, labels, strict=True) if not y.any()]
  assert sorted(clean) == sorted(train) and labels.shape == (len(texts), 6)
  assert all(t not in clean for t, y in zip(texts, labels, strict=True) if y.any())


def test_each_rule_examples_hold_one_text_per_applicable_rule():
  caps = ['a dog barks loudly and a car passes by', 'rain falls']
  lexicon = fc.build_lexicon(caps + ['a dog is barking'])
  texts, labels = fc.make_examples(
    caps, np.random.default_rng(0), lexicon, mixed=False, each_rule=True
  )
  assert texts[:2] == caps and not labels[:2].any()
  rules = {}
  for text, label in zip(texts[2:], labels[2:], strict=True):
    assert label[-1] == 1 and label[:-1].sum() == 1  # One rule each, and "any error".
    rules.setdefault(fc.ERROR_TYPES[int(np.argmax(label[:-1]))], []).append(text)
  assert rules['remove_conj'] == ['a dog barks loudly a car passes by']
  assert rules['remove_verb'] == ['a dog loudly and a car passes by']
  assert 'repeat_adv' not in rules  # 'loudly' is in the first event, not the last.
  assert len(rules['add_tail']) == 2 and len(rules['repeat_event']) == 2
  assert len(set(texts)) == len(texts)  # No text twice, none equal to a clean caption.
  both, both_labels = fc.make_examples(caps, np.random.default_rng(0), lexicon, each_rule=True)
  assert len(both) > len(texts) and both_labels.shape == (len(both), 6)


def test_params_to_hf_inverts_params_from_hf():
  config = bert.BertConfig(50, 16, 2, 2, 32, 64)
  ids = np.zeros((1, 4), np.int32)
  params = bert.BertEncoder(config).init(jax.random.key(0), ids, ids, ids)['params']
  back = bert.params_from_hf(bert.params_to_hf(params, config, 'encoder.'), config, 'encoder.')
  jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, params))
  assert bert.BertConfig.from_hf(bert.config_to_hf(config)) == config


def synthetic_captions_list(scenes_count: int, seed: int = 0) -> list[str]:
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(scenes_count):
    events = [e.to_json() for e in scenes.sample_scene(rng).events]
    out += synthetic_captions.make_captions(events, rng)
  return out


TINY = ft.DetectorSize(
  vocab_size=300, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64
)


def test_saved_detector_loads_through_fense_and_gives_the_training_probabilities(tmp_path):
  train_caps, held_caps = fc.split_held_out(synthetic_captions_list(60), 0.1, seed=0)
  rng = np.random.default_rng(0)
  lexicon = fc.build_lexicon(train_caps)
  texts, labels = fc.make_examples(train_caps, rng, lexicon)
  held_texts, _ = fc.make_examples(held_caps, rng, lexicon)
  tokenizer = ft.write_wordpiece(train_caps, tmp_path, TINY.vocab_size)
  module = ft.make_detector(TINY, tokenizer.get_vocab_size())
  inputs = ft.encode(tokenizer, texts)
  settings = ft.TrainSettings(steps=25, batch_size=32, lr=3e-3, log_every=0)
  params = ft.train(module, inputs, labels, settings)
  init = module.init(jax.random.key(settings.seed), *(a[:1] for a in inputs))['params']
  batch = (*inputs, labels)
  assert float(ft.bce_loss(module, params, batch)) < float(ft.bce_loss(module, init, batch)) - 0.05

  ft.save_detector(tmp_path, module, params, {'source': 'test'})
  checker = fense_models.load_error_checker(tmp_path)
  sample = held_texts + texts[:50]  # Unseen and seen texts, corrupted and clean.
  expected = ft.predict(module, params, ft.encode(tokenizer, sample))
  np.testing.assert_allclose(checker(sample), expected, atol=1e-5, rtol=0)
  meta = json.loads((tmp_path / 'echecker.json').read_text())
  assert meta['num_classes'] == 6 and meta['classes'] == list(fc.CLASS_NAMES)


def test_precision_recall_per_output():
  labels = np.array([[1, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 1]], np.float32)
  probs = np.array([[0.9, 0.1, 0, 0, 0, 0.9], [0.8, 0, 0, 0, 0, 0.2], [0.2, 0, 0, 0, 0, 0.7]])
  scores = ft.precision_recall(probs, labels)
  assert scores['add_tail'] == {'precision': 0.5, 'recall': 0.5, 'positives': 2.0}
  assert scores['error'] == {'precision': 1.0, 'recall': 1.0, 'positives': 2.0}
  assert np.isnan(scores['repeat_event']['precision']) and np.isnan(
    scores['repeat_event']['recall']
  )


def run_tool(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, str(TOOL), *args], capture_output=True, text=True, cwd=REPO, timeout=300
  )


def test_tool_help_exits_0():
  result = run_tool('--help')
  assert result.returncode == 0, result.stderr
  assert '--captions_file' in result.stdout + result.stderr


def test_tool_trains_then_refuses_to_overwrite_the_detector(tmp_path):
  (tmp_path / 'caps.txt').write_text('\n'.join(synthetic_captions_list(40, seed=1)) + '\n')
  out = tmp_path / 'detector'
  size = ['--hidden_size=32', '--num_layers=1', '--num_heads=2', '--intermediate_size=64']
  args = ['--captions_file', str(tmp_path / 'caps.txt'), '--output', str(out), '--steps=5', *size]
  result = run_tool(*args, '--vocab_size=300')
  assert result.returncode == 0, result.stderr[-2000:]
  assert '| remove_verb |' in result.stdout
  scores = json.loads((out / 'fluency_eval.json').read_text())
  assert list(scores) == ['single_rule', 'mixed']
  for table in scores.values():
    assert list(table) == list(fc.CLASS_NAMES) and table['error']['positives'] > 0
  single = scores['single_rule']  # Each held-out text has one rule: the types sum to "error".
  assert sum(single[n]['positives'] for n in fc.ERROR_TYPES) == single['error']['positives']
  fense_models.load_error_checker(out)
  weights = (out / 'model.safetensors').read_bytes()

  again = run_tool(*args)
  assert again.returncode == 1
  assert again.stderr.strip().splitlines()[-1] == (
    f'train_fluency: error: --output {out} exists and is not empty: give a new folder'
  )
  assert (out / 'model.safetensors').read_bytes() == weights
