"""One call for all caption metrics, with coco-caption's preprocessing.

`compute_caption_metrics` PTB-tokenizes predictions and references (the
Python tokenizer of `ptb_tokenizer.py`, no Java), then computes BLEU-1..4,
ROUGE-L, CIDEr-D and Vocab in numpy; METEOR (official jar, Java),
SPICE/SPIDEr (official jar plus user-supplied CoreNLP), SBERT-sim, FER,
FENSE, SPIDEr-FL (the FENSE models in JAX, `fense.py`) and CLAP similarity
(`clap_score.py`) on request; and
bootstrap confidence intervals of every corpus score. As aac-metrics'
`evaluate(preprocess=True)` (its DCASE 2023/2024 evaluation), every metric,
FENSE included, sees the PTB-tokenized captions. A metric that cannot be
computed is left out of the scores, with the reason in `unavailable`.
"""

import os
import re
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from aac_jax.metrics import bleu, bootstrap, cider, clap_score, ngrams, ptb_tokenizer, rouge
from aac_jax.metrics import fense as fense_lib
from aac_jax.metrics import meteor as meteor_lib
from aac_jax.metrics import spice as spice_lib
from aac_jax.metrics import vocab as vocab_lib

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
  'sbert_sim',
  'fer',
  'fense',
  'spider_fl',
  'clap_sim',
  'clap_sim_refs',
  'vocab',
  'vocab_ratio',
)
# The DCASE 2024 table (aac-metrics `metrics='dcase2024'`): METEOR, SPIDEr-FL
# with its parts, FENSE with its parts, Vocab.
DCASE2024_METRICS = (
  'meteor',
  'cider_d',
  'spice',
  'spider',
  'spider_fl',
  'sbert_sim',
  'fer',
  'fense',
  'vocab',
  'vocab_ratio',
)


class CaptionMetrics(NamedTuple):
  """Scores of a set of predictions.

  Attributes:
    corpus: metric -> corpus score (keys among `METRICS`).
    per_clip: metric -> float64 [n] clip scores (same keys).
    unavailable: metric -> why it is missing (not requested, no Java, ...).
    intervals: metric -> (low, high) 95 % bootstrap interval of the corpus
      score (only with `bootstrap` > 0; see `bootstrap.py`).
  """

  corpus: dict[str, float]
  per_clip: dict[str, np.ndarray]
  unavailable: dict[str, str]
  intervals: dict[str, tuple[float, float]] = {}


def compute_caption_metrics(
  predictions: Sequence[str],
  references: Sequence[Sequence[str]],
  *,
  meteor: bool = False,
  spice: bool = False,
  spice_jars: str | os.PathLike | None = None,
  java: str = 'java',
  fense: bool = False,
  fense_options: fense_lib.FenseOptions | None = None,
  bootstrap_samples: int = 0,
  bootstrap_seed: int = 0,
  clap: clap_score.ClapOptions | None = None,
) -> CaptionMetrics:
  """Scores predictions against references as pycocoevalcap 1.2 does.

  Identical scores on every Clotho and AudioCaps caption; tokenization is
  per caption, so the rare captions whose PTB tokens depend on the next
  line of pycocoevalcap's file ("the letter B." before a caption starting
  "The") can score differently (see `ptb_tokenizer` and docs/evaluation.md).

  Args:
    predictions: [n] raw predicted captions, one per clip.
    references: [n] lists of raw reference captions (at least one each).
    meteor: also run METEOR 1.5 (needs Java and the `eval` extra).
    spice: also run SPICE and SPIDEr (needs Java, the `eval` extra and the
      CoreNLP 3.6.0 jars in `spice_jars` or $AAC_SPICE_CORENLP_DIR).
    spice_jars: folder holding the CoreNLP 3.6.0 jars.
    java: java executable for METEOR and SPICE.
    fense: also SBERT-sim, FER, FENSE and (with `spice`) SPIDEr-FL.
    fense_options: the FENSE model folders (default: `$AAC_FENSE_DIR`).
    bootstrap_samples: resamples for the 95 % intervals (0 = none).
    bootstrap_seed: seed of the resampling.
    clap: CLAP folder and audio files for `clap_sim` / `clap_sim_refs`
      (`clap_score.py`; raw captions, not PTB-tokenized); None: not requested.

  Returns:
    The `CaptionMetrics`.
  """
  ngrams.check_pairs(predictions, references)
  cands = ptb_tokenizer.tokenize_captions(predictions)
  refs = ptb_tokenizer.tokenize_references(references)
  corpus, per_clip, unavailable = {}, {}, {}
  statistics: dict[str, bootstrap.Statistic] = {}
  vocab_data = None
  if cands:
    vocab_data = _add_ngram_metrics(cands, refs, corpus, per_clip, statistics)
  else:
    corpus.update({k: 0.0 for k in METRICS[:4] + ('rouge_l', 'cider_d')})
    per_clip.update({k: np.zeros(0) for k in corpus})
  _add_meteor(meteor, cands, refs, java, corpus, per_clip, unavailable)
  _add_spice(spice, cands, refs, spice_jars, java, corpus, per_clip, unavailable)
  _add_fense(fense, fense_options, cands, refs, corpus, per_clip, unavailable)
  _add_clap(clap, predictions, references, corpus, per_clip, unavailable)
  _add_vocab(vocab_data, corpus)
  intervals = {}
  if bootstrap_samples > 0:
    for name in corpus:
      if name not in statistics and name in per_clip:
        statistics[name] = bootstrap.mean_statistic(per_clip[name])
    statistics = {k: v for k, v in statistics.items() if k in corpus}
    intervals = bootstrap.intervals(statistics, len(cands), bootstrap_samples, bootstrap_seed)
  return CaptionMetrics(corpus, per_clip, unavailable, intervals)


