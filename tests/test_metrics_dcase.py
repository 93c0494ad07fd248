"""Vocab, bootstrap intervals, the submission file, the evaluator's DCASE 2024
flags and what happens without the FENSE models (no model weights needed)."""

import contextlib
import csv
import itertools
import json
import os
import time

import numpy as np
import pytest
import torch

from aac_jax.metrics import (
  bleu,
  bootstrap,
  compute_caption_metrics,
  eval_config,
  evaluate,
  evaluate_cli,
  fense_models,
  ngrams,
  ptb_tokenizer,
  submission,
)
from aac_jax.metrics import vocab as vocab_lib
from configs import base
from tests.corpora import corpora_dir
from tools import convert_checkpoint


@pytest.fixture(scope='module')
def clotho():
  with open(corpora_dir() / 'clotho' / 'clotho_captions_evaluation.csv', encoding='utf-8') as f:
    rows = [[r[f'caption_{i}'] for i in range(1, 6)] for r in csv.DictReader(f)][:300]
  cands = ptb_tokenizer.tokenize_captions([r[0] for r in rows])
  return cands, ptb_tokenizer.tokenize_references([r[1:] for r in rows])


@pytest.fixture(autouse=True)
def no_fense_models(monkeypatch):
  monkeypatch.delenv(fense_models.ENV_DIR, raising=False)


def test_reference_vocab_is_the_mean_over_every_draw():
  refs = [
    ['a dog barks', 'a cat meows loudly'],
    ['rain falls', 'rain', 'a dog runs'],
    ['birds sing'],
  ]
  cands = ['a dog', 'rain rain falls', '']
  vocab, ratio = vocab_lib.vocab_scores(vocab_lib.vocab_data(cands, refs), np.ones((1, 3)))
  draws = [len({w for r in pick for w in r.split()}) for pick in itertools.product(*refs)]
  assert vocab[0] == 4
  assert ratio[0] == pytest.approx(4 / np.mean(draws), abs=1e-12)


def test_resampled_scores_equal_scores_of_the_resampled_set(clotho):
  cands, refs = clotho
  weights = bootstrap.resample_weights(len(cands), 3, seed=1)
  assert (weights.sum(1) == len(cands)).all()
  data = vocab_lib.vocab_data(cands, refs)
  counts = ngrams.text_pair_counts(cands, refs, 4)
  stats = bleu.bleu_statistics(counts, 4)
  for row in weights:
    picks = np.repeat(np.arange(len(cands)), row)
    sub_c, sub_r = [cands[i] for i in picks], [refs[i] for i in picks]
    np.testing.assert_allclose(
      bleu.corpus_bleu(stats, row[None])[0], bleu.bleu_scores(sub_c, sub_r)[0], atol=1e-12
    )
    got = vocab_lib.vocab_scores(data, row[None])
    want = vocab_lib.vocab_scores(vocab_lib.vocab_data(sub_c, sub_r), np.ones((1, len(picks))))
    np.testing.assert_allclose(np.ravel(got), np.ravel(want), atol=1e-9)


def test_intervals_bracket_every_corpus_score(clotho):
  cands, refs = clotho
  raw = list(cands)
  result = compute_caption_metrics(raw, refs, bootstrap_samples=200, bootstrap_seed=3)
  assert set(result.intervals) == set(result.corpus) - {'vocab', 'vocab_ratio'}
  for name, (low, high) in result.intervals.items():
    assert low < high, name
    assert low <= result.corpus[name] <= high, name
  again = compute_caption_metrics(raw, refs, bootstrap_samples=200, bootstrap_seed=3)
  assert again.intervals == result.intervals
  # An interval of a mean shrinks about as 1/sqrt(n): compare with the normal one.
  se = result.per_clip['cider_d'].std() / np.sqrt(len(raw))
  low, high = result.intervals['cider_d']
  assert 0.8 < (high - low) / (2 * 1.96 * se) < 1.2


def test_vocab_counts_distinct_candidate_words(clotho):
  cands, refs = clotho
  result = compute_caption_metrics(cands, refs)
  assert result.corpus['vocab'] == len({w for c in cands for w in c.split()})
  assert 0 < result.corpus['vocab_ratio'] < 1.5


def _other_threads_run_ns() -> int:
  """Nanoseconds on the CPU so far of every thread of this process but the main one."""
  total = 0
  for tid in os.listdir('/proc/self/task'):
    if int(tid) != os.getpid():
      with contextlib.suppress(FileNotFoundError), open(f'/proc/self/task/{tid}/schedstat') as f:
        total += int(f.read().split()[0])
  return total


@pytest.mark.skipif(not os.path.exists('/proc/self/task'), reason='needs Linux /proc')
def test_caption_metrics_leave_other_threads_idle(clotho):
  # A BLAS matrix product in the metric path (Vocab's dense clip x word
  # product did) wakes OpenBLAS's threads, which then spin on every core:
  # 138 ms of their CPU time over these three calls, more than the metrics'.
  cands, refs = clotho
  compute_caption_metrics(cands, refs)
  before = _other_threads_run_ns()
  for _ in range(3):
    compute_caption_metrics(cands, refs)
  time.sleep(0.1)  # Spinning threads keep going a moment after the call.
  assert (_other_threads_run_ns() - before) / 1e6 < 10


