"""aac_jax: automated audio captioning in JAX/Flax."""

import jax

# Random streams must not depend on how many devices share the work.
jax.config.update('jax_threefry_partitionable', True)

__version__ = '0.1.0'