# Whitespace other than spaces (and the line breaks joining captions).
_OTHER_SPACE = re.compile(r'[^\S \n]')
# The same in ASCII text: what str.split() splits on besides ' ' and '\n'.
_OTHER_ASCII_SPACE = '\t\r\x0b\x0c\x1c\x1d\x1e\x1f'


def _single_spaced(joined: str) -> bool:
  """Whether captions joined by line breaks separate words by one space only."""
  if '  ' in joined or ' \n' in joined or '\n ' in joined:
    return False
  if joined.startswith(' ') or joined.endswith(' '):
    return False
  if joined.isascii():  # A few substring scans instead of a regular expression (5 ms).
    return not any(c in joined for c in _OTHER_ASCII_SPACE)
  return not _OTHER_SPACE.search(joined)


def _add_ngram_metrics(cands, refs, corpus, per_clip, statistics) -> vocab_lib.VocabData:
  """BLEU, ROUGE-L and CIDEr-D, sharing one encoding of the words; adds BLEU's resamplers.

  Returns:
    The word sets for Vocab (from the same n-gram table).
  """
  texts = cands + [r for rs in refs for r in rs]
  regular = _single_spaced('\n'.join(texts))  # Then split() == split(' ').
  vocab: dict[str, int] = {}
  cand_s, ref_s = ngrams.split_sentences(
    ngrams.encode_texts(texts, vocab, single_spaced=regular), len(cands)
  )
  ref_clip = np.repeat(np.arange(len(refs)), [len(rs) for rs in refs])
  counts = ngrams.pair_counts(cand_s, ref_s, ref_clip, 4)
  stats = bleu.bleu_statistics(counts, 4)
  bleu_corpus, bleu_clip = bleu.bleu_from_statistics(stats)
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
  statistics.update({f'bleu_{k + 1}': _bleu_order(stats, k) for k in range(4)})
  return vocab_lib.vocab_data_from_counts(counts)


def _bleu_order(stats: bleu.BleuStatistics, k: int) -> bootstrap.Statistic:
  return lambda w: bleu.corpus_bleu(stats, w)[:, k]


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


def _add_fense(wanted, options, cands, refs, corpus, per_clip, unavailable) -> None:
  """SBERT-sim, FER, FENSE and, where SPIDEr is there, SPIDEr-FL."""
  names = ('sbert_sim', 'fer', 'fense', 'spider_fl')
  if not wanted:
    unavailable.update({k: 'not requested (fense=False)' for k in names})
    return
  scores, missing = fense_lib.shared_scorer(options or fense_lib.FenseOptions()).score(cands, refs)
  per_clip.update(scores)
  unavailable.update(missing)
  corpus.update({k: float(v.mean()) if len(v) else 0.0 for k, v in scores.items() if k in names})
  if 'fer' not in scores:
    unavailable['spider_fl'] = f'needs FER: {missing["fer"]}'
  elif 'spider' not in per_clip:
    unavailable['spider_fl'] = f'needs SPIDEr: {unavailable["spider"]}'
  else:
    per_clip['spider_fl'] = fense_lib.penalize(per_clip['spider'], scores['fer'])
    corpus['spider_fl'] = float(per_clip['spider_fl'].mean()) if len(cands) else 0.0


def _add_clap(options, predictions, references, corpus, per_clip, unavailable) -> None:
  if options is None:
    unavailable.update({k: 'not requested (no --clap_dir)' for k in clap_score.NAMES})
    return
  scores, missing = clap_score.clap_scores(predictions, references, options)
  per_clip.update(scores)
  unavailable.update(missing)
  corpus.update({k: float(v.mean()) if len(v) else 0.0 for k, v in scores.items()})


def _add_vocab(data: vocab_lib.VocabData | None, corpus) -> None:
  """Vocab and its ratio to the references' (no interval: see `bootstrap.py`)."""
  if data is None:  # No candidates.
    corpus['vocab'] = corpus['vocab_ratio'] = 0.0
    return
  vocab, ratio = vocab_lib.vocab_scores(data, np.ones((1, data.num_clips)))
  corpus['vocab'], corpus['vocab_ratio'] = float(vocab[0]), float(ratio[0])
