"""Per-device memory of the parameters and AdamW state on each mesh, read from XLA.

For each model config and mesh (`data x fsdp x tensor`) this compiles, and
never runs, the initialisation of the parameters and the optimizer state
with the shardings the logical-axis rules give
(`aac_jax.models.partitioning.mesh_shardings`, `DEFAULT_RULES`), and reads
the bytes each device holds from `compiled.memory_analysis()` (its output
size). `ideal` is the total divided by `fsdp x tensor`, the devices a
parameter can be split over; `by shardings` adds up the shard shapes of the
same layout, a check on XLA's number. With `--step` (default) it also
compiles the real cross-entropy train step of the config on that mesh
(`aac_jax.train.steps.make_train_step`, the config's global batch, never
run) and reports its per-device temporaries (`temp_size_in_bytes`):
activations kept for the backward pass, gathered parameters, gradients.

  python tools/bench_memory.py                          # demo, base and large on 8 devices
  python tools/bench_memory.py --configs=large --meshes=8x1x1,1x8x1

On a CPU it asks XLA for 8 simulated devices unless `XLA_FLAGS` already
sets `--xla_force_host_platform_device_count`; `large` is
`configs/clotho.py:model=large` (about 1.0 B parameters).
"""

import math
import os
import pathlib
import sys
import time

if 'xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
  )

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

_REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_REPO))

from aac_jax import config_path, models  # noqa: E402
from aac_jax.models import partitioning, pretrained_setup  # noqa: E402
from aac_jax.train import parallel, state, steps, trainer  # noqa: E402
from configs import clotho, clotho_llm, synthetic_demo  # noqa: E402


def define_flags() -> None:
  """The command's flags (defined when it runs, so importing it defines none)."""
  flags.DEFINE_list(
    'configs',
    ['demo', 'base', 'large'],
    'Configs: demo, base, large, qwen1.5b_lora, qwen7b_lora (+ _bf16: the frozen base in '
    'bfloat16, model.llm.base_dtype).',
  )
  flags.DEFINE_list(
    'meshes', ['8x1x1', '2x4x1', '1x8x1', '2x2x2', '1x4x2'], 'Meshes as DATAxFSDPxTENSOR.'
  )
  flags.DEFINE_integer('vocab_size', 0, 'Vocabulary (0 = 262 for demo, else 4096).')
  flags.DEFINE_bool('step', True, 'Also compile the train step and report its temporaries.')
  flags.DEFINE_integer('batch_size', 0, 'Global batch of the step (0 = the config value).')


DEMO_VOCAB = 262  # The synthetic demo's vocabulary (tools/bench_train.py).
# configs/clotho_llm.py (LoRA r8 on q, v; base frozen, so no AdamW state for it) with the
# decoder sizes of Qwen2.5-1.5B / -7B's config.json: hidden, layers, heads, kv heads,
# head_dim, intermediate, tied, vocabulary.
LLM_SIZES = {
  'qwen1.5b_lora': (1536, 28, 12, 2, 128, 8960, True, 151936),
  'qwen7b_lora': (3584, 28, 28, 4, 128, 18944, False, 152064),
}
BF16_SUFFIX = '_bf16'  # `qwen7b_lora_bf16`: the frozen base stored in bfloat16.
DEFAULT_VOCAB = 4096  # Divisible by any tensor axis up to 4096.
MIB = 2**20


def get_bench_config(name: str):
  """The training config benchmarked as `name`."""
  return {
    'demo': synthetic_demo.get_config,
    'base': lambda: clotho.get_config('model=base'),
    'large': lambda: clotho.get_config('model=large'),
  }.get(name, lambda: _llm_config(name))()


def _llm_config(name: str):
  config = clotho_llm.get_config()
  llm = config.model.llm
  if name.endswith(BF16_SUFFIX):
    name, llm.base_dtype = name[: -len(BF16_SUFFIX)], 'bfloat16'
  hidden, layers, heads, kv_heads, head_dim, inner, tied, _ = LLM_SIZES[name]
  llm.hidden_size, llm.num_layers, llm.num_heads, llm.num_kv_heads = hidden, layers, heads, kv_heads
  llm.head_dim, llm.intermediate_size, llm.tie_embeddings = head_dim, inner, tied
  llm.prompt_ids = [1, 2, 3]
  return config


def parse_mesh(text: str) -> tuple[int, int, int]:
  """`'2x4x1'` -> `(2, 4, 1)`."""
  sizes = tuple(int(x) for x in text.lower().split('x'))
  if len(sizes) != 3 or min(sizes) < 1:
    raise app.UsageError(f'--meshes: {text!r} is not DATAxFSDPxTENSOR with sizes >= 1')
  return sizes


def layout_bytes(shapes, shardings) -> int:
  """Bytes one device holds of a tree laid out by `shardings` (the largest shard)."""
  total = 0
  for shape, sharding in zip(jax.tree.leaves(shapes), jax.tree.leaves(shardings), strict=True):
    total += math.prod(sharding.shard_shape(shape.shape)) * shape.dtype.itemsize
  return total


def default_vocab(name: str) -> int:
  """The vocabulary benchmarked with config `name` when `--vocab_size` is 0."""
  name = name.removesuffix(BF16_SUFFIX)
  if name in LLM_SIZES:
    return LLM_SIZES[name][-1]
  return DEMO_VOCAB if name == 'demo' else DEFAULT_VOCAB


