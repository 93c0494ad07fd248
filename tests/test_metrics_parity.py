"""BLEU-1..4, ROUGE-L and CIDEr-D against pycocoevalcap 1.2 on real captions.

Candidates are one human caption per clip (scored against the clip's other
captions) and perturbed copies of it: shuffled words, truncations, repeated
words and empty strings. Both sides score the same PTB-tokenized strings;
`test_metrics_ptb.py` checks that those equal the Java tokenizer's.
"""

import collections
import csv
import random

import numpy as np
import pytest
from corpora import corpora_dir

from aac_jax.metrics import bleu, cider, compute_caption_metrics, ngrams, ptb_tokenizer, rouge

pytest.importorskip('pycocoevalcap')
from pycocoevalcap.bleu.bleu import Bleu  # noqa: E402
from pycocoevalcap.cider.cider import Cider  # noqa: E402
from pycocoevalcap.rouge.rouge import Rouge  # noqa: E402

TOL = 1e-6


def _clotho_evaluation() -> list[list[str]]:
  path = corpora_dir() / 'clotho' / 'clotho_captions_evaluation.csv'
  with open(path, encoding='utf-8', newline='') as f:
    return [[row[f'caption_{i}'] for i in range(1, 6)] for row in csv.DictReader(f)]


def _audiocaps_test() -> list[list[str]]:
  groups = collections.defaultdict(list)
  with open(corpora_dir() / 'audiocaps' / 'test.csv', encoding='utf-8', newline='') as f:
    for row in csv.DictReader(f):
      groups[row['youtube_id']].append(row['caption'])
  return list(groups.values())


def _perturb(caption: str, kind: int, rng: random.Random) -> str:
  words = caption.split()
  if kind == 0:  # Shuffled words.
    rng.shuffle(words)
    return ' '.join(words)
  if kind == 1:  # Truncated (possibly to nothing).
    return ' '.join(words[: rng.randint(0, len(words))])
  if kind == 2:  # Repeated words.
    return ' '.join(words + words[-2:] * 3 + [words[0]] * 4)
  return ''


def _candidates(clips: list[list[str]]) -> tuple[list[str], list[list[str]]]:
  """Human caption + each perturbation kind, against the other captions."""
  rng = random.Random(0)
  cands, refs = [], []
  for clip in clips:
    cands.append(clip[0])
    refs.append(clip[1:])
  for i, clip in enumerate(clips):
    cands.append(_perturb(clip[0], i % 4, rng))
    refs.append(clip[1:])
  return cands, refs


def _reference_scores(cands: list[str], refs: list[list[str]]):
  gts = dict(enumerate(refs))
  res = {i: [c] for i, c in enumerate(cands)}
  b, b_clip = Bleu(4).compute_score(gts, res, verbose=0)
  r, r_clip = Rouge().compute_score(gts, res)
  c, c_clip = Cider().compute_score(gts, res)
  return b, np.array(b_clip).T, r, r_clip, c, c_clip


@pytest.fixture(scope='module', params=['clotho_evaluation', 'audiocaps_test'])
def scored(request):
  clips = _clotho_evaluation() if request.param == 'clotho_evaluation' else _audiocaps_test()
  raw_cands, raw_refs = _candidates(clips)
  cands = ptb_tokenizer.tokenize_captions(raw_cands)
  refs = ptb_tokenizer.tokenize_references(raw_refs)
  assert sum(c == '' for c in cands) > len(clips) // 4
  return raw_cands, raw_refs, cands, refs, _reference_scores(cands, refs)


def test_bleu_parity(scored):
  _, _, cands, refs, (b, b_clip, *_) = scored
  corpus, per_clip = bleu.bleu_scores(cands, refs)
  np.testing.assert_allclose(corpus, b, rtol=0, atol=TOL)
  np.testing.assert_allclose(per_clip, b_clip, rtol=0, atol=TOL)


def test_rouge_parity(scored):
  _, _, cands, refs, (*_, r, r_clip, _, _) = scored
  corpus, per_clip = rouge.rouge_l_scores(cands, refs)
  assert abs(corpus - r) < TOL
  np.testing.assert_allclose(per_clip, r_clip, rtol=0, atol=TOL)


