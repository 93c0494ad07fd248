"""Caption metrics with coco-caption's definitions, and the SCST reward.

- `compute_caption_metrics`: BLEU-1..4, ROUGE-L, CIDEr-D (numpy, equal to
  pycocoevalcap 1.2), METEOR (official jar) and SPICE/SPIDEr (official jar
  with user-supplied CoreNLP), after the PTB tokenization of
  `ptb_tokenizer` (pure Python, equal to the CoreNLP 3.4.1 jar).
  Also Vocab, and on request SBERT-sim, FER, FENSE, SPIDEr-FL (the FENSE
  models in JAX, `fense.py`) and bootstrap intervals (`bootstrap.py`).
- `CiderDReward`: batched CIDEr-D with precomputed document frequencies.
- `write_dcase_submission`: the challenge's `file_name,caption_predicted` CSV.
- `diversity_stats`: vocabulary, novelty, repetition and length proxies.
"""

from aac_jax.metrics.evaluate import (
  DCASE2024_METRICS,
  METRICS,
  CaptionMetrics,
  compute_caption_metrics,
)
from aac_jax.metrics.fense import FenseOptions
from aac_jax.metrics.fluency import diversity_stats
from aac_jax.metrics.ptb_tokenizer import tokenize_caption, tokenize_captions
from aac_jax.metrics.reward import CiderDReward
from aac_jax.metrics.submission import write_dcase_submission

__all__ = [
  'DCASE2024_METRICS',
  'FenseOptions',
  'METRICS',
  'CaptionMetrics',
  'CiderDReward',
  'compute_caption_metrics',
  'diversity_stats',
  'tokenize_caption',
  'tokenize_captions',
  'write_dcase_submission',
]
