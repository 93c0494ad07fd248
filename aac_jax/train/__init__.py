"""aac_jax.train."""
