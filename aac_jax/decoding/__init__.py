"""aac_jax.decoding."""
