"""Decoding speed: captions/s for greedy and beam search, with and without the KV cache.

  python tools/bench_decode.py                      # demo + base sizes, ~3-5 min on 2 CPU cores
  python tools/bench_decode.py --sizes base --batch_size 16 --repeats 5 --methods greedy,beam5

Models are randomly initialised with the `model` fields of
configs/synthetic_demo.py ('demo') and configs/base.py ('base'); speed does
not depend on the weights. For each size the encoder runs once on one batch
of noise clips, and every decoding variant then decodes that same encoder
output, so the rows differ only in the search and the cache. EOS is banned
until the last position (`min_len = max_len - 1`): every caption is exactly
`max_len` tokens, random weights cannot stop a search early, and cached and
uncached searches do the same number of steps.

Each variant is compiled ahead of time (compile seconds reported apart), run
once to warm up (not timed), then timed over `--repeats` runs; the table shows
the median. "without cache" re-runs the whole decoder over the prefix at each
step (`aac_jax.decoding.make_uncached_step_fn`); both variants must give the
same tokens, which is checked and reported.
"""

import argparse
import dataclasses
import pathlib
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

_REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_REPO))  # For `configs`, which is not an installed package.

from aac_jax import decoding, models  # noqa: E402
from aac_jax.audio import frontend  # noqa: E402
from configs import base, synthetic_demo  # noqa: E402

SIZES = {
  'demo': lambda: synthetic_demo.get_config(),
  'base': lambda: base.get_base_config(),
}
METHODS = {'greedy': ('greedy', 1), 'beam3': ('beam', 3), 'beam5': ('beam', 5)}


@dataclasses.dataclass
class Row:
  """One measured variant."""

  size: str
  method: str
  cached: bool
  compile_s: float
  batch_s: float  # Median seconds per batch.
  batch_size: int
  tokens: np.ndarray

  @property
  def captions_per_s(self) -> float:
    return self.batch_size / self.batch_s


def time_compiled(fn: Callable, args: Sequence, repeats: int) -> tuple[float, float, jax.Array]:
  """Compiles `fn` ahead of time, warms it up, then times `repeats` runs.

  Returns:
    `(compile seconds, median run seconds, last output)`.
  """
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - start
  out = jax.block_until_ready(compiled(*args))  # Warm-up: first-run allocations.
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return compile_s, statistics.median(times), out


def encode_batch(model, params, config, batch_size: int, seconds: float, seed: int):
  """Front end + encoder on noise clips: `(encoded [b, s, d], enc_paddings [b, s], seconds)`."""
  samples = int(seconds * config.dataset.sample_rate)
  rng = np.random.default_rng(seed)
  waveform = (0.1 * rng.standard_normal((batch_size, samples))).astype(np.float32)
  paddings = np.zeros_like(waveform)

  def encode(params, waveform, paddings):
    features, frame_paddings = frontend.log_mel(
      waveform, paddings, config.frontend, int(config.dataset.sample_rate)
    )
    return model.apply({'params': params}, features, frame_paddings, method='encode')

  _, encode_s, (encoded, enc_paddings) = time_compiled(encode, (params, waveform, paddings), 1)
  return encoded, enc_paddings, encode_s


def bench_size(name: str, args: argparse.Namespace) -> tuple[list[Row], float, int]:
  """Times every method with and without the cache for one model size.

  Returns:
    `(rows, encoder seconds per batch, parameter count)`.
  """
  config = SIZES[name]()
  model_cfg = models.make_captioner_config(config.model, args.vocab_size, deterministic=True)
  model = models.Captioner(model_cfg)
  params = models.init_params(model, jax.random.key(0), num_mels=config.frontend.n_mels)
  encoded, enc_paddings, encode_s = encode_batch(
    model, params, config, args.batch_size, args.audio_seconds, args.seed
  )
  rows = []
  for method in args.methods.split(','):
    kind, beams = METHODS[method]
    settings = decoding.make_decode_settings(
      config.decode, method=kind, beam_size=beams, max_len=args.max_len, min_len=args.max_len - 1
    )
    for cached in (True, False):

      def decode(params, encoded, enc_paddings, settings=settings, cached=cached):
        return decoding.decode_encoded(
          model, params, encoded, enc_paddings, settings, cached=cached
        ).tokens

      compile_s, batch_s, tokens = time_compiled(
        decode, (params, encoded, enc_paddings), args.repeats
      )
      rows.append(
        Row(name, method, cached, compile_s, batch_s, args.batch_size, np.asarray(tokens))
      )
      print(
        f'  {name:5s} {method:7s} {"kv cache" if cached else "no cache":9s} '
        f'compile {compile_s:6.1f} s  {args.batch_size / batch_s:8.1f} captions/s',
        file=sys.stderr,
        flush=True,
      )
  return rows, encode_s, models.count_params(params)


