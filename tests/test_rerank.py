"""Re-ranking of beam candidates (`decoding/rerank.py`) with a hand-built scorer.

Candidates come from beam search over a hand-built Markov chain (no
network); the scorer is a table of similarities per word. CLAP itself is
tested in tests/test_clap.py (re-ranking against transformers' CLAP).
"""

import numpy as np
import pytest

from aac_jax import decoding
from aac_jax.decoding import DecodeSettings, make_decode_settings, rerank
from configs import base
from tests.test_decoding import EOS, markov_step_fn, trap_chain

WORDS = {3: 'a', 4: 'b', 5: 'cat', 6: 'dog', 7: 'car', 8: 'rain', 9: 'bird'}
SIM = {'cat': 0.1, 'dog': 0.9, 'car': -0.5, 'rain': 0.3, 'bird': 0.0}


def _text(tokens) -> str:
  words = []
  for t in tokens:
    if int(t) == EOS:
      break
    words.append(WORDS.get(int(t), '?'))
  return ' '.join(words)


def hand_scorer(candidates, clips, sample_rate):
  """Similarity of a caption: the table value of its last word (clips unused)."""
  assert len(clips) == len(candidates) and sample_rate == 8
  return np.array([[SIM.get(c.split()[-1], 0.0) if c else 0.0 for c in row] for row in candidates])


@pytest.fixture(scope='module')
def beams():
  """All finished beams of the trap chain: `[1, 4]` captions and their beam scores."""
  settings = DecodeSettings(method='beam', max_len=4, beam_size=4, length_penalty=0.0)
  step_fn, cache = markov_step_fn(trap_chain())
  out = decoding.beam_search(step_fn, cache, 1, settings, return_all_beams=True)
  texts = [[_text(row) for row in np.asarray(out.tokens[0])]]
  return texts, np.asarray(out.scores)


def test_chosen_candidate_is_the_combined_best(beams):
  texts, scores = beams
  assert texts[0][0] == 'b bird'  # The beam's own best (p = 0.36).
  clips = [np.zeros(8, np.float32)]
  for weight in (0.0, 0.5, 1.0, 3.0, 100.0):
    chosen, index = rerank.rerank(texts, scores, clips, 8, hand_scorer, weight)
    total = [scores[0, j] + weight * SIM[texts[0][j].split()[-1]] for j in range(4)]
    assert index[0] == int(np.argmax(total)) and chosen[0] == texts[0][index[0]]
  # Without CLAP the beam's best stays; with enough weight the scorer's favourite wins.
  assert rerank.rerank(texts, scores, clips, 8, hand_scorer, 0.0)[0] == ['b bird']
  assert rerank.rerank(texts, scores, clips, 8, hand_scorer, 100.0)[0] == ['a dog']


def test_empty_beam_slots_are_never_chosen():
  decoder = np.array([[-1.0, decoding.NEG_INF, -3.0]])
  similarity = np.array([[0.0, 1e9, 0.5]])
  assert rerank.choose(decoder, similarity, weight=10.0).tolist() == [2]
  assert np.isneginf(rerank.combined_scores(decoder, similarity, 10.0)[0, 1])


def test_rerank_settings_are_checked():
  cfg = base.get_decode_config()
  assert make_decode_settings(cfg).rerank == 'none'  # config.decode has the fields.
  with pytest.raises(ValueError, match="needs method 'beam' or 'sample'"):
    make_decode_settings(cfg, rerank='clap', rerank_clap_dir='x')
  with pytest.raises(ValueError, match='needs decode.rerank_clap_dir'):
    make_decode_settings(cfg, method='beam', rerank='clap')
  with pytest.raises(ValueError, match='rerank must be one of'):
    make_decode_settings(cfg, rerank='bleu')


def test_validation_rerank_settings_are_checked_before_training():
  from aac_jax import config_validation
  from configs import synthetic_demo

  config = synthetic_demo.get_config('runlocal')
  config.eval.decode.rerank = 'clap'
  config.decode.rerank = 'bleu'
  lines = config_validation.problems(config, 'train', 1)
  assert any(line.startswith("eval.decode.method='greedy': rerank='clap' needs") for line in lines)
  assert any(
    line.startswith("eval.decode.rerank_clap_dir='': rerank='clap' needs") for line in lines
  )
  assert any(line.startswith("decode.rerank='bleu': must be one of") for line in lines)
  config.eval.decode.method, config.eval.decode.rerank_clap_dir = 'beam', '/some/clap'
  assert not any('eval.decode' in line for line in config_validation.problems(config, 'train', 1))