def test_missing_models_are_unavailable_and_the_rest_is_computed():
  result = compute_caption_metrics(
    ['a dog barks', 'rain'], [['a dog is barking'], ['rain falls']], fense=True
  )
  for name in ('sbert_sim', 'fer', 'fense', 'spider_fl'):
    assert name not in result.corpus and name not in result.per_clip
    assert 'download' in result.unavailable[name] or 'needs' in result.unavailable[name]
  assert fense_models.SBERT_URL in result.unavailable['sbert_sim']
  assert 'convert_checkpoint.py fense' in result.unavailable['fer']
  assert result.corpus['cider_d'] > 0 and result.corpus['vocab'] == 4


def test_incomplete_model_folder_names_the_missing_file(tmp_path):
  (tmp_path / 'config.json').write_text('{}')
  with pytest.raises(fense_models.ModelUnavailable, match='echecker.json'):
    fense_models.load_error_checker(tmp_path)
  with pytest.raises(fense_models.ModelUnavailable, match='does not exist'):
    fense_models.load_sentence_embedder(tmp_path / 'nowhere')


def test_submission_file(tmp_path):
  path = submission.write_dcase_submission(
    tmp_path / 'out' / 'sub.csv', ['b.wav', 'a.wav'], ['rain, wind', 'a dog']
  )
  assert path.read_text() == 'file_name,caption_predicted\nb.wav,"rain, wind"\na.wav,a dog\n'
  with pytest.raises(ValueError, match='repeated'):
    submission.dcase_submission_text(['a.wav', 'a.wav'], ['x', 'y'])


def test_evaluator_dcase2024_table_intervals_and_submission(tmp_path, capsys, monkeypatch):
  preds = tmp_path / 'preds.csv'
  preds.write_text(
    'file_name,caption_predicted\na.wav,a dog barks\nb.wav,rain falls on a roof\nc.wav,\n'
  )
  refs = tmp_path / 'refs.csv'
  refs.write_text(
    'file_name,caption_1,caption_2\na.wav,a dog is barking,dogs bark\n'
    'b.wav,rain on a roof,heavy rain falls\nc.wav,birds sing,a bird chirps\n'
  )
  argv = [
    '--predictions',
    str(preds),
    '--references',
    str(refs),
    '--dcase2024',
    '--bootstrap',
    '50',
  ]
  asked = {}

  def without_java(*args, **kwargs):  # METEOR's jar is tested elsewhere; slow to start here.
    asked.update(kwargs)
    return compute_caption_metrics(*args, **{**kwargs, 'meteor': False, 'spice': False})

  monkeypatch.setattr(evaluate_cli.evaluate, 'compute_caption_metrics', without_java)
  report = evaluate_cli.main([*argv, '--submission', str(tmp_path / 'sub.csv')])
  out = capsys.readouterr().out
  assert 'fense' in out and 'unavailable: Sentence-BERT unavailable' in out
  assert asked['meteor'] and asked['spice'] and asked['fense']
  table = out.split('clips\n')[1].splitlines()[1 : 1 + len(evaluate.DCASE2024_METRICS)]
  assert [line.split()[0] for line in table] == list(evaluate.DCASE2024_METRICS)
  assert 'cider_d' in report['intervals_95'] and report['bootstrap']['samples'] == 50
  assert (tmp_path / 'sub.csv').read_text().splitlines()[0] == 'file_name,caption_predicted'
  saved = json.loads((tmp_path / 'preds.csv.scores.json').read_text())
  assert saved['corpus']['vocab'] == 7


def test_best_metric_fense_is_checked_before_training():
  config = base.get_base_config()
  config.train.best_metric = 'fense'
  with pytest.raises(ValueError, match='eval.dcase2024.fense=True'):
    eval_config.check_metrics_config(config)
  config.eval.dcase2024.fense = True
  with pytest.raises(ValueError, match='cannot be computed: .*download'):
    eval_config.check_metrics_config(config)
  config.train.best_metric = 'cider_d'
  eval_config.check_metrics_config(config)
  result = eval_config.caption_metrics_from_config(['a dog'], [['a dog barks']], config.eval)
  assert 'cider_d' in result.corpus and 'fense' in result.unavailable


def test_converter_rejects_other_checkpoints(tmp_path):
  torch.save({'state_dict': {}}, tmp_path / 'x.ckpt')
  with pytest.raises(SystemExit, match='not a FENSE error checker'):
    convert_checkpoint.main(
      [
        'fense',
        '--echecker',
        str(tmp_path / 'x.ckpt'),
        '--bert_dir',
        str(tmp_path),
        '--output',
        str(tmp_path / 'o'),
      ]
    )


@pytest.mark.parametrize(
  'pooling, ok',
  [
    ({'pooling_mode_mean_tokens': True, 'pooling_mode_cls_token': False}, True),  # Published.
    ({'pooling_mode': 'mean'}, True),  # sentence-transformers 5+.
    ({'pooling_mode_cls_token': True, 'pooling_mode_mean_tokens': False}, False),
  ],
)
def test_only_mean_pooling_sentence_bert_folders_load(tmp_path, pooling, ok):
  modules = [
    {'idx': 0, 'name': '0', 'path': '', 'type': 'sentence_transformers.models.Transformer'},
    {'idx': 1, 'name': '1', 'path': '1_Pooling', 'type': 'sentence_transformers.models.Pooling'},
  ]
  (tmp_path / 'modules.json').write_text(json.dumps(modules))
  (tmp_path / '1_Pooling').mkdir()
  (tmp_path / '1_Pooling' / 'config.json').write_text(json.dumps(pooling))
  (tmp_path / 'config.json').write_text(json.dumps({'vocab_size': 10}))
  # A supported pipeline gets as far as the (missing) BERT config fields.
  with pytest.raises(fense_models.ModelUnavailable, match='do not fit' if ok else 'mean pooling'):
    fense_models.load_sentence_embedder(tmp_path)
