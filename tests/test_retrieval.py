"""Retrieval scores (`metrics/retrieval.py`) against a brute-force numpy ranking."""

import numpy as np
import pytest

from aac_jax.metrics import retrieval


def _brute_force(text, audio, target):
  """Full stable sort per query; DCASE definitions written out loop by loop."""
  ranks = []
  for q in range(len(target)):
    order = list(np.argsort(-(audio @ text[q]), kind='stable'))
    ranks.append(order.index(target[q]) + 1)
  ranks = np.array(ranks)
  want = {f'R@{k}': np.mean([r <= k for r in ranks]) for k in (1, 5, 10)}
  ap = []
  for r in ranks:  # Average precision over the top 10 with one relevant clip.
    hits = [1.0 if i + 1 == r else 0.0 for i in range(10)]
    ap.append(sum(h * sum(hits[: i + 1]) / (i + 1) for i, h in enumerate(hits)))
  want['mAP@10'] = np.mean(ap)
  return ranks, want


@pytest.mark.parametrize('quantize', [False, True], ids=['distinct', 'ties'])
def test_ranks_and_scores_equal_a_brute_force_ranking(quantize):
  rng = np.random.default_rng(0)
  clips, per_clip, dim = 23, 5, 8
  audio = rng.standard_normal((clips, dim)).astype(np.float32)
  target = np.repeat(np.arange(clips), per_clip)
  text = (audio[target] + 1.5 * rng.standard_normal((len(target), dim))).astype(np.float32)
  if quantize:  # Many equal scores: ties go to the lower clip index, as a stable sort.
    audio, text = np.sign(audio), np.sign(text)
  want_ranks, want = _brute_force(text, audio, target)
  got_ranks = retrieval.ranks(text, audio, target, chunk=7)
  np.testing.assert_array_equal(got_ranks, want_ranks)
  got = retrieval.retrieval_scores(got_ranks)
  assert got == pytest.approx(want, abs=1e-12)
  assert 0 < got['R@1'] < got['R@5'] < got['R@10'] < 1  # A set where every cut matters.


def test_empty_split_scores_zero():
  assert retrieval.retrieval_scores(np.zeros(0)) == {
    'R@1': 0.0, 'R@5': 0.0, 'R@10': 0.0, 'mAP@10': 0.0
  }  # fmt: skip
