"""aac_jax.metrics."""
