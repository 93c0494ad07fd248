"""Times aac_jax's metrics against pycocoevalcap 1.2, the SCST reward and FENSE.

  python tools/bench_metrics.py [--corpora ../shared/corpora] [--repeats 5]
  python tools/bench_metrics.py --only fense [--fense_clips 14,150,1045]
  python tools/bench_metrics.py --only clap [--clap_clips 16 --clap_captions 256]

1. Scores the Clotho evaluation split (caption_1 of each clip against the
   other four) with pycocoevalcap (Java PTB tokenizer + Bleu(4), Rouge,
   Cider) and with `aac_jax.metrics.compute_caption_metrics` (same metrics,
   tokenizer cache cleared before each run); prints both scores, their
   largest difference, both wall times (best of --repeats runs, and of at
   least 20 for aac_jax) and their ratio, and the same for CPU time (Java
   processes included), which a busy machine disturbs less.
2. Times `CiderDReward` (document frequencies from the Clotho development
   references) on batches of 256 candidates with five references each,
   through its three entry points (text references, corpus clip indices,
   token ids), and prints captions/s.
3. Times FENSE (SBERT-sim, error checker, penalty) on the first
   --fense_clips clips of the Clotho evaluation split (per clip: the
   caption_1 of the next clip as candidate, the clip's five captions as
   references) with aac_jax (JAX, --fense_batch, the CLI default 128) and
   with the PyTorch reference (sentence-transformers `encode` and the
   checker in torch, batches of 32 as aac-metrics), both warm (best of
   --fense_repeats runs), models of the real architectures with random weights
   (`tests/fense_reference.py`; timings do not depend on the weights);
   prints a row per set size: both times, aac_jax's first (cold, compiling)
   call, the ratios and the largest FENSE difference.

4. Times CLAP embeddings (`--only clap`): --clap_clips 10 s clips at 48 kHz
   (synthetic scenes) and --clap_captions Clotho captions through aac_jax's
   CLAP (`aac_jax.metrics.clap`) and transformers' `ClapModel` with its feature
   extractor, both the published architecture with random weights
   (`tests/clap_reference.py`), the same batch size, warm (best of
   --fense_repeats); prints both times, aac_jax's cold call, the ratios and
   the largest embedding difference.

Every part prints the load average (the machine may be shared).

Needs pycocoevalcap (`pip install 'aac_jax[eval]'`) and Java for part 1,
torch, transformers and sentence-transformers (the test extra) for part 3.
"""

import argparse
import csv
import os
import pathlib
import resource
import time

import numpy as np

from aac_jax.metrics import compute_caption_metrics, ptb_tokenizer
from aac_jax.metrics.reward import EOS_ID, CiderDReward

_KEYS = ('bleu_1', 'bleu_2', 'bleu_3', 'bleu_4', 'rouge_l', 'cider_d')


def load_clotho(path: pathlib.Path) -> list[list[str]]:
  """Returns the five captions of every clip."""
  with open(path, encoding='utf-8', newline='') as f:
    return [[row[f'caption_{i}'] for i in range(1, 6)] for row in csv.DictReader(f)]


def pycocoevalcap_scores(cands: list[str], refs: list[list[str]]) -> dict[str, float]:
  """pycocoevalcap's own pipeline: PTB tokenization (Java), then the scorers."""
  from pycocoevalcap.bleu.bleu import Bleu
  from pycocoevalcap.cider.cider import Cider
  from pycocoevalcap.rouge.rouge import Rouge
  from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

  tokenizer = PTBTokenizer()
  gts = tokenizer.tokenize({i: [{'caption': r} for r in rs] for i, rs in enumerate(refs)})
  res = tokenizer.tokenize({i: [{'caption': c}] for i, c in enumerate(cands)})
  bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
  rouge, _ = Rouge().compute_score(gts, res)
  cider, _ = Cider().compute_score(gts, res)
  return dict(zip(_KEYS, [*bleu, rouge, cider], strict=True))


