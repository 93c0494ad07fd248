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
  python tools/bench_train.py --compare_torch --configs=demo,base   # against PyTorch eager
  python tools/bench_train.py --baseline=8355499 --rounds=3  # this tree against a revision

`--baseline=REV` unpacks revision REV of this repository (`git archive`) and
runs its `tools/bench_train.py` and this tree's in fresh processes, in
alternating order for `--rounds` rounds, and prints the median step of each
and their ratio (above 1 = this tree faster).

`--compare_torch` also builds the same model in eager PyTorch
(`tools/torch_captioner.py`: same modules and parameter count, checked
equal here and by `tests/test_torch_captioner.py`, with its front end,
label-smoothed loss, clipping and AdamW), feeds it the same batch, and times
the two steps interleaved: after warm-up steps of both, each round times one
aac_jax step and one PyTorch step, in alternating order, so that both see the
same machine load. It prints each side's median step and the spread of the
rounds (25th-75th percentile), and PyTorch's median over aac_jax's (above 1 =
aac_jax faster). aac_jax's compile time (lowering + XLA compilation of the
step, and of the parameter initialisation) is reported apart from the steps.
The demo uses its 262-token vocabulary, other configs `--vocab_size`.

`convnext_audio` is configs/clotho_convnext.py (frozen ConvNeXt-Tiny) fed
with audio; `convnext_frames` the same run fed with the stored frame
embeddings `tools/extract_embeddings.py` writes (`dataset.embeddings`). With
both, a last line gives the step-time ratio.
"""

import dataclasses
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

_REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_REPO))

from aac_jax import config_path, models  # noqa: E402
from aac_jax.data import pipeline  # noqa: E402
from aac_jax.models import pretrained_setup  # noqa: E402
from aac_jax.train import parallel, state, steps, trainer  # noqa: E402
from configs import base, clotho_convnext, synthetic_demo  # noqa: E402

_CONFIGS = flags.DEFINE_list(
  'configs', ['demo', 'base'], 'Model configs: demo, base, convnext_audio, convnext_frames.'
)
_BATCH = flags.DEFINE_integer('batch_size', 0, 'Global batch (0 = the config value).')
_SECONDS = flags.DEFINE_float('audio_seconds', 0.0, 'Clip length (0 = the config value).')
_DTYPE = flags.DEFINE_enum('compute_dtype', '', ['', 'float32', 'bfloat16'], 'Override.')
_VOCAB = flags.DEFINE_integer(
  'vocab_size', 0, 'Vocabulary of the benchmarked model (0 = 262 for demo, else 5000).'
)
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps (after 2 warm-up steps).')
_PEAK_N = flags.DEFINE_integer('peak_size', 0, 'Matmul size for the peak (0 = by platform).')
_COMPARE = flags.DEFINE_bool('compare_torch', False, 'Time the same model in eager PyTorch too.')
_ROUNDS = flags.DEFINE_integer('rounds', 10, 'Interleaved rounds of --compare_torch.')
_PAUSE = flags.DEFINE_float('pause_s', 0.5, 'Idle seconds before each timed step.')
_BASELINE = flags.DEFINE_string(
  'baseline', '', "A git revision: time its train step against this tree's, side by side."
)

DEMO_VOCAB = 262  # The synthetic demo's vocabulary (README, "Model sizes").
DEFAULT_VOCAB = 5000


def vocab_size(name: str) -> int:
  """The vocabulary benchmarked with config `name`."""
  return _VOCAB.value or (DEMO_VOCAB if name == 'demo' else DEFAULT_VOCAB)


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


def random_batch(config, vocab: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """A batch of noise and random captions with the config's shapes (one process)."""
  b = config.train.batch_size // jax.process_count()
  n = int(config.dataset.max_audio_seconds * config.dataset.sample_rate)
  length = config.dataset.max_caption_tokens
  refs = pipeline.captions_per_clip(config.dataset)
  shape = (b, length) if refs == 1 else (b, refs, length)
  targets = rng.integers(4, vocab, shape).astype(np.int32)
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
  spec = jax.sharding.PartitionSpec(parallel.BATCH_AXES)
  dot = jax.jit(jax.shard_map(jnp.dot, mesh=mesh, in_specs=(spec, spec), out_specs=spec))
  dot(a, b).block_until_ready()
  best = float('inf')
  for _ in range(5):
    start = time.perf_counter()
    dot(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return mesh.size * 2.0 * n**3 / best


@dataclasses.dataclass
class JaxStep:
  """A compiled aac_jax train step on one batch, and what the tables report about it."""

  run: Callable[[], None]  # One update, waited for.
  params: int
  flops_per_step: float
  compile_s: float  # Lowering + XLA compilation of the step.
  init_s: float  # Parameter initialisation (compilation included).


def build_jax_step(name: str, config, batch_np: dict[str, np.ndarray]) -> JaxStep:
  """Compiles the real data-parallel train step of `config` (all local devices) on `batch_np`."""
  mesh = parallel.create_mesh(None, jax.local_devices())
  model_cfg = models.make_captioner_config(config.model, vocab_size(name))
  model = models.Captioner(model_cfg)
  tx, schedule = state.create_optimizer(config.optim, config.train.num_steps)
  tx = pretrained_setup.freeze_optimizer(tx, model_cfg)  # As the trainer.
  sharding = trainer.state_sharding_for(config, model, tx, mesh)
  step = steps.make_train_step(
    mesh,
    sharding,
    model=model,
    tx=tx,
    schedule=schedule,
    frontend_cfg=config.frontend,
    sample_rate=config.dataset.sample_rate,
    label_smoothing=config.optim.label_smoothing,
    grad_accum_steps=config.optim.grad_accum_steps,
  )
  start = time.perf_counter()
  params = models.init_params(model, jax.random.key(0), num_mels=config.frontend.n_mels)
  train_state = jax.device_put(state.create_train_state(params, tx), sharding)
  jax.block_until_ready(train_state)
  init_s = time.perf_counter() - start
  if name.endswith('_frames'):
    shape = stored_frames_shape(config, model, params)
    batch_np = frames_batch(config, batch_np, shape, np.random.default_rng(0))
  batch = parallel.shard_batch(batch_np, mesh)
  rng = jax.random.key(1)
  start = time.perf_counter()
  compiled = step.lower(train_state, batch, rng).compile()
  compile_s = time.perf_counter() - start
  holder = [train_state]

  def run():
    holder[0], metrics = compiled(holder[0], batch, rng)
    jax.block_until_ready((holder[0], metrics))

  return JaxStep(
    run=run,
    params=models.count_params(params),
    flops_per_step=flops_of(compiled) * mesh.size,  # Per-device (partitioned) program.
    compile_s=compile_s,
    init_s=init_s,
  )


def build_torch_step(name: str, config, batch_np: dict[str, np.ndarray]):
  """`(run, params)`: the same model's eager PyTorch train step on the same batch."""
  import torch_captioner  # noqa: PLC0415 (torch only with --compare_torch)

  model = torch_captioner.from_config(config, vocab_size(name))
  step = torch_captioner.make_train_step(
    model, config.optim, config.train.num_steps, config.optim.label_smoothing
  )
  batch = torch_captioner.torch_batch(batch_np, 'cpu')

  def run():
    step(batch).item()  # .item() waits for the step.

  return run, torch_captioner.count_params(model)


def interleaved_times(
  runs: dict[str, Callable[[], None]], rounds: int, warmup: int = 2, pause_s: float = 0.0
):
  """Seconds of each run per round, `{name: [rounds]}`, timed in alternating order.

  `pause_s` before each timed run lets the previous run's worker threads
  (PyTorch's OpenMP threads spin-wait after a parallel region) go idle.
  """
  for _ in range(warmup):
    for run in runs.values():
      run()
  times = {name: [] for name in runs}
  names = list(runs)
  for r in range(rounds):
    for name in names if r % 2 == 0 else names[::-1]:
      time.sleep(pause_s)
      start = time.perf_counter()
      runs[name]()
      times[name].append(time.perf_counter() - start)
  return times


def spread(seconds: list[float], decimals: int = 0) -> str:
  """`median [p25-p75]` in ms."""
  p25, p50, p75 = np.percentile(seconds, [25, 50, 75]) * 1e3
  return f'{p50:.{decimals}f} [{p25:.{decimals}f}-{p75:.{decimals}f}]'


def bench_config(name: str, with_torch: bool) -> dict[str, float]:
  """Compiles and times the train step of config `name` (and PyTorch's, `with_torch`)."""
  config = get_bench_config(name)
  batch_np = random_batch(config, vocab_size(name), np.random.default_rng(0))
  jax_step = build_jax_step(name, config, batch_np)
  runs = {'aac_jax': jax_step.run}
  if with_torch:
    runs['torch'], torch_params = build_torch_step(name, config, batch_np)
    if torch_params != jax_step.params:
      raise ValueError(f'{name}: PyTorch has {torch_params} parameters, aac_jax {jax_step.params}')
  times = interleaved_times(
    runs, _ROUNDS.value if with_torch else _STEPS.value, pause_s=_PAUSE.value
  )
  seconds = float(np.median(times['aac_jax']))
  peak = measure_matmul_peak(
    parallel.create_mesh(None, jax.local_devices()), config.model.compute_dtype
  )
  return {
    'params': jax_step.params,
    'batch': config.train.batch_size,
    'seconds': config.dataset.max_audio_seconds,
    'refs': pipeline.captions_per_clip(config.dataset),
    'dtype': config.model.compute_dtype,
    'step_s': seconds,
    'examples_per_s': config.train.batch_size / seconds,
    'flops_per_step': jax_step.flops_per_step,
    'achieved': jax_step.flops_per_step / seconds,
    'peak': peak,
    'compile_s': jax_step.compile_s,
    'init_s': jax_step.init_s,
    'times': times,
  }


def format_row(name: str, r: dict[str, float]) -> str:
  """One markdown table row of `bench_config`'s results."""
  refs = f' x {r["refs"]} refs' if r.get('refs', 1) > 1 else ''
  return (
    f'| {name} | {r["params"] / 1e6:.2f}M | {r["batch"]} x {r["seconds"]:g}{refs} | {r["dtype"]} '
    f'| {r["step_s"] * 1e3:.1f} | {r["examples_per_s"]:.1f} | {r["flops_per_step"] / 1e9:.1f} '
    f'| {r["achieved"] / 1e12:.3f} | {r["peak"] / 1e12:.3f} | {r["achieved"] / r["peak"]:.1%} |'
  )


def format_torch_row(name: str, r: dict) -> str:
  """One row of the side-by-side table."""
  jax_s, torch_s = (float(np.median(r['times'][k])) for k in ('aac_jax', 'torch'))
  refs = f' x {r["refs"]} refs' if r['refs'] > 1 else ''
  return (
    f'| {name} | {r["params"]:,} | {r["batch"]} x {r["seconds"]:g} s{refs} | {r["dtype"]} '
    f'| {spread(r["times"]["aac_jax"])} | {spread(r["times"]["torch"])} | {torch_s / jax_s:.2f}x '
    f'| {r["compile_s"]:.1f} + {r["init_s"]:.1f} |'
  )


def print_table(header: str) -> None:
  print(header)
  print('|' + '|'.join('---' for _ in header.split('|')[1:-1]) + '|', flush=True)


def describe_machine() -> str:
  """Devices, versions, threads and load, for the table's caption."""
  devices = jax.local_devices()
  line = (
    f'{len(devices)} x {devices[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}, '
    f'{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}'
  )
  if _COMPARE.value:
    import torch  # noqa: PLC0415

    line += f', torch {torch.__version__} with {torch.get_num_threads()} threads'
  return line


def checkout(revision: str, into: pathlib.Path) -> pathlib.Path:
  """The files of `revision` of this repository, unpacked under `into` (`git archive`)."""
  into.mkdir(parents=True, exist_ok=True)
  archive = subprocess.run(
    ['git', '-C', str(_REPO), 'archive', '--format=tar', revision],
    check=True,
    capture_output=True,
  ).stdout
  subprocess.run(['tar', '-x', '-C', str(into)], input=archive, check=True)
  return into


def step_ms_of_tree(tree: pathlib.Path, configs: list[str]) -> dict[str, float]:
  """Runs `tools/bench_train.py` of `tree` in a fresh process; `{config: step ms}` it printed."""
  command = [
    sys.executable,
    str(tree / 'tools' / 'bench_train.py'),
    f'--configs={",".join(configs)}',
  ]
  command += [f'--steps={_STEPS.value}', f'--pause_s={_PAUSE.value}']
  out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=tree).stdout
  found = {}
  for line in out.splitlines():
    cells = [c.strip() for c in line.strip().strip('|').split('|')]
    if cells and cells[0] in configs and len(cells) >= 5:
      found[cells[0]] = float(cells[4])
  return found


