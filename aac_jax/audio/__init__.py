"""aac_jax.audio."""
