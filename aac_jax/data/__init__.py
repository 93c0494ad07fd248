"""aac_jax.data."""
