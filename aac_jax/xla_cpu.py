"""The XLA:CPU settings aac_jax runs with, applied before JAX starts its CPU backend.

Two settings, both measured on the training step
(`python tools/bench_train.py --compare_torch`, `tools/bench_train_parts.py`):
XLA flags (below) and the threefry random-bit lowering (`unroll_threefry_on_cpu`).

XLA:CPU in jaxlib 0.10 sends every convolution and matmul to YNNPACK
("individual" YNN fusions). On the conformer's training step that is the
slow path: the stride-2 subsampling convolution and its weight gradient run
at a fraction of what XLA's own (Eigen) kernels reach. Turning the two
individual fusion types off made the base-size step 2.4x faster on a 2-core
x86 CPU (`python tools/bench_train.py --compare_torch --configs=base`, see
the training-speed table in docs/benchmarks.md); the demo size is not slower.

`apply()` adds the flag to `XLA_FLAGS` unless the user already set that flag
(theirs wins). It only takes effect if it runs before JAX initialises its
backends: `import aac_jax` calls it, so import aac_jax before the first JAX
computation. The flag exists in the pinned jaxlib (setup.py); other jaxlib
versions are left alone, since XLA aborts on an unknown flag.
"""

import os

YNN_FLAG = 'xla_cpu_experimental_ynn_fusion_type'
FAST_FLAGS = (f'--{YNN_FLAG}=-individual_convolution,-individual_dot',)
KNOWN_JAXLIB = ('0.10.',)  # Versions whose XLA has YNN_FLAG.


def _jaxlib_version() -> str:
  from jaxlib import version  # noqa: PLC0415 (does not start a backend)

  return version.__version__


def flags_with_defaults(xla_flags: str, jaxlib_version: str) -> str:
  """`xla_flags` (the value of `XLA_FLAGS`) with `FAST_FLAGS` added where they apply."""
  if YNN_FLAG in xla_flags or not jaxlib_version.startswith(KNOWN_JAXLIB):
    return xla_flags
  return ' '.join(part for part in (xla_flags.strip(), *FAST_FLAGS) if part)


def apply(environ=os.environ) -> None:
  """Sets `XLA_FLAGS` in `environ` (see the module docstring)."""
  environ['XLA_FLAGS'] = flags_with_defaults(environ.get('XLA_FLAGS', ''), _jaxlib_version())


UNROLL_MIN_SIZE = 1 << 16  # Counters per threefry call from which the CPU lowering is unrolled.


def unroll_threefry_on_cpu() -> bool:
  """Lowers large threefry2x32 calls on CPU with the rounds unrolled, as JAX does on GPU/TPU.

  JAX lowers the threefry hash behind `jax.random` on CPU as a 5-step
  `fori_loop` (a smaller program); XLA:CPU then runs every step as its own
  pass over the whole array of counters. Unrolled, the 20 rounds fuse into
  one loop with the consumer: the same bits (the same function, only the
  loop is unrolled), 4x faster dropout on a `[32, 4, 250, 250]` attention
  mask (99 -> 25 ms; PyTorch's dropout 67 ms) on a 2-core x86 CPU; the
  base-size training step went from 0.77x to 0.90x of PyTorch's speed.
  Unrolling costs compile time at every call site, so calls with fewer than
  `UNROLL_MIN_SIZE` counters (SpecAugment's draws, small initialisers) keep
  the loop: the demo's step compiles as before.

  Uses JAX's own two lowerings from `jax._src`; returns False (and changes
  nothing) where this JAX does not have them.
  """
  try:
    from jax._src.interpreters import mlir  # noqa: PLC0415
    from jax._src.random import threefry2x32  # noqa: PLC0415

    unrolled = threefry2x32._threefry2x32_lowering_rule  # JAX's GPU/TPU lowering.
    rolled = threefry2x32._threefry2x32_cpu_lowering_rule
    primitive = threefry2x32.threefry2x32_p
  except (ImportError, AttributeError):
    return False

  def lowering(ctx, *args):
    counters = ctx.avals_in[2].size  # Inputs: two key words, two counter arrays.
    return (unrolled if counters >= UNROLL_MIN_SIZE else rolled)(ctx, *args)

  mlir.register_lowering(primitive, lowering, platform='cpu')
  return True
