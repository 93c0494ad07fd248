"""Speed of the PANN log-mel front end: float64 spectrum (the default on CPU/GPU) vs float32.

  JAX_PLATFORMS=cpu python tools/bench_pann_frontend.py --clips 8 --seconds 10

`aac_jax.audio.pann_frontend` computes the window, FFT and power in float64
on backends that have it (accurate in quiet bins, see its docstring); the
float32 arm is the path backends without float64 take (`FLOAT64_BACKENDS`
emptied for that arm). Both arms are jitted once, then timed alternately in
one run (median of `--repeats`); the line gives the ratio, and the forward
pass of the ConvNeXt-Tiny tagger on the same batch (random weights) for scale.
"""

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from aac_jax.audio import pann_frontend
from aac_jax.convert.convnext import FRONTEND
from aac_jax.models import pretrained
from aac_jax.models.config import CaptionerConfig


def _compiled(waveform, paddings, float64: bool) -> Callable[[], None]:
  saved = pann_frontend.FLOAT64_BACKENDS
  pann_frontend.FLOAT64_BACKENDS = saved if float64 else ()
  try:  # The backend check runs while tracing: compile under the arm's setting.
    fn = jax.jit(lambda w, p: pann_frontend.pann_log_mel(w, p, FRONTEND)[0])
    compiled = fn.lower(waveform, paddings).compile()
  finally:
    pann_frontend.FLOAT64_BACKENDS = saved
  return lambda: compiled(waveform, paddings).block_until_ready()


def _tagger_forward(waveform, paddings) -> Callable[[], None]:
  """The ConvNeXt-Tiny forward on the front end's output (random weights), compiled."""
  tagger = pretrained.make_tagger(
    CaptionerConfig(vocab_size=4, encoder='convnext', encoder_layers=0, deterministic=True)
  )
  mel, mel_paddings = pann_frontend.pann_log_mel(waveform, paddings, FRONTEND)
  params = jax.jit(tagger.init)(jax.random.key(0), mel[:1], mel_paddings[:1])
  compiled = jax.jit(tagger.apply).lower(params, mel, mel_paddings).compile()
  return lambda: jax.block_until_ready(compiled(params, mel, mel_paddings))


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--clips', type=int, default=8)
  parser.add_argument('--seconds', type=float, default=10.0)
  parser.add_argument('--repeats', type=int, default=7)
  args = parser.parse_args(argv)
  samples = int(args.seconds * FRONTEND.sample_rate)
  rng = np.random.default_rng(0)
  waveform = jnp.asarray(rng.uniform(-0.5, 0.5, (args.clips, samples)).astype(np.float32))
  paddings = jnp.zeros((args.clips, samples), jnp.float32)
  arms = {'float32': _compiled(waveform, paddings, False)}
  arms['float64'] = _compiled(waveform, paddings, True)
  arms['tagger'] = _tagger_forward(waveform, paddings)
  times = {name: [] for name in arms}
  for _ in range(args.repeats):
    for name, run in arms.items():
      run()  # Warm caches for this arm.
      start = time.perf_counter()
      run()
      times[name].append(time.perf_counter() - start)
  f32, f64 = (statistics.median(times[k]) for k in ('float32', 'float64'))
  print(
    f'{jax.default_backend()}, {args.clips} clips x {args.seconds:g} s: '
    f'float32 spectrum {f32 * 1e3:.1f} ms, float64 spectrum {f64 * 1e3:.1f} ms '
    f'(float64 / float32 = {f64 / f32:.2f}x); ConvNeXt-Tiny forward on them '
    f'{statistics.median(times["tagger"]) * 1e3:.0f} ms'
  )
  return 0


if __name__ == '__main__':
  sys.exit(main())
