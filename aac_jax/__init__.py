"""aac_jax: automated audio captioning in JAX/Flax."""

from aac_jax import xla_cpu

xla_cpu.apply()  # Before JAX starts a backend (see aac_jax/xla_cpu.py).

import jax  # noqa: E402

xla_cpu.unroll_threefry_on_cpu()

# Random streams must not depend on how many devices share the work.
jax.config.update('jax_threefry_partitionable', True)

__version__ = '0.1.0'
