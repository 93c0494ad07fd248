"""Auxiliary clip-level keyword head: which caption words does the audio contain?

Frame-level word probabilities from the encoder output are pooled over the
clip's real frames with linear-softmax pooling, `sum_t p_t^2 / sum_t p_t`
(a frame counts in proportion to its own confidence, so a short event in a
long clip still drives the clip-level probability). Trained with binary
cross-entropy against the set of words in the target caption, it gives the
encoder a direct, attention-free learning signal for what is in the clip;
the decoder is unchanged and the head is unused at inference.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from aac_jax.data import tokenizer
from aac_jax.models import partitioning

_EPS = 1e-6


class KeywordHead(nn.Module):
  """`[b, t, d]` encoder frames -> `[b, vocab]` clip-level word probabilities."""

  vocab_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, encoded: jax.Array, enc_paddings: jax.Array) -> jax.Array:
    """Float32 probabilities in (0, 1); padded frames are ignored."""
    logits = partitioning.dense(
      self.vocab_size, ('embed', 'vocab'), dtype=self.dtype, name='frame_logits'
    )(encoded)
    frame_probs = jax.nn.sigmoid(logits.astype(jnp.float32))
    real = (1.0 - enc_paddings.astype(jnp.float32))[..., None]
    numerator = jnp.sum(frame_probs**2 * real, axis=1)
    denominator = jnp.sum(frame_probs * real, axis=1)
    return numerator / jnp.maximum(denominator, _EPS)


def keyword_targets(targets: jax.Array, vocab_size: int) -> jax.Array:
  """Multi-hot `[b, vocab]` float32 of the word ids in `targets`.

  `targets` is `[b, len]`, or `[b, refs, len]` (the union of the clip's
  references). Special ids (pad, bos, eos, unk) are never keywords.
  """
  flat = targets.reshape(targets.shape[0], -1)
  hot = jax.nn.one_hot(flat, vocab_size, dtype=jnp.float32).max(axis=1)
  return hot.at[:, : len(tokenizer.SPECIAL_TOKENS)].set(0.0)


def keyword_loss_sum(probs: jax.Array, keywords: jax.Array) -> jax.Array:
  """Binary cross-entropy summed over examples and words (float32 scalar).

  Rows of `keywords` that are all zero (filler examples) add nothing.
  """
  probs = jnp.clip(probs, _EPS, 1.0 - _EPS)
  bce = -(keywords * jnp.log(probs) + (1.0 - keywords) * jnp.log1p(-probs))
  has_words = jnp.any(keywords > 0, axis=-1, keepdims=True).astype(jnp.float32)
  return jnp.sum(bce * has_words)
