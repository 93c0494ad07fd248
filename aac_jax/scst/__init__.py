"""aac_jax.scst."""
