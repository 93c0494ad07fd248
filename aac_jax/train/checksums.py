"""Checksums of a checkpoint's arrays: recorded at save, checked at restore.

Orbax (0.12.8) keeps no checksum of the array data it writes: a checkpoint
whose array file had bytes flipped on disk (same size) restores without a
word, with garbage values (one parameter at 8e37). So every save records,
per array of the train state, a 32-bit checksum computed on the device
(`fingerprint`), and every restore recomputes it on what was read
(`verify`): a difference names the array and makes the checkpoint
unreadable, so that the next older one is used (`aac_jax.train.
checkpointing.newest_readable`).

The checksum of an array is the wrap-around sum of its bits, as 32-bit
words, each times an odd constant of its position: any change of one word,
and any swap of two, changes it. It runs where the array lives (any
sharding, every process) and costs one reduction per array.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_MULTIPLIER = np.uint32(2654435761)  # Knuth's multiplicative hash constant.


def _words(x: jax.Array) -> jax.Array:
  """The bits of `x` as uint32 words `[n]` (narrower types widened, wider split)."""
  x = jnp.ravel(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  size = x.dtype.itemsize
  if size == 4:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  if size < 4:
    unsigned = {1: jnp.uint8, 2: jnp.uint16}[size]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
  return jnp.ravel(jax.lax.bitcast_convert_type(x, jnp.uint32))


def _checksum(x: jax.Array) -> jax.Array:
  words = _words(x)
  weights = jnp.arange(words.size, dtype=jnp.uint32) * _MULTIPLIER | jnp.uint32(1)
  return jnp.sum(words * weights, dtype=jnp.uint32)


@jax.jit
def _checksums(leaves: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
  return tuple(_checksum(x) for x in leaves)


def fingerprint(tree: Any) -> dict[str, int]:
  """`{array path: checksum}` of every array in `tree` (every process calls it)."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  sums = jax.device_get(_checksums(tuple(jnp.asarray(x) for _, x in flat)))
  return {jax.tree_util.keystr(path): int(s) for (path, _), s in zip(flat, sums, strict=True)}


class ChecksumMismatchError(ValueError):
  """Arrays read back differ from what was saved (the message names the first)."""


def verify(tree: Any, recorded: dict[str, int], what: str) -> None:
  """Checks `tree` against the checksums `fingerprint` recorded at save.

  Args:
    tree: the restored arrays.
    recorded: `fingerprint` of the same tree at save time.
    what: names the tree in the message ('checkpoint step 4 params').

  Raises:
    ChecksumMismatchError: an array's checksum differs, or an array has none.
  """
  found = fingerprint(tree)
  bad = [key for key, value in found.items() if recorded.get(key) != value]
  if bad:
    raise ChecksumMismatchError(
      f'{what}: {len(bad)} of {len(found)} arrays differ from the checksums recorded at save '
      f'(first: {bad[0]}): the files changed on disk after the save (flipped bits, an overwrite)'
    )
