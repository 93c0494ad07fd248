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


def test_validation_refuses_rerank_before_training():
  from aac_jax import config_validation
  from configs import synthetic_demo

  config = synthetic_demo.get_config('runlocal')
  config.eval.decode.rerank = 'clap'
  config.decode.rerank = 'bleu'
  lines = config_validation.problems(config, 'train', 1)
  assert any(line.startswith("eval.decode.rerank='clap': validation does not") for line in lines)
  assert any(line.startswith("decode.rerank='bleu': must be one of") for line in lines)


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
