"""Weighted dataset mixtures: proportions, one global order, resume, task tokens.

The three splits of one toy dataset stand in for three datasets (a mixture
entry is a (dataset, split) pair); each entry has its own task token.
"""

import json
import types

import jax
import numpy as np
import pytest
import toy_dataset
from test_model import MELS, fast_jit, random_params, tiny_config

from aac_jax.data import mixture, pipeline, sources, tokenizer
from aac_jax.data.tokenizer import BOS_ID, Tokenizer
from aac_jax.models import Captioner
from aac_jax.train.metric_writers import MetricWriter
from configs import base

SPLITS = {'train': 13, 'validation': 7, 'test': 5}
WEIGHTS = {'train': 0.5, 'validation': 0.3, 'test': 0.2}
TASKS = {'train': 'wavcaps', 'validation': 'audiocaps', 'test': ''}


@pytest.fixture(scope='module')
def cfg(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('data')
  toy_dataset.build_toy_dataset(str(data_dir), splits=SPLITS, min_seconds=0.02, max_seconds=0.05)
  c = base.get_dataset_config()
  c.name, c.data_dir, c.build_if_missing = toy_dataset.NAME, str(data_dir), False
  c.max_audio_seconds = 0.01
  c.max_caption_tokens = 6
  c.mixture = tuple((f'{toy_dataset.NAME}/plain', s, WEIGHTS[s], TASKS[s]) for s in SPLITS)
  return c


@pytest.fixture(scope='module')
def vocab(cfg):
  captions = [c for s in SPLITS for c in sources.load_split_captions(cfg, s)]
  tasks = mixture.tasks(mixture.parse(cfg))
  return Tokenizer.build(captions, extra_tokens=[mixture.task_token(t) for t in tasks])


def _task_ids(vocab):
  return {s: vocab.tokens.index(f'<bos_{t}>') if t else -1 for s, t in TASKS.items()}


def _global_batches(cfg, vocab, global_batch, process_count, steps, state=None):
  """`steps` global batches read by `process_count` processes, slices side by side."""
  iterators = [
    pipeline.make_train_iterator(cfg, vocab, global_batch, p, process_count)
    for p in range(process_count)
  ]
  for it in iterators:
    if state is not None:
      it.set_state(state)
  parts = [[next(it) for _ in range(steps)] for it in iterators]
  return [
    {k: np.concatenate([b[k] for b in step]) for k in step[0]} for step in zip(*parts, strict=True)
  ]


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b, strict=True):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_proportions_over_10000_examples_match_weights(cfg):
  """The entry of each of 10,000 global positions (what `mixture.positions` follows)."""
  order = mixture.selection(list(WEIGHTS.values()))
  entries = np.array([order[g][0] for g in range(10_000)])
  for i, split in enumerate(SPLITS):
    observed = np.mean(entries == i)
    assert abs(observed - WEIGHTS[split]) <= 0.02, (split, observed)


def test_positions_follow_the_selection_and_shuffle_each_entry(cfg):
  lengths, weights = list(SPLITS.values()), list(WEIGHTS.values())
  chosen = mixture.selection(weights)
  order = mixture.positions(lengths, weights, seed=7)
  drawn = {i: [] for i in range(len(lengths))}
  for g in range(100):
    entry, index = order[g]
    assert entry == chosen[g][0] and 0 <= index < lengths[entry]
    drawn[entry].append(index)
  for entry, indices in drawn.items():  # Each pass over an entry: all its records, shuffled.
    n = lengths[entry]
    assert sorted(indices[:n]) == list(range(n)) and indices[:n] != list(range(n))


def test_pipeline_reads_entries_in_proportion(cfg, vocab):
  batches = _global_batches(cfg, vocab, 50, 1, 4)
  tokens = np.concatenate([b['task_tokens'] for b in batches])
  for split, task_id in _task_ids(vocab).items():
    assert abs(np.mean(tokens == task_id) - WEIGHTS[split]) <= 0.02, split


def test_examples_come_from_their_entry_and_every_clip_is_visited(cfg, vocab):
  """Each example's audio is a clip of the split its task token names."""
  clips = {s: [r['audio'] for r in sources.open_source(cfg, s)] for s in SPLITS}
  ids = _task_ids(vocab)
  seen = {s: set() for s in SPLITS}
  for batch in _global_batches(cfg, vocab, 10, 1, 10):
    for row in range(10):
      split = next(s for s, i in ids.items() if i == batch['task_tokens'][row])
      real = batch['audio'][row][batch['audio_paddings'][row] == 0]
      samples = np.round(real * 32768.0).astype(np.int16)
      matches = [
        i
        for i, clip in enumerate(clips[split])
        if any(
          np.array_equal(clip[j : j + len(samples)], samples)
          for j in range(len(clip) - len(samples) + 1)
        )
      ]
      assert matches, f'a {split} example matches no {split} clip'
      seen[split].add(matches[0])
  # 100 examples: every clip of every entry at least once (weights x 100 > clips).
  assert {s: len(v) for s, v in seen.items()} == SPLITS


