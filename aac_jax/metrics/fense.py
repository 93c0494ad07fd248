"""SBERT-sim, FER, FENSE and SPIDEr-FL, with aac-metrics 0.6.0's definitions.

- SBERT-sim: cosine similarity of the candidate's Sentence-BERT embedding
  (`paraphrase-TinyBERT-L6-v2`, mean pooling, unit length) with each
  reference's, averaged over the clip's references.
- FER: whether FENSE's error checker (`echecker_clotho_audiocaps_base`)
  gives P(error) > 0.9 (the last of its sigmoid outputs, on the caption with
  punctuation removed and lower-cased, at most 64 word pieces).
- FENSE = SBERT-sim x (1 - 0.9 x FER); SPIDEr-FL = SPIDEr x (1 - 0.9 x FER).
Corpus scores are means over clips. The models run in JAX
(`fense_models`); a model that cannot be loaded makes the metrics that need
it unavailable, with the reason, and leaves the others.
"""

import dataclasses
import functools
import os
from collections.abc import Sequence

import numpy as np

from aac_jax.metrics import fense_models

ERROR_THRESHOLD = 0.9
PENALTY = 0.9


@dataclasses.dataclass(frozen=True)
class FenseOptions:
  """Where the models are and how to run them.

  Attributes:
    sbert_dir: sentence-transformers folder of paraphrase-TinyBERT-L6-v2
      ('' = `$AAC_FENSE_DIR/paraphrase-TinyBERT-L6-v2`).
    echecker_dir: converted error-checker folder
      ('' = `$AAC_FENSE_DIR/echecker_clotho_audiocaps_base`).
    batch_size: sentences per forward pass.
    precision: 'highest' (float32 matmuls) or 'default' (faster on GPU/TPU).
  """

  sbert_dir: str = ''
  echecker_dir: str = ''
  batch_size: int = 128
  precision: str = 'highest'


class FenseScorer:
  """Both FENSE models, loaded once; either may be unavailable (with the reason)."""

  def __init__(self, options: FenseOptions = FenseOptions()):
    self.options = options
    self.embedder = self.checker = None
    self.sbert_error = self.checker_error = ''
    try:
      self.embedder = fense_models.load_sentence_embedder(
        options.sbert_dir or None, options.batch_size, options.precision
      )
    except fense_models.ModelUnavailable as e:
      self.sbert_error = f'Sentence-BERT unavailable: {e}'
    try:
      self.checker = fense_models.load_error_checker(
        options.echecker_dir or None, options.batch_size, options.precision
      )
    except fense_models.ModelUnavailable as e:
      self.checker_error = f'error checker unavailable: {e}'

  def sbert_sim(self, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
    """Per-clip SBERT-sim, float64 [n]."""
    ref_clip = np.repeat(np.arange(len(references)), [len(r) for r in references])
    embeddings = self.embedder(list(candidates) + [r for rs in references for r in rs])
    cands, refs = embeddings[: len(candidates)], embeddings[len(candidates) :]
    sims = np.einsum('nd,nd->n', cands[ref_clip].astype(np.float64), refs.astype(np.float64))
    return np.bincount(ref_clip, sims, len(references)) / np.bincount(
      ref_clip, None, len(references)
    )

  def error_probs(self, candidates: Sequence[str]) -> np.ndarray:
    """P(fluency error) per candidate, float64 [n] (the checker's last class)."""
    if not candidates:
      return np.zeros(0)
    return self.checker(list(candidates))[:, -1].astype(np.float64)

  def score(
    self, candidates: Sequence[str], references: Sequence[Sequence[str]]
  ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Per-clip 'sbert_sim', 'fluency_error_prob', 'fer', 'fense' where computable.

    Returns:
      (metric -> float64 [n], metric -> why it is unavailable).
    """
    per_clip, unavailable = {}, {}
    if self.checker is not None:
      probs = self.error_probs(candidates)
      per_clip['fluency_error_prob'] = probs
      per_clip['fer'] = (probs > ERROR_THRESHOLD).astype(np.float64)
    else:
      unavailable['fer'] = self.checker_error
    if self.embedder is not None:
      per_clip['sbert_sim'] = self.sbert_sim(candidates, references)
    else:
      unavailable['sbert_sim'] = self.sbert_error
    if 'fer' in per_clip and 'sbert_sim' in per_clip:
      per_clip['fense'] = penalize(per_clip['sbert_sim'], per_clip['fer'])
    else:
      unavailable['fense'] = unavailable.get('sbert_sim') or unavailable['fer']
    return per_clip, unavailable


def penalize(scores: np.ndarray, fer: np.ndarray, penalty: float = PENALTY) -> np.ndarray:
  """Scores of clips whose caption has a fluency error (fer = 1) times 1 - penalty."""
  return scores * (1.0 - penalty * fer)


@functools.cache
def _cached_scorer(options: FenseOptions, env_dir: str | None) -> FenseScorer:
  del env_dir  # Part of the cache key only: the folders it names may change.
  return FenseScorer(options)


def shared_scorer(options: FenseOptions = FenseOptions()) -> FenseScorer:
  """A `FenseScorer` kept for the process (loading and compiling take seconds)."""
  return _cached_scorer(options, os.environ.get(fense_models.ENV_DIR))
