"""Diversity and fluency proxies."""

import pytest

from aac_jax.metrics import diversity_stats
from aac_jax.metrics.fluency import repeated_ngram_rate


def test_repeated_ngram_rate():
  words = [['a', 'dog', 'a', 'dog', 'a'], ['rain']]
  assert repeated_ngram_rate(words, 1) == pytest.approx(3 / 6)  # a, dog, a repeat.
  assert repeated_ngram_rate(words, 2) == pytest.approx(2 / 4)  # (a dog), (dog a) repeat.
  assert repeated_ngram_rate(words, 3) == pytest.approx(1 / 3)
  assert repeated_ngram_rate([['a']], 2) == 0.0


def test_diversity_stats():
  captions = ['A dog barks.', 'a dog barks', 'Rain falls, rain falls', '']
  stats = diversity_stats(captions, training_captions=['A dog barks!', 'wind blows'])
  assert stats['vocab_size'] == 5  # a dog barks rain falls
  assert stats['distinct_rate'] == pytest.approx(3 / 4)
  assert stats['novel_rate'] == pytest.approx(2 / 4)
  assert stats['mean_length'] == pytest.approx((3 + 3 + 4 + 0) / 4)
  assert stats['repeated_bigram_rate'] == pytest.approx(1 / (2 + 2 + 3))  # (rain falls) again.
  assert 'novel_rate' not in diversity_stats(captions)
  assert diversity_stats([])['vocab_size'] == 0