def ours(cands: list[str], refs: list[list[str]]) -> dict[str, float]:
  """aac_jax, from raw text, with a cold tokenizer cache."""
  ptb_tokenizer.tokenize_caption.cache_clear()
  corpus = compute_caption_metrics(cands, refs).corpus
  return {k: corpus[k] for k in _KEYS}


def _cpu_seconds() -> float:
  """CPU time of this process and of its finished children (the Java runs)."""
  children = resource.getrusage(resource.RUSAGE_CHILDREN)
  return time.process_time() + children.ru_utime + children.ru_stime


def best_time(fn, repeats: int):
  """Returns (result, best wall seconds, best CPU seconds) of `repeats` calls."""
  best_wall, best_cpu, result = float('inf'), float('inf'), None
  for _ in range(repeats):
    wall, cpu = time.perf_counter(), _cpu_seconds()
    result = fn()
    best_wall = min(best_wall, time.perf_counter() - wall)
    best_cpu = min(best_cpu, _cpu_seconds() - cpu)
  return result, best_wall, best_cpu


def bench_parity(corpora: pathlib.Path, repeats: int) -> None:
  clips = load_clotho(corpora / 'clotho' / 'clotho_captions_evaluation.csv')
  cands, refs = [c[0] for c in clips], [c[1:] for c in clips]
  ref_scores, ref_time, ref_cpu = best_time(lambda: pycocoevalcap_scores(cands, refs), repeats)
  # Ours is cheap: more runs make its best time robust to a busy machine.
  our_repeats = max(repeats, 20)
  our_scores, our_time, our_cpu = best_time(lambda: ours(cands, refs), our_repeats)
  print(f'Clotho evaluation: {len(cands)} clips, caption_1 vs caption_2..5 ({_load()})')
  print(f'{"metric":<9} {"pycocoevalcap":>14} {"aac_jax":>14}')
  for k in _KEYS:
    print(f'{k:<9} {ref_scores[k]:>14.10f} {our_scores[k]:>14.10f}')
  diff = max(abs(ref_scores[k] - our_scores[k]) for k in _KEYS)
  print(f'largest difference: {diff:.3e} ({"same numbers" if diff < 1e-6 else "DIFFERENT"})')
  print(f'pycocoevalcap (Java PTB + Bleu + Rouge + Cider): {ref_time:.3f} s (CPU {ref_cpu:.3f} s)')
  print(f'aac_jax (Python PTB + BLEU + ROUGE-L + CIDEr-D): {our_time:.3f} s (CPU {our_cpu:.3f} s)')
  print(
    f'speed-up: {ref_time / our_time:.1f}x wall, {ref_cpu / our_cpu:.1f}x CPU '
    f'(best of {repeats} and {our_repeats} runs; CPU includes the Java processes)'
  )


def bench_reward(corpora: pathlib.Path, batch: int, repeats: int) -> None:
  train = load_clotho(corpora / 'clotho' / 'clotho_captions_development.csv')
  start = time.perf_counter()
  reward = CiderDReward(train)
  print(
    f'\nCiderDReward: {reward.num_ngrams} n-grams from {len(train)} clips, '
    f'fitted in {time.perf_counter() - start:.2f} s'
  )
  rng = np.random.default_rng(0)
  picks = rng.choice(len(train), size=batch, replace=False)
  refs = [train[i] for i in picks]
  # New candidates for every call, as sampled captions are (the scorer caches
  # the words of captions it has seen, which helps the references only).
  fresh = iter([_shuffled(train[i][0], rng) for i in picks] for _ in range(4 * repeats))
  _, text_time, _ = best_time(lambda: reward.score(next(fresh), refs), repeats)
  _, clip_time, _ = best_time(lambda: reward.score_clips(next(fresh), picks), repeats)
  # Token ids: words of the corpus numbered from 4 (docs/CONTRACTS.md).
  vocab: dict[str, int] = {}

  def encode(caption: str, length: int = 32) -> list[int]:
    ids = [vocab.setdefault(w, len(vocab) + 4) for w in caption.lower().split()][: length - 1]
    return ids + [EOS_ID] + [0] * (length - 1 - len(ids))

  corpus_ids = np.array([[encode(c) for c in clip] for clip in train])
  id_reward = CiderDReward.from_token_ids(corpus_ids)
  cand_ids, ref_ids = corpus_ids[picks, 0], corpus_ids[picks]
  _, id_time, _ = best_time(lambda: id_reward.score_ids(cand_ids, ref_ids), repeats)
  print(f'batch of {batch} candidates x 5 references:')
  print(f'  captions + reference captions (score):      {_rate(text_time, batch)}')
  print(f'  captions + corpus clip index (score_clips): {_rate(clip_time, batch)}')
  print(f'  token ids + reference ids (score_ids):     {_rate(id_time, batch)}')