def measure(
  name: str, mesh_shape: tuple[int, int, int], vocab: int, step: bool = False, batch_size: int = 0
) -> dict:
  """Compiles the sharded initialisation of config `name` on one mesh; returns its bytes."""
  config = get_bench_config(name)
  mesh = jax.sharding.Mesh(
    np.asarray(jax.devices()[: math.prod(mesh_shape)]).reshape(mesh_shape),
    ('data', 'fsdp', 'tensor'),
  )
  model_cfg = models.make_captioner_config(config.model, vocab)
  model = models.Captioner(model_cfg)
  length = min(config.dataset.max_caption_tokens, config.model.max_decode_len)
  num_mels = int(config.frontend.n_mels)
  logical, shapes = models.param_axes(model, num_mels=num_mels, length=length)
  param_sharding = partitioning.mesh_shardings(logical, shapes, mesh)
  tx, _ = state.create_optimizer(config.optim, config.train.num_steps)
  tx = pretrained_setup.freeze_optimizer(tx, model_cfg)  # Frozen parameters: no AdamW state.
  opt_shapes = jax.eval_shape(tx.init, shapes)
  opt_sharding = partitioning.mirrored_shardings(opt_shapes, shapes, param_sharding, mesh)

  def init(rng):
    params = models.init_params(model, rng, num_mels=num_mels, length=length)
    return params, tx.init(params)

  start = time.perf_counter()
  jitted = jax.jit(init, out_shardings=(param_sharding, opt_sharding))
  compiled = jitted.lower(jax.random.key(0)).compile()
  total = layout_bytes(shapes, jax.tree.map(lambda _: _replicated(mesh), shapes))
  total += layout_bytes(opt_shapes, jax.tree.map(lambda _: _replicated(mesh), opt_shapes))
  temp = step_temporaries(config, model, mesh, vocab, batch_size) if step else None
  return {
    'temp': temp,
    'params': models.count_params(shapes),
    'total': total,
    'xla': compiled.memory_analysis().output_size_in_bytes,
    'by_shardings': layout_bytes(shapes, param_sharding) + layout_bytes(opt_shapes, opt_sharding),
    'ideal': total / (mesh_shape[1] * mesh_shape[2]),
    'compile_s': time.perf_counter() - start,
  }


def step_temporaries(config, model, mesh, vocab: int, batch_size: int) -> int:
  """Per-device temporary bytes of the compiled CE train step (compiled, never run)."""
  config = config.copy_and_resolve_references()
  config.mesh.update(dict(zip(parallel.MESH_AXES, mesh.devices.shape, strict=True)))
  tx, schedule = state.create_optimizer(config.optim, config.train.num_steps)
  sharding = trainer.state_sharding_for(config, model, tx, mesh)
  step = steps.make_train_step(
    mesh,
    sharding,
    model=model,
    tx=tx,
    schedule=schedule,
    frontend_cfg=config.frontend,
    sample_rate=int(config.dataset.sample_rate),
    label_smoothing=float(config.optim.label_smoothing),
  )
  length = min(config.dataset.max_caption_tokens, config.model.max_decode_len)
  shapes = jax.eval_shape(
    lambda: state.create_train_state(
      models.init_params(
        model, jax.random.key(0), num_mels=int(config.frontend.n_mels), length=length
      ),
      tx,
    )
  )
  abstract_state = jax.tree.map(
    lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), shapes, sharding
  )
  b = batch_size or int(config.train.batch_size)
  samples = int(config.dataset.max_audio_seconds * config.dataset.sample_rate)
  batch_sharding = parallel.batch_sharding(mesh)
  batch = {
    'audio': jax.ShapeDtypeStruct((b, samples), np.float32, sharding=batch_sharding),
    'audio_paddings': jax.ShapeDtypeStruct((b, samples), np.float32, sharding=batch_sharding),
    'targets': jax.ShapeDtypeStruct((b, length), np.int32, sharding=batch_sharding),
  }
  compiled = step.lower(abstract_state, batch, jax.random.key(0)).compile()
  return int(compiled.memory_analysis().temp_size_in_bytes)


def _replicated(mesh):
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def format_row(name: str, mesh_shape, r: dict) -> str:
  """One markdown row of the table."""
  mesh_text = 'x'.join(map(str, mesh_shape))
  return (
    f'| {name} | {r["params"] / 1e6:,.1f} M | {mesh_text} | {r["total"] / MIB:,.1f} '
    f'| {r["xla"] / MIB:,.1f} | {r["by_shardings"] / MIB:,.1f} | {r["ideal"] / MIB:,.1f} '
    f'| {r["xla"] / r["ideal"]:.3f} | {_mib(r["temp"])} | {r["compile_s"]:.1f} |'
  )


def _mib(value) -> str:
  return '-' if value is None else f'{value / MIB:,.1f}'


def main(argv):
  del argv
  meshes = [parse_mesh(m) for m in flags.FLAGS.meshes]
  print(
    f'{jax.device_count()} x {jax.devices()[0].device_kind} ({jax.default_backend()}), '
    f"jax {jax.__version__}; parameters + AdamW state (float32; a _bf16 config's frozen "
    'base bfloat16), compiled, not run'
  )
  print(
    '| config | parameters | mesh (data x fsdp x tensor) | total MiB | per device MiB (XLA) '
    '| per device MiB (by shardings) | ideal MiB (total / fsdp x tensor) | XLA / ideal '
    '| train step temporaries MiB per device | compile s |'
  )
  print('|---|---|---|---|---|---|---|---|---|---|')
  for name in flags.FLAGS.configs:
    for shape in meshes:
      if math.prod(shape) > jax.device_count():
        raise app.UsageError(f'mesh {shape} needs {math.prod(shape)} devices')
      vocab = flags.FLAGS.vocab_size or default_vocab(name)
      result = measure(name, shape, vocab, flags.FLAGS.step, flags.FLAGS.batch_size)
      print(format_row(name, shape, result), flush=True)


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=config_path.parse_flags)
