"""FENSE in JAX against the PyTorch reference, on real Clotho and AudioCaps captions.

The models are random (weights cannot be downloaded here) but have the real
architectures and are saved in the published formats (`fense_reference.py`);
the error checker goes through `tools/convert_checkpoint.py fense`. Every
candidate kind is covered: real captions, repeated clauses, truncated,
empty, and captions far longer than both models' truncation lengths.
SBERT-sim, P(error), FER, FENSE and SPIDEr-FL must equal the reference
within 1e-5. The clip count is bounded by the 2-core CI budget (a BERT-base
forward pass over all candidates, TinyBERT-L6 over candidates and references,
each run by both implementations).
"""

import csv

import numpy as np
import pytest

from aac_jax.metrics import compute_caption_metrics, fense, fense_models, ptb_tokenizer
from aac_jax.metrics import spice as spice_lib
from tests import fense_reference as ref
from tests.corpora import corpora_dir
from tools import convert_checkpoint

CLIPS_PER_CORPUS = 24


def _real_clips() -> list[list[str]]:
  """Five captions of the first clips of Clotho evaluation and AudioCaps test."""
  root = corpora_dir()
  with open(root / 'clotho' / 'clotho_captions_evaluation.csv', encoding='utf-8', newline='') as f:
    clotho = [[r[f'caption_{i}'] for i in range(1, 6)] for r in csv.DictReader(f)]
  groups: dict[str, list[str]] = {}
  with open(root / 'audiocaps' / 'test.csv', encoding='utf-8', newline='') as f:
    for r in csv.DictReader(f):
      groups.setdefault(r['youtube_id'], []).append(r['caption'])
  audiocaps = [caps[:5] for caps in groups.values() if len(caps) >= 5]
  return clotho[:CLIPS_PER_CORPUS] + audiocaps[:CLIPS_PER_CORPUS]


