"""Measures training throughput and achieved FLOP/s against this machine's matmul peak.

For each model config it builds the real data-parallel train step (front
end, SpecAugment, model, loss, AdamW) on all local devices, feeds random
batches of the config's shapes (no dataset needed), and prints examples/s
and the FLOP/s achieved. FLOPs per step come from XLA's cost analysis of
the compiled step (`jitted.lower(...).compile().cost_analysis()`); the peak
is measured in the same run by timing a large `jnp.dot` on every device at
once, in the config's compute dtype, with JAX's default matmul precision
(as the model). XLA counts a loop body once, so with `grad_accum_steps > 1`
the FLOPs (and the fraction of peak) are undercounted.

  python tools/bench_train.py                       # demo and base configs
  python tools/bench_train.py --configs=base --batch_size=64 --compute_dtype=bfloat16
  python tools/bench_train.py --configs=convnext_audio,convnext_frames --batch_size=8 \
      --audio_seconds=10 --steps=3              # the DCASE 2024 recipe: audio vs stored frames

`convnext_audio` is configs/clotho_convnext.py (frozen ConvNeXt-Tiny) fed
with audio; `convnext_frames` the same run fed with the stored frame
embeddings `tools/extract_embeddings.py` writes (`dataset.embeddings`). With
both, a last line gives the step-time ratio.
"""

import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

_REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_REPO))

from aac_jax import models  # noqa: E402
from aac_jax.data import pipeline  # noqa: E402
from aac_jax.models import pretrained_setup  # noqa: E402
from aac_jax.train import parallel, state, steps  # noqa: E402
from configs import base, clotho_convnext, synthetic_demo  # noqa: E402

_CONFIGS = flags.DEFINE_list(
  'configs', ['demo', 'base'], 'Model configs: demo, base, convnext_audio, convnext_frames.'
)
_BATCH = flags.DEFINE_integer('batch_size', 0, 'Global batch (0 = the config value).')
_SECONDS = flags.DEFINE_float('audio_seconds', 0.0, 'Clip length (0 = the config value).')
_DTYPE = flags.DEFINE_enum('compute_dtype', '', ['', 'float32', 'bfloat16'], 'Override.')
_VOCAB = flags.DEFINE_integer('vocab_size', 5000, 'Vocabulary size of the benchmarked model.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps (after 2 warm-up steps).')
_PEAK_N = flags.DEFINE_integer('peak_size', 0, 'Matmul size for the peak (0 = by platform).')


def get_bench_config(name: str):
  """The config named `name` with the command-line overrides applied."""
  config = {
    'demo': synthetic_demo.get_config,
    'base': lambda: base.get_base_config(),
    'convnext_audio': clotho_convnext.get_config,
    'convnext_frames': clotho_convnext.get_config,
  }[name]()
  pretrained_setup.resolve_encoder_frontend(config, check_embeddings=False)
  if _BATCH.value:
    config.train.batch_size = _BATCH.value
  if _SECONDS.value:
    config.dataset.max_audio_seconds = _SECONDS.value
  if _DTYPE.value:
    config.model.compute_dtype = _DTYPE.value
  return config


def stored_frames_shape(config, model, params) -> tuple[int, int]:
  """`(max_frames, dim)` of the tagger's frames of one `max_audio_seconds` clip."""
  samples = int(config.dataset.max_audio_seconds * config.dataset.sample_rate)
  wave = jax.ShapeDtypeStruct((1, samples), jnp.float32)

  def frames(params, waveform, paddings):
    feats, pads = steps.compute_features(
      {'audio': waveform, 'audio_paddings': paddings},
      None,
      config.frontend,
      config.dataset.sample_rate,
    )
    return model.apply(
      {'params': params}, feats, pads, method=lambda m, f, p: m.encoder.tagger(f, p)
    )

  model = model.clone(config=model.config.replace(deterministic=True))
  shape = jax.eval_shape(frames, params, wave, wave)[0].shape
  return int(shape[1]), int(shape[2])


