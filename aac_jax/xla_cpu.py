"""The XLA:CPU settings aac_jax runs with, applied before JAX starts its CPU backend.

XLA:CPU in jaxlib 0.10 sends every convolution and matmul to YNNPACK
("individual" YNN fusions). On the conformer's training step that is the
slow path: the stride-2 subsampling convolution and its weight gradient run
at a fraction of what XLA's own (Eigen) kernels reach. Turning the two
individual fusion types off made the base-size step 2.4x faster on a 2-core
x86 CPU (`python tools/bench_train.py --compare_torch --configs=base`, see
the README's training-speed table); the demo size is not slower.

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