def format_table(rows: Sequence[Row], encoders: dict[str, tuple[float, int]], args) -> str:
  """The result table and the KV-cache speed-ups."""
  lines = [
    f'Decoding speed on {jax.devices()[0].device_kind} ({jax.default_backend()}), '
    f'batch {args.batch_size}, {args.audio_seconds:g} s clips, {args.max_len} tokens per caption, '
    f'vocab {args.vocab_size}, median of {args.repeats} runs after a warm-up',
    '',
    '| size | params | method | KV cache | compile s | ms / batch | captions/s |',
    '|---|---|---|---|---|---|---|',
  ]
  for row in rows:
    lines.append(
      f'| {row.size} | {encoders[row.size][1] / 1e6:.2f}M | {row.method} | '
      f'{"yes" if row.cached else "no"} | {row.compile_s:.1f} | {row.batch_s * 1e3:.1f} | '
      f'{row.captions_per_s:.1f} |'
    )
  lines += ['', 'Encoder (front end + conformer, once per batch, not in the rows above):']
  for size, (seconds, _) in encoders.items():
    lines.append(
      f'  {size}: {seconds * 1e3:.1f} ms / batch ({args.batch_size / seconds:.1f} clips/s)'
    )
  lines += ['', 'KV-cache speed-up (captions/s with cache / without), same tokens?']
  by_key = {(r.size, r.method, r.cached): r for r in rows}
  for size in encoders:
    parts = []
    for method in args.methods.split(','):
      kv, full = by_key[(size, method, True)], by_key[(size, method, False)]
      same = 'same' if np.array_equal(kv.tokens, full.tokens) else 'DIFFERENT'
      parts.append(f'{method} {kv.captions_per_s / full.captions_per_s:.2f}x ({same})')
    lines.append(f'  {size}: ' + ', '.join(parts))
  return '\n'.join(lines)


def make_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--sizes', default='demo,base', help=f'comma-separated, of {sorted(SIZES)}')
  parser.add_argument('--methods', default='greedy,beam3,beam5', help=f'of {sorted(METHODS)}')
  parser.add_argument('--batch_size', type=int, default=4, help='clips per batch')
  parser.add_argument('--repeats', type=int, default=3, help='timed runs per variant')
  parser.add_argument('--max_len', type=int, default=24, help='tokens per caption (EOS included)')
  parser.add_argument('--audio_seconds', type=float, default=10.0, help='clip length')
  parser.add_argument(
    '--vocab_size', type=int, default=5000, help='vocabulary (Clotho: ~4.4k words)'
  )
  parser.add_argument('--seed', type=int, default=0)
  return parser


def main(argv: Sequence[str] | None = None) -> None:
  args = make_parser().parse_args(argv)
  for method in args.methods.split(','):
    if method not in METHODS:
      raise SystemExit(f'unknown method {method!r}; choose from {sorted(METHODS)}')
  rows, encoders = [], {}
  for size in args.sizes.split(','):
    if size not in SIZES:
      raise SystemExit(f'unknown size {size!r}; choose from {sorted(SIZES)}')
    size_rows, encode_s, num_params = bench_size(size, args)
    rows += size_rows
    encoders[size] = (encode_s, num_params)
  print(format_table(rows, encoders, args))


if __name__ == '__main__':
  main()