def frames_batch(config, batch, frames_shape, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """`batch` with random stored frames `[b, max_frames, dim]` in place of its audio."""
  b = batch['targets'].shape[0]
  max_frames, dim = frames_shape
  return {
    'frames': rng.standard_normal((b, max_frames, dim)).astype(np.float32),
    'frame_paddings': np.zeros((b, max_frames), np.float32),
    'targets': batch['targets'],
  }


def random_batch(config, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """A batch of noise and random captions with the config's shapes (one process)."""
  b = config.train.batch_size // jax.process_count()
  n = int(config.dataset.max_audio_seconds * config.dataset.sample_rate)
  length = config.dataset.max_caption_tokens
  refs = pipeline.captions_per_clip(config.dataset)
  shape = (b, length) if refs == 1 else (b, refs, length)
  targets = rng.integers(4, _VOCAB.value, shape).astype(np.int32)
  targets[..., -1] = 2  # EOS; every position is a real token (worst case).
  return {
    'audio': rng.normal(0, 0.1, (b, n)).astype(np.float32),
    'audio_paddings': np.zeros((b, n), np.float32),
    'targets': targets,
  }


def flops_of(compiled) -> float:
  """FLOPs of one call of a compiled program (one device's program under shard_map)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, list | tuple):
    cost = cost[0]
  return float(cost.get('flops', 0.0))


def measure_matmul_peak(mesh, dtype: str) -> float:
  """FLOP/s of a large square `jnp.dot` on every device at once (best of 5).

  Each device multiplies its own `[n, n]` matrices inside `shard_map`, so the
  figure is the aggregate of all devices running together (simulated CPU
  devices share the cores, and this shows it).
  """
  n = _PEAK_N.value or (2048 if jax.default_backend() == 'cpu' else 8192)
  sharding = parallel.batch_sharding(mesh)
  keys = jax.random.split(jax.random.key(0))
  a, b = (
    jax.jit(lambda k: jax.random.normal(k, (mesh.size * n, n), dtype), out_shardings=sharding)(k)
    for k in keys
  )
  spec = jax.sharding.PartitionSpec(parallel.AXIS)
  dot = jax.jit(jax.shard_map(jnp.dot, mesh=mesh, in_specs=(spec, spec), out_specs=spec))
  dot(a, b).block_until_ready()
  best = float('inf')
  for _ in range(5):
    start = time.perf_counter()
    dot(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return mesh.size * 2.0 * n**3 / best


def bench_config(name: str) -> dict[str, float]:
  """Compiles and times the train step of config `name`."""
  config = get_bench_config(name)
  mesh = parallel.create_mesh(jax.local_devices())
  model_cfg = models.make_captioner_config(config.model, _VOCAB.value)
  model = models.Captioner(model_cfg)
  tx, schedule = state.create_optimizer(config.optim, config.train.num_steps)
  tx = pretrained_setup.freeze_optimizer(tx, model_cfg)  # As the trainer.
  step = steps.make_train_step(
    mesh,
    model=model,
    tx=tx,
    schedule=schedule,
    frontend_cfg=config.frontend,
    sample_rate=config.dataset.sample_rate,
    label_smoothing=config.optim.label_smoothing,
    grad_accum_steps=config.optim.grad_accum_steps,
  )
  params = models.init_params(model, jax.random.key(0), num_mels=config.frontend.n_mels)
  train_state = jax.device_put(state.create_train_state(params, tx), parallel.replicated(mesh))
  batch = random_batch(config, np.random.default_rng(0))
  if name.endswith('_frames'):
    shape = stored_frames_shape(config, model, params)
    batch = frames_batch(config, batch, shape, np.random.default_rng(0))
  batch = parallel.shard_batch(batch, mesh)
  rng = jax.random.key(1)
  compiled = step.lower(train_state, batch, rng).compile()
  for _ in range(2):
    train_state, metrics = compiled(train_state, batch, rng)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(_STEPS.value):
    train_state, metrics = compiled(train_state, batch, rng)
  jax.block_until_ready((train_state, metrics))
  seconds = (time.perf_counter() - start) / _STEPS.value
  peak = measure_matmul_peak(mesh, config.model.compute_dtype)
  flops = flops_of(compiled) * mesh.size  # Per-device program, all devices.
  return {
    'params': models.count_params(params),
    'batch': config.train.batch_size,
    'seconds': config.dataset.max_audio_seconds,
    'refs': pipeline.captions_per_clip(config.dataset),
    'dtype': config.model.compute_dtype,
    'step_s': seconds,
    'examples_per_s': config.train.batch_size / seconds,
    'flops_per_step': flops,
    'achieved': flops / seconds,
    'peak': peak,
  }


def format_row(name: str, r: dict[str, float]) -> str:
  """One markdown table row of `bench_config`'s results."""
  refs = f' x {r["refs"]} refs' if r.get('refs', 1) > 1 else ''
  return (
    f'| {name} | {r["params"] / 1e6:.2f}M | {r["batch"]} x {r["seconds"]:g}{refs} | {r["dtype"]} '
    f'| {r["step_s"] * 1e3:.1f} | {r["examples_per_s"]:.1f} | {r["flops_per_step"] / 1e9:.1f} '
    f'| {r["achieved"] / 1e12:.3f} | {r["peak"] / 1e12:.3f} | {r["achieved"] / r["peak"]:.1%} |'
  )


def main(argv):
  del argv
  devices = jax.local_devices()
  print(
    f'{len(devices)} x {devices[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}'
  )
  header = (
    '| config | params | batch x s | dtype | step (ms) | examples/s | GFLOP/step '
    '| achieved TFLOP/s | matmul peak TFLOP/s | of peak |'
  )
  print(header)
  print('|' + '|'.join('---' for _ in header.split('|')[1:-1]) + '|', flush=True)
  results = {}
  for name in _CONFIGS.value:
    results[name] = bench_config(name)
    print(format_row(name, results[name]), flush=True)
  if {'convnext_audio', 'convnext_frames'} <= set(results):
    audio, frames = results['convnext_audio']['step_s'], results['convnext_frames']['step_s']
    print(
      f'\nConvNeXt recipe step: {audio * 1e3:.1f} ms from audio, {frames * 1e3:.1f} ms from '
      f'stored frames: {audio / frames:.1f}x faster from frames'
    )


if __name__ == '__main__':
  app.run(main)
