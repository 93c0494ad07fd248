"""Per-device memory of the parameters and AdamW state on each mesh, read from XLA.

For each model config and mesh (`data x fsdp x tensor`) this compiles, and
never runs, the initialisation of the parameters and the optimizer state
with the shardings the logical-axis rules give
(`aac_jax.models.partitioning.mesh_shardings`, `DEFAULT_RULES`), and reads
the bytes each device holds from `compiled.memory_analysis()` (its output
size). `ideal` is the total divided by `fsdp x tensor`, the devices a
parameter can be split over; `by shardings` adds up the shard shapes of the
same layout, a check on XLA's number. The training step's own temporaries
are not in the table: training still replicates the parameters (issue 23).

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
from aac_jax.models import partitioning  # noqa: E402
from aac_jax.train import state  # noqa: E402
from configs import clotho, synthetic_demo  # noqa: E402


def define_flags() -> None:
  """The command's flags (defined when it runs, so importing it defines none)."""
  flags.DEFINE_list('configs', ['demo', 'base', 'large'], 'Configs: demo, base, large.')
  flags.DEFINE_list(
    'meshes', ['8x1x1', '2x4x1', '1x8x1', '2x2x2', '1x4x2'], 'Meshes as DATAxFSDPxTENSOR.'
  )
  flags.DEFINE_integer('vocab_size', 0, 'Vocabulary (0 = 262 for demo, else 4096).')


DEMO_VOCAB = 262  # The synthetic demo's vocabulary (tools/bench_train.py).
DEFAULT_VOCAB = 4096  # Divisible by any tensor axis up to 4096.
MIB = 2**20


def get_bench_config(name: str):
  """The training config benchmarked as `name`."""
  return {
    'demo': synthetic_demo.get_config,
    'base': lambda: clotho.get_config('model=base'),
    'large': lambda: clotho.get_config('model=large'),
  }[name]()


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
  return DEMO_VOCAB if name == 'demo' else DEFAULT_VOCAB


def measure(name: str, mesh_shape: tuple[int, int, int], vocab: int) -> dict:
  """Compiles the sharded initialisation of config `name` on one mesh; returns its bytes."""
  config = get_bench_config(name)
  mesh = jax.sharding.Mesh(
    np.asarray(jax.devices()[: math.prod(mesh_shape)]).reshape(mesh_shape),
    ('data', 'fsdp', 'tensor'),
  )
  model = models.Captioner(models.make_captioner_config(config.model, vocab))
  length = min(config.dataset.max_caption_tokens, config.model.max_decode_len)
  num_mels = int(config.frontend.n_mels)
  logical, shapes = models.param_axes(model, num_mels=num_mels, length=length)
  param_sharding = partitioning.mesh_shardings(logical, shapes, mesh)
  tx, _ = state.create_optimizer(config.optim, config.train.num_steps)
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
  return {
    'params': models.count_params(shapes),
    'total': total,
    'xla': compiled.memory_analysis().output_size_in_bytes,
    'by_shardings': layout_bytes(shapes, param_sharding) + layout_bytes(opt_shapes, opt_sharding),
    'ideal': total / (mesh_shape[1] * mesh_shape[2]),
    'compile_s': time.perf_counter() - start,
  }


def _replicated(mesh):
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def format_row(name: str, mesh_shape, r: dict) -> str:
  """One markdown row of the table."""
  mesh_text = 'x'.join(map(str, mesh_shape))
  return (
    f'| {name} | {r["params"] / 1e6:,.1f} M | {mesh_text} | {r["total"] / MIB:,.1f} '
    f'| {r["xla"] / MIB:,.1f} | {r["by_shardings"] / MIB:,.1f} | {r["ideal"] / MIB:,.1f} '
    f'| {r["xla"] / r["ideal"]:.3f} | {r["compile_s"]:.1f} |'
  )


def main(argv):
  del argv
  meshes = [parse_mesh(m) for m in flags.FLAGS.meshes]
  print(
    f'{jax.device_count()} x {jax.devices()[0].device_kind} ({jax.default_backend()}), '
    f'jax {jax.__version__}; parameters + AdamW state (float32), compiled, not run'
  )
  print(
    '| config | parameters | mesh (data x fsdp x tensor) | total MiB | per device MiB (XLA) '
    '| per device MiB (by shardings) | ideal MiB (total / fsdp x tensor) | XLA / ideal '
    '| compile s |'
  )
  print('|---|---|---|---|---|---|---|---|---|')
  for name in flags.FLAGS.configs:
    for shape in meshes:
      if math.prod(shape) > jax.device_count():
        raise app.UsageError(f'mesh {shape} needs {math.prod(shape)} devices')
      vocab = flags.FLAGS.vocab_size or default_vocab(name)
      print(format_row(name, shape, measure(name, shape, vocab)), flush=True)


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=config_path.parse_flags)
