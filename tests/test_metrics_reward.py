"""The batched CIDEr-D reward for SCST."""

import csv
import time

import numpy as np
import pytest
from corpora import corpora_dir

from aac_jax.data import text
from aac_jax.metrics import cider
from aac_jax.metrics.reward import EOS_ID, PAD_ID, CiderDReward


def _clotho(split: str) -> list[list[str]]:
  path = corpora_dir() / 'clotho' / f'clotho_captions_{split}.csv'
  with open(path, encoding='utf-8', newline='') as f:
    return [[row[f'caption_{i}'] for i in range(1, 6)] for row in csv.DictReader(f)]


def _words(caption: str) -> str:
  return ' '.join(text.caption_words(caption))


def test_equals_cider_d_with_the_evaluated_references_as_corpus():
  clips = _clotho('evaluation')
  cands, refs = [c[0] for c in clips], [c[1:] for c in clips]
  reward = CiderDReward(refs)
  _, expected = cider.cider_d_scores(
    [_words(c) for c in cands], [[_words(r) for r in rs] for rs in refs]
  )
  np.testing.assert_allclose(reward.score(cands, refs), expected, rtol=0, atol=1e-12)
  clips = np.array([3, 0, 3, 1044])  # Corpus references by clip index.
  np.testing.assert_allclose(
    reward.score_clips([cands[i] for i in clips], clips), expected[clips], atol=1e-12
  )
  # Any subset of clips keeps the corpus-wide document frequencies.
  np.testing.assert_allclose(reward.score(cands[5:9], refs[5:9]), expected[5:9], atol=1e-12)


class _Ids:
  """Numbers words from 4 (docs/CONTRACTS.md) into padded id arrays."""

  def __init__(self):
    self.vocab: dict[str, int] = {}

  def __call__(self, caption: str, length: int = 24) -> list[int]:
    ids = [self.vocab.setdefault(w, len(self.vocab) + 4) for w in text.caption_words(caption)]
    ids = ids[: length - 1] + [EOS_ID]
    return ids + [PAD_ID] * (length - len(ids))


def test_token_ids_equal_text():
  train, valid = _clotho('development')[:600], _clotho('validation')[:64]
  encode = _Ids()
  corpus_ids = np.array([[encode(c) for c in clip] for clip in train])
  by_text, by_ids = CiderDReward(train), CiderDReward.from_token_ids(corpus_ids)
  cands = [clip[0] for clip in valid]
  refs = [clip[1:] for clip in valid]
  cand_ids = np.array([encode(c) for c in cands])
  ref_ids = np.array([[encode(r) for r in rs] for rs in refs])
  expected = by_text.score(cands, refs)
  np.testing.assert_allclose(by_ids.score_ids(cand_ids, ref_ids), expected, atol=1e-12)
  # Ragged lists, stray BOS, ids after EOS and all-PAD references change nothing.
  ragged_cands = [[1] + list(c) + [7, 7] for c in cand_ids]
  padded_refs = np.concatenate([ref_ids, np.zeros_like(ref_ids[:, :1])], axis=1)
  np.testing.assert_allclose(by_ids.score_ids(ragged_cands, padded_refs), expected, atol=1e-12)
  # Against the corpus's own references, by clip index.
  clips = np.arange(64)
  np.testing.assert_allclose(
    by_ids.score_clips(cand_ids, clips), by_text.score_clips(cands, clips), atol=1e-12
  )
  assert by_ids.num_ngrams == by_text.num_ngrams
  assert expected.mean() > 0.1


def test_small_cases():
  reward = CiderDReward([['a dog barks', 'a dog is barking'], ['a man speaks', 'rain falls']])
  scores = reward.score(
    ['a dog barks', '', 'zebra zebra zebra', 'A DOG, barks!', 'a'],
    [['a dog barks'], ['a dog barks'], ['zebra zebra zebra'], ['a dog barks'], ['a']],
  )
  assert scores[1] == 0.0
  assert scores[0] == pytest.approx(scores[3])  # DCASE normalisation.
  # An exact copy with n-grams of orders 1-3 only: cosine 1 for three of the
  # four orders, times 10. Unseen words weigh log(N), like words of one clip.
  assert scores[0] == pytest.approx(7.5) and scores[2] == pytest.approx(7.5)
  assert scores[4] == 0.0  # "a" is in every clip of the corpus: idf 0.
  with pytest.raises(ValueError, match='at least one reference'):
    reward.score(['a'], [[]])
  with pytest.raises(TypeError, match='score_ids'):
    CiderDReward.from_token_ids([[[4, 5, 2]]]).score(['a'], [['a']])
  with pytest.raises(TypeError, match='use score'):
    reward.score_ids(np.array([[4, 2]]), np.array([[[4, 2]]]))


def test_throughput():
  """Thousands of captions per second for 256 candidates x 5 references."""
  train = _clotho('development')
  reward = CiderDReward(train)
  clips = np.arange(256)
  cands, refs = [c[0] for c in train[:256]], train[:256]
  reward.score(cands, refs)
  start = time.perf_counter()
  for _ in range(3):
    reward.score(cands, refs)
    reward.score_clips(cands, clips)
  per_second = 6 * 256 / (time.perf_counter() - start)
  assert per_second > 1000, per_second