def test_one_global_order_for_1x4_and_2x2(cfg, vocab):
  one = _global_batches(cfg, vocab, 4, 1, 12)
  two = _global_batches(cfg, vocab, 4, 2, 12)
  four = _global_batches(cfg, vocab, 4, 4, 12)
  _assert_same(two, one)
  _assert_same(four, one)


def test_resumed_run_sees_the_same_next_batch(cfg, vocab):
  straight = _global_batches(cfg, vocab, 4, 1, 9)
  two = [pipeline.make_train_iterator(cfg, vocab, 4, p, 2) for p in range(2)]
  for it in two:
    for _ in range(5):
      next(it)
  state = two[0].get_state()
  assert state == two[1].get_state() == {'next_position': 20, 'global_batch_size': 4}
  for process_count in (1, 4):
    _assert_same(_global_batches(cfg, vocab, 4, process_count, 4, state=state), straight[5:])


def test_task_tokens_reach_the_decoder(cfg, vocab):
  """The decoder's first input is each example's task token, and its output depends on it."""
  batch = _global_batches(cfg, vocab, 8, 1, 1)[0]
  inputs = tokenizer.with_task_tokens(tokenizer.shift_right(batch['targets']), batch['task_tokens'])
  expected = np.where(batch['task_tokens'] >= 0, batch['task_tokens'], BOS_ID)
  np.testing.assert_array_equal(np.asarray(inputs[:, 0]), expected)
  np.testing.assert_array_equal(np.asarray(inputs[:, 1:]), batch['targets'][:, :-1])
  model = Captioner(tiny_config(vocab_size=vocab.vocab_size))
  params = random_params(model, seed=0)
  encoded = jax.random.normal(jax.random.key(0), (8, 4, 16))  # [b, s, encoder_dim]

  @fast_jit
  def logits(decoder_inputs):
    return model.apply(
      {'params': params}, encoded, np.zeros((8, 4)), decoder_inputs, method=model.decode
    )

  with_tasks = logits(inputs)
  plain = logits(tokenizer.shift_right(batch['targets']))
  differs = np.abs(np.asarray(with_tasks - plain)).max(axis=(1, 2)) > 1e-6
  np.testing.assert_array_equal(differs, batch['task_tokens'] >= 0)


@pytest.mark.parametrize(
  'mixture_value, message',
  [
    ((('toy_aac', 'train', 1.0),), 'each entry is'),
    ((('toy_aac', 'train', 0.0, 'x'),), 'must be a number > 0'),
    ((('toy_aac', 'train', 1.0, 'Bad Task'),), 'lower-case'),
    ((('toy_aac', 'train', 1.0, 'a'), ('toy_aac', 'train', 2.0, 'b')), 'repeats entry 0'),
    ((('toy_aac', 'train', 1.0, 'x_{source}'),), r'toy_aac records name no source.*wavcaps_aac'),
    ((('wavcaps_aac', 'train', 1.0, '{source}_{source}'),), 'at most one'),
  ],
)
def test_malformed_mixture_is_one_line(cfg, mixture_value, message):
  bad = cfg.copy_and_resolve_references()
  bad.mixture = mixture_value
  with pytest.raises(mixture.MixtureError, match=message) as error:
    mixture.parse(bad)
  assert '\n' not in str(error.value)


def test_task_per_record_source():
  """`'wavcaps_{source}'` expands to CoNeTTE's four WavCaps tasks; each record gets its own."""
  entries = [
    mixture.Entry('clotho_aac', 'development', 1.0, 'clotho'),
    mixture.Entry('wavcaps_aac', 'train', 1.0, 'wavcaps_{source}'),
  ]
  expected = ['wavcaps_audioset_sl', 'wavcaps_bbc_sound_effects', 'wavcaps_freesound']
  assert mixture.tasks(entries) == ['clotho', *expected, 'wavcaps_soundbible']
  vocab = Tokenizer.build(
    ['a dog'], extra_tokens=[mixture.task_token(t) for t in mixture.tasks(entries)]
  )
  clotho_ids, wavcaps_ids = mixture.task_ids(entries, vocab.tokens)
  assert mixture.record_task_id(clotho_ids, {}) == vocab.tokens.index('<bos_clotho>')
  record = {'source': b'BBC_Sound_Effects'}
  assert (
    vocab.tokens[mixture.record_task_id(wavcaps_ids, record)] == '<bos_wavcaps_bbc_sound_effects>'
  )
  with pytest.raises(mixture.MixtureError, match=r"source 'Elsewhere' has no task token"):
    mixture.record_task_id(wavcaps_ids, {'source': b'Elsewhere'})


