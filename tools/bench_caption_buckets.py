"""Captioning short clips with a CoNeTTE-layout model: padded to the window vs length buckets.

  JAX_PLATFORMS=cpu python tools/bench_caption_buckets.py --clips 8 --seconds 1,2,3,5

Builds the published CoNeTTE architecture (`configs/conette.py`: ConvNeXt-
Tiny with CoNeTTE's stem, 6-layer decoder, 30 s window, beam 3) with random
weights in memory, then captions the same clips twice with
`inference.AudioCaptioner`: `length_buckets=1` (every clip padded to the
30 s window, as before issue 31) and the default buckets. Each arm is
compiled first (one untimed pass), then timed once per repeat, alternately;
the line gives both medians, the ratio and the padded lengths used.
"""

import argparse
import pathlib
import statistics
import sys
import time

import jax
import numpy as np

_REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_REPO))  # For `configs`, which is not an installed package.

from aac_jax import inference, models  # noqa: E402
from aac_jax.data import tokenizer as tokenizer_lib  # noqa: E402
from aac_jax.models import pretrained_setup  # noqa: E402
from configs import conette  # noqa: E402


def random_conette() -> inference.LoadedModel:
  """The published CoNeTTE layout with random weights and a 200-word vocabulary."""
  config = conette.get_config()
  pretrained_setup.resolve_encoder_frontend(config)
  words = tuple(f'w{i}' for i in range(200))
  tokenizer = tokenizer_lib.Tokenizer(tokenizer_lib.SPECIAL_TOKENS + words)
  config.decode.repeatable_tokens = list(words[:20])
  model = models.Captioner(
    models.make_captioner_config(config.model, tokenizer.vocab_size, deterministic=True)
  )
  init = jax.jit(lambda key: models.init_params(model, key, num_mels=config.frontend.n_mels))
  return inference.LoadedModel(config, model, init(jax.random.key(0)), tokenizer)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--clips', type=int, default=8, help='clips per length')
  parser.add_argument('--seconds', default='1,2,3,5', help='clip lengths (comma-separated)')
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--repeats', type=int, default=2)
  args = parser.parse_args(argv)
  loaded = random_conette()
  settings, mask = inference.make_settings(loaded)
  rng = np.random.default_rng(0)
  lengths = [float(s) for s in args.seconds.split(',')]
  rate = loaded.sample_rate
  clips = [
    rng.uniform(-0.3, 0.3, int(s * rate)).astype(np.float32) for s in lengths
    for _ in range(args.clips)
  ]  # fmt: skip
  arms = {
    name: inference.AudioCaptioner(
      loaded, settings, repeat_ban_mask=mask, batch_size=args.batch_size, length_buckets=buckets
    )
    for name, buckets in (('window', 1), ('buckets', 4))
  }
  times = {name: [] for name in arms}
  for captioner in arms.values():
    captioner.caption_tokens(clips)  # Compiles every shape this arm uses.
  for _ in range(args.repeats):
    for name, captioner in arms.items():
      start = time.perf_counter()
      captioner.caption_tokens(clips)
      times[name].append(time.perf_counter() - start)
  window, buckets = (statistics.median(times[k]) for k in ('window', 'buckets'))
  padded = sorted({samples / rate for _, samples in arms['buckets'].shapes})
  print(
    f'{jax.default_backend()}, {len(clips)} clips of {args.seconds} s, batch {args.batch_size}: '
    f'30 s window {window:.1f} s, buckets {buckets:.1f} s (window / buckets = '
    f'{window / buckets:.1f}x; padded to {", ".join(f"{p:g}" for p in padded)} s)'
  )
  return 0


if __name__ == '__main__':
  sys.exit(main())