def _candidate(captions: list[str], i: int) -> str:
  """Caption 1 of the clip, as it is or corrupted, by clip index."""
  words = captions[0].split()
  kind = i % 6
  if kind == 1:  # Repeated clause.
    return f'{captions[0]} and {" ".join(words[: max(2, len(words) // 2)])}'
  if kind == 2:  # Truncated.
    return ' '.join(words[: max(1, len(words) // 3)])
  if kind == 3:
    return ''
  if kind == 4:  # Past both truncation lengths (64 and 128 word pieces).
    return ' , '.join([captions[0]] * 10)
  return captions[0]


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """Builds the models, runs aac_jax and the reference once; returns both."""
  tmp = tmp_path_factory.mktemp('fense')
  clips = _real_clips()
  raw_cands = [_candidate(c, i) for i, c in enumerate(clips)]
  raw_refs = [c[1:] for c in clips]
  # aac-metrics' DCASE evaluation feeds FENSE the PTB-tokenized captions.
  cands = ptb_tokenizer.tokenize_captions(raw_cands)
  refs = ptb_tokenizer.tokenize_references(raw_refs)
  paths, reference, features = ref.build_models(corpora_dir(), tmp, threshold_texts=cands)
  expected = reference.score(cands, refs, features)

  fake_spice = np.random.default_rng(0).uniform(0.0, 0.4, len(cands))
  options = fense.FenseOptions(
    sbert_dir=str(paths['sbert']), echecker_dir=str(paths['echecker']), batch_size=32
  )
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv(fense_models.ENV_DIR, str(tmp / 'unused'))
    # SPICE needs CoreNLP jars nothing here ships: stand-in per-clip values.
    mp.setattr(spice_lib, 'spice_scores', lambda *a, **k: (float(fake_spice.mean()), fake_spice))
    ours = compute_caption_metrics(
      raw_cands, raw_refs, spice=True, fense=True, fense_options=options
    )
  spider = (ours.per_clip['cider_d'] + fake_spice) / 2
  expected['spider_fl'] = spider * (1 - 0.9 * expected['fer'])
  return ours, expected, paths


@pytest.mark.parametrize('name', ['sbert_sim', 'fluency_error_prob', 'fer', 'fense', 'spider_fl'])
def test_per_clip_scores_equal_reference(run, name):
  ours, expected, _ = run
  np.testing.assert_allclose(ours.per_clip[name], expected[name], rtol=0, atol=1e-5)


@pytest.mark.parametrize('name', ['sbert_sim', 'fer', 'fense', 'spider_fl'])
def test_corpus_scores_equal_reference(run, name):
  ours, expected, _ = run
  assert abs(ours.corpus[name] - expected[name].mean()) < 1e-5


def test_both_sides_of_the_error_threshold_are_exercised(run):
  _, expected, _ = run
  probs = expected['fluency_error_prob']
  assert 0.25 <= (probs > 0.9).mean() <= 0.75
  assert np.abs(probs - 0.9).min() > 1e-4  # No decision within rounding of the threshold.
  assert np.ptp(expected['sbert_sim']) > 1e-3  # Embeddings differ between captions.


def test_bin_folder_converts_to_the_same_weights(run):
  from safetensors.numpy import load_file

  _, _, paths = run
  tmp = paths['sbert'].parent
  ref.save_sbert(paths['vocab'], tmp / 'sbert_bin', safetensors=False)
  with pytest.raises(fense_models.ModelUnavailable, match='pytorch_model.bin') as refused:
    fense_models.load_sentence_embedder(tmp / 'sbert_bin')
  assert f'convert_checkpoint.py fense --sbert {tmp / "sbert_bin"}' in str(refused.value)
  convert_checkpoint.main(
    ['fense', '--sbert', str(tmp / 'sbert_bin'), '--output', str(tmp / 'sbert_conv')]
  )
  converted = load_file(str(tmp / 'sbert_conv' / 'model.safetensors'))
  published = load_file(str(paths['sbert'] / 'model.safetensors'))
  assert converted.keys() == published.keys()
  for key, value in published.items():
    np.testing.assert_array_equal(converted[key], value)


def test_training_hook_scores_and_selects_by_fense(run, monkeypatch):
  from aac_jax.metrics import eval_config
  from configs import base

  _, _, paths = run
  monkeypatch.setenv(fense_models.ENV_DIR, str(paths['sbert'].parent / 'unused'))  # Cached scorer.
  config = base.get_base_config()
  config.train.best_metric = 'fense'
  d = config.eval.dcase2024
  d.fense, d.sbert_dir, d.echecker_dir, d.batch_size = (
    True,
    str(paths['sbert']),
    str(paths['echecker']),
    32,
  )
  eval_config.check_metrics_config(config)
  refs = [['a dog is barking', 'dogs bark'], ['rain falls', 'heavy rain']]
  result = eval_config.caption_metrics_from_config(['a dog barks', 'rain'], refs, config.eval)
  assert {'fense', 'sbert_sim', 'fer', 'vocab'} <= set(result.corpus)
  assert 'spider_fl' in result.unavailable and not result.intervals


class _Encoding:
  """What `tokenizers` returns per text: ids, mask and type ids."""

  def __init__(self, text: str):
    self.ids = [len(w) for w in text.split()]
    self.attention_mask = [1] * len(self.ids)
    self.type_ids = [0] * len(self.ids)


class _ShapeRecorder:
  """A model whose output is the sum of the real ids; records each compiled shape."""

  def __init__(self):
    self.shapes = []

  def apply(self, variables, ids, mask, types):
    del variables, types
    self.shapes.append(ids.shape)  # Runs once per traced (compiled) shape.
    return (ids * mask).sum(-1, keepdims=True).astype(np.float32)


def _runner(batch_size: int) -> fense_models.BertRunner:
  tokenizer = type('Tok', (), {'encode_batch': lambda self, texts: [_Encoding(t) for t in texts]})
  return fense_models.BertRunner(_ShapeRecorder(), {}, tokenizer(), 128, batch_size)


def test_batches_padded_to_row_and_length_buckets():
  assert [fense_models.bucket_rows(n, 128) for n in (1, 8, 9, 14, 84, 100, 128)] == [
    8, 8, 12, 16, 96, 128, 128
  ]  # fmt: skip
  assert fense_models.bucket_rows(20, 20) == 20  # Never above batch_size.
  assert [fense_models.bucket_length(n, 128) for n in (3, 17, 25, 33, 49, 65, 97, 300)] == [
    16, 24, 32, 48, 64, 96, 128, 128
  ]  # fmt: skip
  assert fense_models.batch_bounds(300, 128) == [(0, 44), (44, 172), (172, 300)]
  assert fense_models.batch_bounds(256, 128) == [(0, 128), (128, 256)]
  rng = np.random.default_rng(0)
  # 14 clips x 6 sentences, 20 to 40 word pieces: one batch of 96 rows, not 128.
  texts = [
    ' '.join('w' * int(k) for k in rng.integers(1, 9, rng.integers(20, 41))) for _ in range(84)
  ]
  runner = _runner(128)
  out = runner(texts)
  assert runner.module.shapes == [(96, 48)]
  np.testing.assert_array_equal(out[:, 0], [sum(_Encoding(t).ids) for t in texts])
  # 300 sentences: the 44 shortest in a partial batch (48 rows), then two full ones.
  texts = [' '.join(['ab'] * int(n) + ['c' * i]) for i, n in enumerate(rng.integers(0, 30, 300))]
  runner = _runner(128)
  out = runner(texts)
  assert [s[0] for s in runner.module.shapes] == [48, 128, 128]
  assert [s[1] for s in runner.module.shapes] == sorted(s[1] for s in runner.module.shapes)
  np.testing.assert_array_equal(out[:, 0], [sum(_Encoding(t).ids) for t in texts])