def compare_with_baseline(revision: str, configs: list[str], rounds: int) -> None:
  """Times `revision`'s train step and this tree's in alternating fresh processes; prints ratios."""
  with tempfile.TemporaryDirectory() as tmp:
    trees = {revision: checkout(revision, pathlib.Path(tmp) / 'baseline'), 'this tree': _REPO}
    times = {name: {c: [] for c in configs} for name in trees}
    for r in range(rounds):
      for name in list(trees) if r % 2 == 0 else list(trees)[::-1]:
        for config, ms in step_ms_of_tree(trees[name], configs).items():
          times[name][config].append(ms)
  print(f'{rounds} rounds, each a fresh process per tree in alternating order; median step ms:')
  print_table(f'| config | {revision} | this tree | {revision} / this tree |')
  for config in configs:
    old, new = (float(np.median(times[n][config])) for n in trees)
    print(f'| {config} | {old:.1f} | {new:.1f} | {old / new:.3f} |')


def main(argv):
  del argv
  print(describe_machine())
  if _BASELINE.value:
    compare_with_baseline(_BASELINE.value, _CONFIGS.value, _ROUNDS.value)
    print(f'load average at the end: {os.getloadavg()[0]:.2f}')
    return
  results = {}
  for name in _CONFIGS.value:
    results[name] = bench_config(name, _COMPARE.value)
  print_table(
    '| config | params | batch x s | dtype | step (ms) | examples/s | GFLOP/step '
    '| achieved TFLOP/s | matmul peak TFLOP/s | of peak |'
  )
  for name, r in results.items():
    print(format_row(name, r))
  if _COMPARE.value:
    print(f'\nInterleaved, {_ROUNDS.value} rounds, median [25th-75th percentile] step in ms:')
    print_table(
      '| config | parameters (both) | batch | dtype | aac_jax | PyTorch eager '
      '| PyTorch / aac_jax | aac_jax compile s (step + init) |'
    )
    for name, r in results.items():
      print(format_torch_row(name, r))
  if {'convnext_audio', 'convnext_frames'} <= set(results):
    audio, frames = results['convnext_audio']['step_s'], results['convnext_frames']['step_s']
    print(
      f'\nConvNeXt recipe step: {audio * 1e3:.1f} ms from audio, {frames * 1e3:.1f} ms from '
      f'stored frames: {audio / frames:.1f}x faster from frames'
    )
  print(f'load average at the end: {os.getloadavg()[0]:.2f}')


if __name__ == '__main__':
  app.run(main, flags_parser=config_path.parse_flags)