def _shuffled(caption: str, rng: np.random.Generator) -> str:
  words = caption.split()
  rng.shuffle(words)
  return ' '.join(words)


def _rate(seconds: float, batch: int) -> str:
  return f'{seconds * 1e3:6.1f} ms, {batch / seconds:>9,.0f} captions/s'


def _load() -> str:
  return 'load average ' + ', '.join(f'{x:.1f}' for x in os.getloadavg())


def bench_fense(
  corpora: pathlib.Path, clip_counts: list[int], batch_size: int, repeats: int
) -> None:
  import sys
  import tempfile

  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
  from tests import fense_reference as ref  # noqa: I001  (torch; only for this part)

  from aac_jax.metrics import fense

  all_clips = load_clotho(corpora / 'clotho' / 'clotho_captions_evaluation.csv')
  print(f'\nFENSE, Clotho evaluation, x 5 references ({_load()})')
  print(
    f'{"clips":>6} {"aac_jax s (CPU)":>16} {"cold s":>8} {"PyTorch s (CPU)":>16} '
    f'{"wall":>6} {"CPU":>6} {"max diff":>9}'
  )
  with tempfile.TemporaryDirectory() as tmp:
    folders, reference, _ = ref.build_models(corpora, pathlib.Path(tmp))
    options = fense.FenseOptions(str(folders['sbert']), str(folders['echecker']), batch_size)
    start = time.perf_counter()
    scorer = fense.FenseScorer(options)
    load_time = time.perf_counter() - start
    for num_clips in clip_counts:
      clips = all_clips[:num_clips]
      cands = ptb_tokenizer.tokenize_captions(
        [clips[(i + 1) % len(clips)][0] for i in range(len(clips))]
      )
      refs = ptb_tokenizer.tokenize_references(clips)
      _, cold, _ = best_time(lambda c=cands, r=refs: scorer.score(c, r), 1)  # Compiles.
      ours, ours_time, ours_cpu = best_time(lambda c=cands, r=refs: scorer.score(c, r)[0], repeats)
      theirs, ref_time, ref_cpu = best_time(lambda c=cands, r=refs: reference.score(c, r), repeats)
      diff = np.abs(ours['fense'] - theirs['fense']).max()
      print(
        f'{len(cands):>6} {ours_time:>7.2f} ({ours_cpu:>6.2f}) {cold:>8.2f} '
        f'{ref_time:>7.2f} ({ref_cpu:>6.2f}) {ref_time / ours_time:>5.2f}x '
        f'{ref_cpu / ours_cpu:>5.2f}x {diff:>9.1e}',
        flush=True,
      )
  print(
    f'aac_jax batch {batch_size}, warm (cold: the first call on the set, compiling its new '
    f'shapes; loading took {load_time:.1f} s); PyTorch reference batch 32 (as aac-metrics); '
    f'best of {repeats} runs; ratios of the warm times; {_load()}'
  )


