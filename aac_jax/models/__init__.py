"""aac_jax.models."""
