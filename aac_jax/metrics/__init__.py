"""Caption metrics with coco-caption's definitions, and the SCST reward.

- `compute_caption_metrics`: BLEU-1..4, ROUGE-L, CIDEr-D (numpy, equal to
  pycocoevalcap 1.2), METEOR (official jar) and SPICE/SPIDEr (official jar
  with user-supplied CoreNLP), after the PTB tokenization of
  `ptb_tokenizer` (pure Python, equal to the CoreNLP 3.4.1 jar).
- `CiderDReward`: batched CIDEr-D with precomputed document frequencies.
- `diversity_stats`: vocabulary, novelty, repetition and length proxies.
"""

from aac_jax.metrics.evaluate import METRICS, CaptionMetrics, compute_caption_metrics
from aac_jax.metrics.fluency import diversity_stats
from aac_jax.metrics.ptb_tokenizer import tokenize_caption, tokenize_captions
from aac_jax.metrics.reward import CiderDReward

__all__ = [
  'METRICS',
  'CaptionMetrics',
  'CiderDReward',
  'compute_caption_metrics',
  'diversity_stats',
  'tokenize_caption',
  'tokenize_captions',
]