def bench_clap(corpora: pathlib.Path, num_clips: int, num_captions: int, batch: int, repeats: int):
  import sys
  import tempfile

  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
  from tests import clap_reference as ref  # noqa: I001  (torch; only for this part)
  import torch

  from aac_jax.convert import clap as clap_convert
  from aac_jax.metrics.clap import embedder

  captions = ref.read_captions(corpora / 'clotho' / 'clotho_captions_evaluation.csv', num_captions)
  with tempfile.TemporaryDirectory() as tmp:
    hf, out = pathlib.Path(tmp) / 'hf', pathlib.Path(tmp) / 'clap'
    hf.mkdir()
    tok = ref.train_tokenizer(hf, captions, max_length=77)
    model, extractor = ref.save_random_clap(hf, False, len(tok), size='base')
    clap_convert.convert_folder(hf, out)
    ours = embedder.load(out, batch_size=batch, text_batch_size=batch)
  rate = extractor.sampling_rate
  clips = ref.render_clips([extractor.max_length_s * rate] * num_clips, rate)

  @torch.no_grad()
  def theirs_audio():
    return np.concatenate([
      model.get_audio_features(
        **extractor(clips[i : i + batch], sampling_rate=rate, return_tensors='pt')
      ).pooler_output.numpy() for i in range(0, len(clips), batch)
    ])  # fmt: skip

  @torch.no_grad()
  def theirs_text():
    return np.concatenate([
      model.get_text_features(
        **tok(captions[i : i + batch], padding=True, truncation=True, return_tensors='pt')
      ).pooler_output.numpy() for i in range(0, len(captions), batch)
    ])  # fmt: skip

  print(f'\nCLAP embeddings, HTS-AT base + RoBERTa base, random weights ({_load()})')
  print(f'{"part":>18} {"aac_jax s (CPU)":>16} {"cold s":>8} {"transformers s (CPU)":>21} '
        f'{"wall":>6} {"CPU":>6} {"max diff":>9}')  # fmt: skip
  parts = (
    (f'{num_clips} clips x {extractor.max_length_s} s', lambda: ours.audio(clips), theirs_audio),
    (f'{len(captions)} captions', lambda: ours.text(captions), theirs_text),
  )
  for name, ours_fn, theirs_fn in parts:
    _, cold, _ = best_time(ours_fn, 1)  # Compiles.
    got, ours_time, ours_cpu = best_time(ours_fn, repeats)
    want, ref_time, ref_cpu = best_time(theirs_fn, repeats)
    print(
      f'{name:>18} {ours_time:>7.2f} ({ours_cpu:>6.2f}) {cold:>8.2f} '
      f'{ref_time:>12.2f} ({ref_cpu:>6.2f}) {ref_time / ours_time:>5.2f}x '
      f'{ref_cpu / ours_cpu:>5.2f}x {np.abs(got - want).max():>9.1e}',
      flush=True,
    )
  print(f'batch {batch} for both, warm, best of {repeats} runs (transformers: its feature '
        f'extractor included, as aac_jax computes its log-mel on the device); {_load()}')  # fmt: skip


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  default = pathlib.Path(__file__).resolve().parents[1].parent / 'shared' / 'corpora'
  parser.add_argument('--corpora', type=pathlib.Path, default=default)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--batch', type=int, default=256)
  parser.add_argument(
    '--only', choices=('coco', 'reward', 'fense', 'clap'), help='Run one part only.'
  )
  parser.add_argument('--clap_clips', type=int, default=16, help='10 s clips for the CLAP part.')
  parser.add_argument('--clap_captions', type=int, default=256, help='Captions (CLAP part).')
  parser.add_argument('--clap_batch', type=int, default=16, help='Batch of both CLAPs.')
  parser.add_argument(
    '--fense_clips', default='14,150,1045', help='Set sizes for the FENSE part (comma list).'
  )
  parser.add_argument('--fense_batch', type=int, default=128, help='aac_jax FENSE batch size.')
  parser.add_argument(
    '--fense_repeats', type=int, default=1, help='Timed runs of each (best kept).'
  )
  args = parser.parse_args()
  if args.only in (None, 'coco'):
    bench_parity(args.corpora, args.repeats)
  if args.only in (None, 'reward'):
    bench_reward(args.corpora, args.batch, max(args.repeats, 5))
  if args.only in (None, 'fense'):
    clip_counts = [int(n) for n in args.fense_clips.split(',')]
    bench_fense(args.corpora, clip_counts, args.fense_batch, args.fense_repeats)
  if args.only in (None, 'clap'):
    bench_clap(
      args.corpora, args.clap_clips, args.clap_captions, args.clap_batch, args.fense_repeats
    )


if __name__ == '__main__':
  main()
