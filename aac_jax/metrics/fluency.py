"""Diversity and fluency proxies to watch SCST (or any decoding change).

CIDEr-optimised captioners drift towards a small vocabulary, the same
caption for every clip, training captions copied verbatim and repeated
phrases ("a man speaks and a man speaks"). These counts make that visible;
they are not quality metrics and need no references. Captions are split
with the DCASE normalisation (`aac_jax.data.text.caption_words`).
"""

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from aac_jax.data import text


def repeated_ngram_rate(word_lists: Sequence[Sequence[str]], n: int) -> float:
  """Share of n-gram occurrences that repeat one seen before in the same caption.

  Args:
    word_lists: captions as words.
    n: n-gram order.

  Returns:
    Repeats / all n-gram occurrences (0 when there are none).
  """
  total = repeats = 0
  for words in word_lists:
    grams = list(zip(*(words[i:] for i in range(n)), strict=False))
    total += len(grams)
    repeats += len(grams) - len(set(grams))
  return repeats / total if total else 0.0


def diversity_stats(
  captions: Sequence[str],
  training_captions: Iterable[str] | None = None,
  tokenize: Callable[[str], list[str]] = text.caption_words,
) -> dict[str, float]:
  """Vocabulary, novelty, repetition and length of generated captions.

  Args:
    captions: generated captions (one per clip).
    training_captions: the training references; enables `novel_rate`.
    tokenize: caption -> words.

  Returns:
    `vocab_size` (distinct words), `distinct_rate` (distinct captions /
    captions), `novel_rate` (share of captions that are no training caption,
    compared after normalisation; only with `training_captions`),
    `repeated_{1,2,3}gram_rate` (see `repeated_ngram_rate`) and
    `mean_length` (words per caption).
  """
  words = [tokenize(c) for c in captions]
  joined = [' '.join(w) for w in words]
  stats = {
    'vocab_size': float(len({w for ws in words for w in ws})),
    'distinct_rate': len(set(joined)) / len(joined) if joined else 0.0,
    'mean_length': float(np.mean([len(w) for w in words])) if words else 0.0,
  }
  for n, name in ((1, 'unigram'), (2, 'bigram'), (3, 'trigram')):
    stats[f'repeated_{name}_rate'] = repeated_ngram_rate(words, n)
  if training_captions is not None:
    seen = {' '.join(tokenize(c)) for c in training_captions}
    novel = sum(j not in seen for j in joined)
    stats['novel_rate'] = novel / len(joined) if joined else 0.0
  return stats
