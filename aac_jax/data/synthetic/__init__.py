"""aac_jax.data.synthetic."""