def test_vocabulary_without_task_tokens_names_the_fix(cfg):
  plain = Tokenizer.build(sources.load_split_captions(cfg, 'train'))
  with pytest.raises(mixture.MixtureError, match=r"lacks the task tokens \['<bos_wavcaps>'"):
    pipeline.make_train_iterator(cfg, plain, 4, 0, 1)


def test_run_vocabulary_holds_every_entry_and_the_task_tokens(cfg, vocab, tmp_path):
  built = tokenizer.load_or_build(cfg, None, str(tmp_path))
  assert built.tokens == vocab.tokens
  assert built.tokens[-2:] == ['<bos_wavcaps>', '<bos_audiocaps>']
  assert Tokenizer.load(tmp_path / tokenizer.VOCAB_FILENAME).tokens == built.tokens
  batch = _global_batches(cfg, built, 8, 1, 1)[0]
  inputs = np.asarray(tokenizer.decoder_inputs(batch))
  np.testing.assert_array_equal(
    inputs[:, 0], np.where(batch['task_tokens'] >= 0, batch['task_tokens'], BOS_ID)
  )
  del batch['task_tokens']
  np.testing.assert_array_equal(
    tokenizer.decoder_inputs(batch), tokenizer.shift_right(batch['targets'])
  )


def test_task_selects_the_first_decoder_token_at_inference(vocab):
  """`--task` (`inference.with_task`) on a mixture-trained ('aac_jax' decoder) model."""
  from aac_jax import inference  # noqa: PLC0415 (the inference floor, for this test only)

  model = Captioner(tiny_config(vocab_size=vocab.vocab_size, deterministic=True))
  params = random_params(model, seed=1)
  config = base.get_base_config()
  config.decode.max_len = 8
  loaded = inference.LoadedModel(config, model, params, vocab, '', -1, 'in-memory')
  assert inference.task_names(loaded) == ['wavcaps', 'audiocaps']
  task_id = vocab.tokens.index('<bos_audiocaps>')
  tasked = inference.with_task(loaded, 'audiocaps')
  assert tasked.model.config.task_token_id == task_id
  assert inference.make_settings(tasked)[0].bos_id == task_id
  assert inference.make_settings(loaded)[0].bos_id == BOS_ID
  with pytest.raises(ValueError, match=r"knows the tasks \['wavcaps', 'audiocaps'\]"):
    inference.with_task(loaded, 'clotho')
  # Teacher forcing: the tasked decoder reads its task token at position 0 whatever it is given.
  encoded = jax.random.normal(jax.random.key(2), (3, 4, 16))
  bos_first = np.array([[BOS_ID, 5, 6, 7]] * 3, np.int32)
  task_first = bos_first.copy()
  task_first[:, 0] = task_id

  def logits(m, decoder_inputs):
    return m.apply({'params': params}, encoded, np.zeros((3, 4)), decoder_inputs, method=m.decode)

  np.testing.assert_allclose(
    logits(tasked.model, bos_first), logits(model, task_first), rtol=1e-6, atol=1e-6
  )
  assert not np.allclose(logits(model, bos_first), logits(model, task_first))


class _Recorder(MetricWriter):
  """Keeps the scalars written, by name."""

  def __init__(self):
    self.scalars = {}

  def write_scalars(self, step, scalars):
    self.scalars.update(scalars)

  def write_texts(self, step, texts):
    pass

  def write_hparams(self, hparams):
    pass


def _evaluator(cfg, vocab, workdir, mixture_value, best_source=''):
  """An `Evaluator` of a tiny random captioner reading the toy dataset."""
  from aac_jax.train import evaluation, parallel  # noqa: PLC0415 (the train floor, this test only)

  config = base.get_base_config()
  config.dataset = cfg.copy_and_resolve_references()
  config.dataset.max_audio_seconds, config.dataset.mixture = 0.05, mixture_value
  config.frontend.n_mels, config.frontend.feature_stats = MELS, 'fixed'
  config.eval.batch_size, config.eval.decode.max_len = 8, 4
  config.train.best_source = best_source
  model = Captioner(tiny_config(vocab_size=vocab.vocab_size, deterministic=True))
  exp = types.SimpleNamespace(
    config=config, mesh=parallel.create_mesh(), eval_model=model, tokenizer=vocab, workdir=workdir
  )
  writer = _Recorder()
  return evaluation.Evaluator(exp, writer), writer, random_params(model, seed=3)