def _variety(candidates) -> np.ndarray:
  """The stand-in similarity: the number of distinct words."""
  return np.array([[len(set(c.split())) for c in row] for row in candidates], np.float64)


class _LengthScorer:
  """Stands in for `rerank.ClapReranker`: prefers varied captions; checks the audio it gets."""

  real_lengths: set[int] = set()

  def __init__(self, clap_dir: str, batch_size: int = 16):
    assert clap_dir == 'clap_dir'

  def similarity(self, candidates, clips, sample_rate):
    assert sample_rate == 16000 and len(clips) == len(candidates)
    assert all(len(c) in self.real_lengths for c in clips)  # Unpadded clips of real rows.
    return _variety(candidates)


def test_validation_reranks_the_candidates_as_aac_caption_does(tmp_path, monkeypatch):
  """Evaluator with eval.decode.rerank='clap' == brute-force choice over the same candidates."""
  import types

  import jax
  import toy_dataset
  from test_model import MELS, random_params, tiny_config

  from aac_jax.data import pipeline, sources
  from aac_jax.data.tokenizer import Tokenizer
  from aac_jax.models import Captioner
  from aac_jax.train import evaluation, parallel

  toy_dataset.build_toy_dataset(str(tmp_path), splits={'train': 4, 'validation': 11},
                                min_seconds=0.02, max_seconds=0.05)  # fmt: skip
  config = base.get_base_config()
  ds = config.dataset
  ds.name, ds.data_dir, ds.build_if_missing = toy_dataset.NAME, str(tmp_path), False
  ds.max_audio_seconds = 0.05
  config.frontend.n_mels, config.frontend.feature_stats = MELS, 'fixed'
  config.eval.batch_size = 8
  d = config.eval.decode
  d.method, d.beam_size, d.max_len, d.rerank, d.rerank_clap_dir = 'beam', 3, 6, 'clap', 'clap_dir'
  vocab = Tokenizer.build(sources.load_split_captions(ds, 'train'))
  model = Captioner(tiny_config(vocab_size=vocab.vocab_size, deterministic=True))
  params = random_params(model, seed=3)
  monkeypatch.setattr(rerank, 'ClapReranker', _LengthScorer)
  _LengthScorer.real_lengths = {len(r['audio']) for r in sources.open_source(ds, 'validation')}
  exp = types.SimpleNamespace(
    config=config, mesh=parallel.create_mesh(), eval_model=model, tokenizer=vocab, workdir=tmp_path
  )
  evaluator = evaluation.Evaluator(exp, None)

  # Brute force on the evaluator's own candidates (`generate_candidates` over the mesh).
  generate, mask = evaluator._generate[evaluator._best.name]
  split, batches = pipeline.make_eval_batches(ds, 'validation', 8)
  texts, decoder = [None] * len(split), [None] * len(split)
  for i, batch in enumerate(batches):
    audio = parallel.shard_batch({k: batch[k] for k in ('audio', 'audio_paddings')}, exp.mesh)
    rng = jax.random.fold_in(jax.random.key(config.seed), i)
    out = generate(params, audio['audio'], audio['audio_paddings'], rng, mask)
    assert out.tokens.shape[:2] == (8, 3)  # beam_size candidates per clip.
    for row, index in enumerate(batch['index']):
      if index >= 0:
        texts[index] = [vocab.decode(t.tolist()) for t in np.asarray(out.tokens[row])]
        decoder[index] = np.asarray(out.scores[row])
  chosen = set()
  for weight in (0.0, 100.0):  # Only the host-side choice changes.
    d.rerank_weight = weight
    _, predictions = evaluator.predict(params, 'validation')
    total = rerank.combined_scores(np.stack(decoder), _variety(texts), weight)
    assert predictions == [row[int(k)] for row, k in zip(texts, np.argmax(total, 1), strict=True)]
    chosen.add(tuple(predictions))
  assert len(chosen) == 2, texts  # The scorer changed a choice.


def test_aac_caption_rerank_flags():
  from aac_jax import caption_cli

  parser = caption_cli.make_parser()
  args = parser.parse_args(
    ['--workdir', 'w', '--rerank', 'clap', '--rerank_weight', '2.5', '--rerank_clap_dir', 'c', 'x']
  )
  assert (args.rerank, args.rerank_weight, args.rerank_clap_dir) == ('clap', 2.5, 'c')
  with pytest.raises(SystemExit) as exit_info:
    parser.parse_args(['--workdir', 'w', '--rerank', 'bleu', 'x'])
  assert exit_info.value.code == 2
