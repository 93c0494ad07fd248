"""Checkpoint converters: published PyTorch files -> aac_jax parameter folders.

`registry.get_converter(name)` gives a converter; `store` reads and writes
the converted folder (safetensors + JSON settings, no torch needed to read).
torch is imported only by `torch_file`, from the `convert` extra.
"""