def test_eval_sources_of_the_pretraining_mixture():
  """Clotho and AudioCaps are scored on their own splits; WavCaps and MACS have none."""
  from configs import pretrain_wavcaps  # noqa: PLC0415

  dataset = pretrain_wavcaps.get_config().dataset
  found = {
    s.name: (s.dataset.name, s.dataset.validation_split, s.dataset.test_split, s.task)
    for s in mixture.eval_sources(dataset)
  }
  assert found == {
    'clotho': ('clotho_aac', 'validation', 'evaluation', 'clotho'),
    'audiocaps': ('audiocaps_aac', 'val', 'test', 'audiocaps'),
  }
  assert mixture.best_source(dataset).name == 'clotho'
  assert mixture.best_source(dataset, 'audiocaps').dataset.validation_split == 'val'
  with pytest.raises(mixture.MixtureError, match=r"best_source='macs' is not an evaluated"):
    mixture.best_source(dataset, 'macs')
  plain = base.get_dataset_config()
  assert [(s.name, s.dataset, s.task) for s in mixture.eval_sources(plain)] == [
    ('synthetic_aac', plain, '')
  ]


def test_mixture_run_scores_each_source_with_its_task_token(cfg, vocab, tmp_path, jax_cache):
  """Per-source scalars and predictions; `train.best_source`'s scores rank checkpoints."""
  two = (
    (f'{toy_dataset.NAME}/plain', 'train', 0.5, ''),
    (cfg.mixture[1][0], 'test', 0.5, 'wavcaps'),
  )
  evaluator, writer, params = _evaluator(cfg, vocab, tmp_path, two, 'wavcaps')
  scores = evaluator.evaluate(params, 'validation', 3)
  names = [toy_dataset.NAME, 'wavcaps']  # The '' entry is named by its dataset.
  for name in names:
    assert writer.scalars[f'validation/{name}/cider_d'] == scores[f'{name}/cider_d']
  assert scores['cider_d'] == scores['wavcaps/cider_d'] == writer.scalars['validation/cider_d']
  rows = {
    name: json.loads((tmp_path / 'predictions' / f'validation_{name}_step3.json').read_text())
    for name in names
  }
  assert (
    json.loads((tmp_path / 'predictions' / 'validation_step3.json').read_text())
    == (rows['wavcaps'])
  )
  plain, tasked = ([r['prediction'] for r in rows[name]] for name in names)
  assert plain != tasked  # Decoded from <bos_wavcaps>, not BOS.
  # The source without a task decodes from BOS, as a run without a mixture does.
  single, _, _ = _evaluator(cfg, vocab, tmp_path / 'single', ())
  assert single.predict(params, 'validation')[1] == plain


def test_best_source_must_be_evaluated():
  from aac_jax import config_validation  # noqa: PLC0415 (the models floor, for this test only)

  config = base.get_base_config()
  config.dataset.mixture = (('synthetic_aac', 'train', 1.0, 'clotho'),)
  config.train.best_source = 'wavcaps'
  with pytest.raises(config_validation.ConfigError, match=r"train.best_source='wavcaps'"):
    config_validation.validate(config, 'train', 8)


@pytest.mark.parametrize('arg', [None, 'runlocal', 'stage=finetune,init_from=x'])
def test_pretrain_wavcaps_config(arg):
  from configs import pretrain_wavcaps  # noqa: PLC0415

  config = pretrain_wavcaps.get_config(arg)
  entries = mixture.parse(config.dataset)
  assert mixture.best_source(config.dataset).task in {e.task for e in entries}
  assert config.train.batch_size % 8 == 0
  if arg is None:
    assert [e.dataset for e in entries] == [
      'wavcaps_aac',
      'audiocaps_aac',
      'clotho_aac',
      'macs_aac',
    ]
    assert abs(sum(mixture.weights(entries)) - 1) < 1e-9


def test_config_validation_names_a_bad_mixture_before_any_work():
  from aac_jax import config_validation  # noqa: PLC0415 (the models floor, for this test only)

  config = base.get_base_config()
  config.dataset.mixture = (('clotho_aac', 'development', -1.0, 'clotho'),)
  with pytest.raises(config_validation.ConfigError, match=r'dataset.mixture=.*weight -1.0'):
    config_validation.validate(config, 'train', 8)
  config.dataset.mixture = (('nope_aac', 'train', 1.0, 'x'), ('clotho_aac', 'development', 1, ''))
  config.dataset.embeddings = 'auto'
  with pytest.raises(config_validation.ConfigError) as error:
    config_validation.validate(config, 'train', 8)
  lines = str(error.value).splitlines()
  assert any("dataset.mixture[0]='nope_aac': unknown dataset" in line for line in lines)
  assert not any('mixture[1]' in line for line in lines)
  assert any("dataset.embeddings='auto': a mixture reads audio" in line for line in lines)