def test_cider_parity(scored):
  _, _, cands, refs, (*_, c, c_clip) = scored
  corpus, per_clip = cider.cider_d_scores(cands, refs)
  assert abs(corpus - c) < TOL
  np.testing.assert_allclose(per_clip, c_clip, rtol=0, atol=TOL)


def test_facade_parity(scored):
  """compute_caption_metrics on raw text (shared encoding, ROUGE on ids)."""
  raw_cands, raw_refs, _, _, (b, b_clip, r, r_clip, c, c_clip) = scored
  result = compute_caption_metrics(raw_cands, raw_refs)
  for k in range(4):
    assert abs(result.corpus[f'bleu_{k + 1}'] - b[k]) < TOL
    np.testing.assert_allclose(result.per_clip[f'bleu_{k + 1}'], b_clip[:, k], atol=TOL)
  assert abs(result.corpus['rouge_l'] - r) < TOL
  np.testing.assert_allclose(result.per_clip['rouge_l'], r_clip, atol=TOL)
  assert abs(result.corpus['cider_d'] - c) < TOL
  np.testing.assert_allclose(result.per_clip['cider_d'], c_clip, atol=TOL)
  assert set(result.unavailable) == {
    'meteor',
    'spice',
    'spider',
    'sbert_sim',
    'fer',
    'fense',
    'spider_fl',
    'clap_sim',  # No --clap_dir: CLAP similarity is reported unavailable, with the reason.
    'clap_sim_refs',
  }


def test_unusual_tokens_and_references():
  """Tokens holding U+00A0, empty references, one clip, repeated references."""
  raw_cands = ['It costs 3 1/2 dollars.', '', 'a dog', 'x']
  raw_refs = [['3 1/2 dollars it costs', ''], ['a b', 'a b'], ['a dog', 'dog'], ['']]
  cands = ptb_tokenizer.tokenize_captions(raw_cands)
  refs = ptb_tokenizer.tokenize_references(raw_refs)
  assert '\u00a0' in cands[0]
  b, b_clip, r, r_clip, c, c_clip = _reference_scores(cands, refs)
  result = compute_caption_metrics(raw_cands, raw_refs)
  np.testing.assert_allclose([result.corpus[f'bleu_{k}'] for k in range(1, 5)], b, atol=TOL)
  np.testing.assert_allclose(result.per_clip['bleu_4'], b_clip[:, 3], atol=TOL)
  np.testing.assert_allclose(result.per_clip['rouge_l'], r_clip, atol=TOL)
  np.testing.assert_allclose(result.per_clip['cider_d'], c_clip, atol=TOL)
  assert abs(result.corpus['cider_d'] - c) < TOL and abs(result.corpus['rouge_l'] - r) < TOL


def test_one_clip_without_any_word():
  cands = ptb_tokenizer.tokenize_captions(['a dog', ''])
  refs = ptb_tokenizer.tokenize_references([['a dog barks'], ['']])
  b, _, r, r_clip, c, c_clip = _reference_scores(cands, refs)
  result = compute_caption_metrics(['a dog', ''], [['a dog barks'], ['']])
  np.testing.assert_allclose([result.corpus[f'bleu_{k}'] for k in range(1, 5)], b, atol=TOL)
  np.testing.assert_allclose(result.per_clip['rouge_l'], r_clip, atol=TOL)
  np.testing.assert_allclose(result.per_clip['cider_d'], c_clip, atol=TOL)


