"""One call for all caption metrics, with coco-caption's preprocessing.

`compute_caption_metrics` PTB-tokenizes predictions and references (the
Python tokenizer of `ptb_tokenizer.py`, no Java), then computes BLEU-1..4,
ROUGE-L and CIDEr-D in numpy; METEOR (official jar, Java) and SPICE/SPIDEr
(official jar plus user-supplied CoreNLP) on request. A metric that cannot
be computed is left out of the scores, with the reason in `unavailable`.
"""

import os
import re
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from aac_jax.metrics import bleu, cider, ngrams, ptb_tokenizer, rouge
from aac_jax.metrics import meteor as meteor_lib
from aac_jax.metrics import spice as spice_lib

METRICS = (
  'bleu_1',
  'bleu_2',
  'bleu_3',
  'bleu_4',
  'meteor',
  'rouge_l',
  'cider_d',
  'spice',
  'spider',
)


class CaptionMetrics(NamedTuple):
  """Scores of a set of predictions.

  Attributes:
    corpus: metric -> corpus score (keys among `METRICS`).
    per_clip: metric -> float64 [n] clip scores (same keys).
    unavailable: metric -> why it is missing (not requested, no Java, ...).
  """

  corpus: dict[str, float]
  per_clip: dict[str, np.ndarray]
  unavailable: dict[str, str]


def compute_caption_metrics(
  predictions: Sequence[str],
  references: Sequence[Sequence[str]],
  *,
  meteor: bool = False,
  spice: bool = False,
  spice_jars: str | os.PathLike | None = None,
  java: str = 'java',
) -> CaptionMetrics:
  """Scores predictions against references as pycocoevalcap 1.2 does.

  Identical scores on every Clotho and AudioCaps caption; tokenization is
  per caption, so the rare captions whose PTB tokens depend on the next
  line of pycocoevalcap's file ("the letter B." before a caption starting
  "The") can score differently (see `ptb_tokenizer` and the README).

  Args:
    predictions: [n] raw predicted captions, one per clip.
    references: [n] lists of raw reference captions (at least one each).
    meteor: also run METEOR 1.5 (needs Java and the `eval` extra).
    spice: also run SPICE and SPIDEr (needs Java, the `eval` extra and the
      CoreNLP 3.6.0 jars in `spice_jars` or $AAC_SPICE_CORENLP_DIR).
    spice_jars: folder holding the CoreNLP 3.6.0 jars.
    java: java executable for METEOR and SPICE.

  Returns:
    The `CaptionMetrics`.
  """
  ngrams.check_pairs(predictions, references)
  cands = ptb_tokenizer.tokenize_captions(predictions)
  refs = ptb_tokenizer.tokenize_references(references)
  corpus, per_clip, unavailable = {}, {}, {}
  if cands:
    _add_ngram_metrics(cands, refs, corpus, per_clip)
  else:
    corpus.update({k: 0.0 for k in METRICS[:4] + ('rouge_l', 'cider_d')})
    per_clip.update({k: np.zeros(0) for k in corpus})
  _add_meteor(meteor, cands, refs, java, corpus, per_clip, unavailable)
  _add_spice(spice, cands, refs, spice_jars, java, corpus, per_clip, unavailable)
  return CaptionMetrics(corpus, per_clip, unavailable)


# Whitespace other than spaces (and the line breaks joining captions).
_OTHER_SPACE = re.compile(r'[^\S \n]')


def _single_spaced(joined: str) -> bool:
  """Whether captions joined by line breaks separate words by one space only."""
  if '  ' in joined or ' \n' in joined or '\n ' in joined:
    return False
  return not (joined.startswith(' ') or joined.endswith(' ') or _OTHER_SPACE.search(joined))


def _add_ngram_metrics(cands, refs, corpus, per_clip) -> None:
  """BLEU, ROUGE-L and CIDEr-D, sharing one encoding of the words."""
  texts = cands + [r for rs in refs for r in rs]
  regular = _single_spaced('\n'.join(texts))  # Then split() == split(' ').
  vocab: dict[str, int] = {}
  cand_s, ref_s = ngrams.split_sentences(
    ngrams.encode_texts(texts, vocab, single_spaced=regular), len(cands)
  )
  ref_clip = np.repeat(np.arange(len(refs)), [len(rs) for rs in refs])
  counts = ngrams.pair_counts(cand_s, ref_s, ref_clip, 4)
  bleu_corpus, bleu_clip = bleu.bleu_from_counts(counts, 4)
  for k in range(4):
    corpus[f'bleu_{k + 1}'], per_clip[f'bleu_{k + 1}'] = float(bleu_corpus[k]), bleu_clip[:, k]
  if not regular:
    _, per_clip['rouge_l'] = rouge.rouge_l_scores(cands, refs)
  else:  # split() and split(' ') agree except on '' (one empty token).
    empty = len(vocab) + 1
    cand_r, ref_r = rouge.empty_as_token(cand_s, empty), rouge.empty_as_token(ref_s, empty)
    per_clip['rouge_l'] = rouge.rouge_l_from_ids(cand_r, ref_r, ref_clip)
  per_clip['cider_d'] = cider.cider_d_from_counts(counts, cider.corpus_idf(counts))
  corpus['rouge_l'] = float(per_clip['rouge_l'].mean())
  corpus['cider_d'] = float(per_clip['cider_d'].mean())


def _add_meteor(wanted, cands, refs, java, corpus, per_clip, unavailable) -> None:
  if not wanted:
    unavailable['meteor'] = 'not requested (meteor=False)'
    return
  try:
    corpus['meteor'], per_clip['meteor'] = meteor_lib.shared_meteor(java).score(cands, refs)
  except meteor_lib.MeteorUnavailable as e:
    unavailable['meteor'] = str(e)


def _add_spice(wanted, cands, refs, jars, java, corpus, per_clip, unavailable) -> None:
  if not wanted:
    unavailable['spice'] = unavailable['spider'] = 'not requested (spice=False)'
    return
  try:
    corpus['spice'], per_clip['spice'] = spice_lib.spice_scores(cands, refs, jars, java)
  except spice_lib.SpiceUnavailable as e:
    unavailable['spice'] = str(e)
    unavailable['spider'] = f'needs SPICE: {e}'
    return
  corpus['spider'] = float(spice_lib.spider(corpus['cider_d'], corpus['spice']))
  per_clip['spider'] = spice_lib.spider(per_clip['cider_d'], per_clip['spice'])
