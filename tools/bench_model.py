"""Parameter count, train-step time and decoding time of a config's model.

  python tools/bench_model.py --config configs/synthetic_demo.py \
      --vocab_size 300 --batch_size 32 --seconds 10 \
      --config.model.encoder_dim=96  # any config field can be overridden

Times the jitted forward + backward pass (token cross-entropy, gradients of
all parameters) on random log-mel features of `seconds` length at the
front end's hop, and greedy decoding with and without the KV cache. The
front end and the optimizer update are not included. Compilation is
excluded; the median of `--repeats` runs is reported.
"""

import os
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import optax
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from aac_jax import config_path, decoding  # noqa: E402
from aac_jax.models.captioner import Captioner, count_params, init_params  # noqa: E402
from aac_jax.models.config import make_captioner_config  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/synthetic_demo.py', 'Config file.')
_VOCAB = flags.DEFINE_integer('vocab_size', 300, 'Vocabulary size (embedding rows).')
_BATCH = flags.DEFINE_integer('batch_size', 32, 'Clips per batch.')
_SECONDS = flags.DEFINE_float('seconds', 10.0, 'Clip length.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed runs (after one warm-up).')
_DECODE = flags.DEFINE_bool('decode', True, 'Also time greedy decoding, cached vs uncached.')


def _median_seconds(fn, *args, repeats: int) -> tuple[float, float]:
  """Median wall and process-CPU seconds of `fn(*args)` after a warm-up (compile) run.

  On a shared machine the wall time grows with other users' load; the CPU
  time (summed over XLA's threads) does much less.
  """
  jax.block_until_ready(fn(*args))
  wall, cpu = [], []
  for _ in range(repeats):
    start, start_cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn(*args))
    wall.append(time.perf_counter() - start)
    cpu.append(time.process_time() - start_cpu)
  return statistics.median(wall), statistics.median(cpu)


def _train_step_fn(model):
  def loss_fn(params, features, paddings, inputs, targets):
    logits = model.apply(
      {'params': params}, features, paddings, inputs, rngs={'dropout': jax.random.key(0)}
    )
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, targets))

  return jax.jit(jax.value_and_grad(loss_fn))


def main(argv):
  del argv
  config = _CONFIG.value
  model_cfg = make_captioner_config(config.model, _VOCAB.value)
  model = Captioner(model_cfg)
  frames = 1 + int(_SECONDS.value * config.dataset.sample_rate) // config.frontend.hop_length
  mels, tokens = config.frontend.n_mels, config.dataset.max_caption_tokens
  params = init_params(model, jax.random.key(0), num_mels=mels)
  print(f'model: {model_cfg}')
  print(f'parameters: {count_params(params):,}')
  print(f'devices: {jax.devices()}')

  key = jax.random.key(1)
  features = jax.random.normal(key, (_BATCH.value, frames, mels))
  paddings = jnp.zeros((_BATCH.value, frames))
  targets = jax.random.randint(key, (_BATCH.value, tokens), 4, _VOCAB.value)
  inputs = jnp.pad(targets[:, :-1], ((0, 0), (1, 0)), constant_values=1)
  step = _train_step_fn(model)
  wall, cpu = _median_seconds(
    step, params, features, paddings, inputs, targets, repeats=_REPEATS.value
  )
  shape = f'{_BATCH.value} x {frames} frames x {mels} mels'
  print(f'fwd+bwd: {wall:.3f} s wall ({cpu:.3f} s CPU) per batch of {shape}')
  print(f'load average: {os.getloadavg()}')

  if _DECODE.value:
    _time_decoding(model, params, features, paddings, config.decode, tokens)


def _time_decoding(model, params, features, paddings, decode_cfg, length: int) -> None:
  """Greedy decoding from fixed encoder outputs, with and without the KV cache."""
  # min_len = length - 1: every row decodes the full length (no early stop).
  settings = decoding.make_decode_settings(
    decode_cfg, method='greedy', max_len=length, min_len=length - 1
  )
  encoder = decoding.eval_model(model)
  encode = jax.jit(lambda p, f, x: encoder.apply({'params': p}, f, x, method='encode'))
  encoded, enc_paddings = encode(params, features, paddings)
  for cached in (True, False):
    fn = jax.jit(
      lambda p, e, x, c=cached: decoding.decode_encoded(model, p, e, x, settings, cached=c)
    )
    wall, cpu = _median_seconds(fn, params, encoded, enc_paddings, repeats=_REPEATS.value)
    label = 'KV cache' if cached else 'no cache (full re-run per step)'
    print(f'greedy decoding of {length} tokens, {label}: {wall:.3f} s wall ({cpu:.3f} s CPU)')


if __name__ == '__main__':
  app.run(main, flags_parser=config_path.parse_flags)