@pytest.mark.parametrize(
  'raw_cands,raw_refs', [([''], [['']]), (['', '...'], [['', ','], ['!']])], ids=['empty', 'marks']
)
def test_no_word_in_any_caption_scores_zero_cider(raw_cands, raw_refs):
  """pycocoevalcap's CIDEr raises (max() of no document frequencies); ours is 0, the rest equal."""
  cands = ptb_tokenizer.tokenize_captions(raw_cands)
  refs = ptb_tokenizer.tokenize_references(raw_refs)
  gts, res = dict(enumerate(refs)), {i: [c] for i, c in enumerate(cands)}
  with pytest.raises(ValueError, match='empty'):
    Cider().compute_score(gts, res)
  bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
  _, rouge_clip = Rouge().compute_score(gts, res)
  result = compute_caption_metrics(raw_cands, raw_refs)
  np.testing.assert_allclose([result.corpus[f'bleu_{k}'] for k in range(1, 5)], bleu, atol=TOL)
  np.testing.assert_allclose(result.per_clip['rouge_l'], rouge_clip, atol=TOL)
  assert result.corpus['cider_d'] == 0.0 and not result.per_clip['cider_d'].any()


def test_rouge_paths_agree():
  """The id-based ROUGE-L used by the facade equals the string version."""
  cands = ['a b c', '', 'a a a a', 'b']
  refs = [['a c', 'c b a'], ['', 'x'], ['a'], ['b b', '']]
  result = compute_caption_metrics(cands, refs)
  _, expected = rouge.rouge_l_scores(cands, refs)
  np.testing.assert_allclose(result.per_clip['rouge_l'], expected, atol=1e-12)
  assert rouge.lcs_length(list('abcbdab'), list('bdcaba')) == 4


def test_errors():
  with pytest.raises(ValueError, match='2 candidates but 1'):
    compute_caption_metrics(['a', 'b'], [['a']])
  with pytest.raises(ValueError, match='non-empty list'):
    compute_caption_metrics(['a'], [[]])
  with pytest.raises(ValueError, match='non-empty list'):
    bleu.bleu_scores(['a'], ['a'])
  empty = compute_caption_metrics([], [])
  assert empty.corpus['cider_d'] == 0.0 and len(empty.per_clip['bleu_1']) == 0


@pytest.mark.parametrize('mode', ['local', 'hashed'])
def test_key_modes_agree(mode):
  """Every n-gram key scheme gives the same BLEU and CIDEr-D."""
  cands = ['a dog barks a dog barks', 'rain', '', 'a b c d e f']
  refs = [['a dog is barking', 'dog barks a dog'], ['rain falls'], ['x y'], ['a b c d', 'e f']]
  vocab: dict[str, int] = {}
  cand_s, ref_s, ref_clip = ngrams.encode_pairs(cands, refs, vocab)
  packed = ngrams.pair_counts(cand_s, ref_s, ref_clip, 4, 'packed')
  other = ngrams.pair_counts(cand_s, ref_s, ref_clip, 4, mode)
  for name, fn in (('bleu', bleu.bleu_from_counts), ('cider', _cider)):
    np.testing.assert_allclose(fn(other)[1], fn(packed)[1], atol=1e-12, err_msg=name)


def _cider(counts):
  per_clip = cider.cider_d_from_counts(counts, cider.corpus_idf(counts))
  return per_clip.mean(), per_clip


def test_local_ids_are_the_packed_ranks_and_dense_ranks_is_uniques_inverse():
  """Evaluation's 'local' ids equal the 'packed' ones (same sums, same order of rows)."""
  cands = ['a dog barks a dog barks', 'rain', '', 'a b c d e f']
  refs = [['a dog is barking', 'dog barks a dog'], ['rain falls'], ['x y'], ['a b c d', 'e f']]
  cand_s, ref_s, ref_clip = ngrams.encode_pairs(cands, refs, {})
  packed = ngrams.pair_counts(cand_s, ref_s, ref_clip, 4, 'packed')
  local = ngrams.pair_counts(cand_s, ref_s, ref_clip, 4)
  np.testing.assert_array_equal(local.key, packed.key)
  np.testing.assert_array_equal(local.sentence, packed.sentence)
  rng = np.random.default_rng(0)
  for values in (rng.integers(0, 50, 1000), rng.integers(0, 2**62, 1000), np.array([7])):
    expected = np.unique(values, return_inverse=True)[1].reshape(-1)  # Large: the fallback.
    np.testing.assert_array_equal(ngrams.dense_ranks(values), expected)
