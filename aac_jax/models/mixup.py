"""Mixup of a batch with itself, as the DCASE 2024 baseline trains (training only).

One draw per batch: each example is mixed with a partner example,
`lam * x + (1 - lam) * x[partner]`, on the encoder frames and on the
decoder's input embeddings; the targets stay the example's own.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Mix(NamedTuple):
  """One mixup draw for a (per-device) batch.

  Attributes:
    partner: `[batch]` int, the example each one is mixed with (never itself
      where the batch has more than one example).
    lam: `[]` float, weight of the example itself (>= 0.5).
  """

  partner: jax.Array
  lam: jax.Array


def sample_mix(rng: jax.Array, batch: int, alpha: float) -> Mix:
  """Draws a partner permutation and weight.

  The baseline draws `lam ~ Beta(alpha, alpha)`, keeps `max(lam, 1 - lam)`
  and a permutation without fixed points; here the permutation is a random
  cyclic shift by 1..batch-1 (also without fixed points).
  """
  lam_rng, shift_rng = jax.random.split(rng)
  lam = jax.random.beta(lam_rng, alpha, alpha)
  lam = jnp.maximum(lam, 1.0 - lam)
  shift = jax.random.randint(shift_rng, (), 1, max(batch, 2)) % max(batch, 1)
  return Mix(partner=(jnp.arange(batch) + shift) % batch, lam=lam)


def mix_values(x: jax.Array, mix: Mix) -> jax.Array:
  """`lam * x + (1 - lam) * x[partner]` over the leading axis."""
  lam = mix.lam.astype(x.dtype)
  return lam * x + (1.0 - lam) * x[mix.partner]


def mix_frames(frames: jax.Array, paddings: jax.Array, mix: Mix) -> tuple[jax.Array, jax.Array]:
  """Mixes frames; a frame is real where it is real in either clip (the longer length)."""
  return mix_values(frames, mix), paddings * paddings[mix.partner]
