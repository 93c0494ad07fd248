"""Per-step bans on next tokens: specials, length, repeated n-grams and words.

Banned tokens get `NEG_INF` added log-probability; allowed tokens keep their
model log-probability (no renormalisation), so the score of a sequence is
its log-probability under the model.
"""

import jax
import jax.numpy as jnp

from aac_jax.decoding.settings import DecodeSettings

# Finite, so sums over banned candidates stay comparable and never NaN.
NEG_INF = -1e10


def is_banned(log_probs: jax.Array) -> jax.Array:
  """True where a (summed) log-probability carries a ban."""
  return log_probs < 0.5 * NEG_INF


def ngram_ban(seqs: jax.Array, step: jax.Array, n: int, vocab_size: int) -> jax.Array:
  """Tokens that would complete an n-gram already present.

  Args:
    seqs: `[rows, max_len]` tokens generated so far (positions < step).
    step: `[]` position of the next token.
    n: n-gram size (>= 1).
    vocab_size: number of token ids.

  Returns:
    bool `[rows, vocab]`.
  """
  rows, max_len = seqs.shape
  starts = jnp.arange(max_len - n + 1)  # [J] first position of an earlier n-gram
  offsets = jnp.arange(n - 1)  # [n - 1]
  windows = seqs[:, starts[:, None] + offsets[None, :]]  # [rows, J, n - 1]
  prefix_pos = jnp.clip(step - (n - 1) + offsets, 0, max_len - 1)
  prefix = seqs[:, prefix_pos]  # [rows, n - 1] the last n - 1 tokens
  match = jnp.all(windows == prefix[:, None, :], axis=-1)  # [rows, J]
  # The earlier n-gram must be complete before `step`.
  hit = match & (starts <= step - n)[None, :]
  following = seqs[:, starts + n - 1]  # [rows, J]
  row_ids = jnp.broadcast_to(jnp.arange(rows)[:, None], following.shape)
  counts = (
    jnp.zeros((rows, vocab_size), jnp.int32).at[row_ids, following].add(hit.astype(jnp.int32))
  )
  return counts > 0


def repeat_ban(seqs: jax.Array, step: jax.Array, repeat_ban_mask: jax.Array) -> jax.Array:
  """Content tokens already generated: `[rows, max_len]` -> bool `[rows, vocab]`."""
  rows, max_len = seqs.shape
  seen = jnp.broadcast_to((jnp.arange(max_len) < step)[None, :], seqs.shape).astype(jnp.int32)
  row_ids = jnp.broadcast_to(jnp.arange(rows)[:, None], seqs.shape)
  counts = jnp.zeros((rows, repeat_ban_mask.shape[0]), jnp.int32).at[row_ids, seqs].add(seen)
  return (counts > 0) & repeat_ban_mask[None, :]


def apply_constraints(
  log_probs: jax.Array,
  seqs: jax.Array,
  step: jax.Array,
  settings: DecodeSettings,
  repeat_ban_mask: jax.Array | None = None,
) -> jax.Array:
  """Bans the tokens `settings` forbids at this step.

  PAD and BOS are never generated; EOS is banned before `min_len` words and
  forced at the last position (`max_len - 1`), so every output ends with EOS.

  Args:
    log_probs: `[rows, vocab]` float32 next-token log-probabilities.
    seqs: `[rows, max_len]` int32 tokens so far (valid before `step`).
    step: `[]` int32 position of the token being chosen.
    settings: decoding settings (static).
    repeat_ban_mask: bool `[vocab]`, tokens that may not repeat; used only if
      `settings.ban_repeated_content_words`.

  Returns:
    `[rows, vocab]` log-probabilities with `NEG_INF` added where banned.
  """
  vocab_size = log_probs.shape[-1]
  token_ids = jnp.arange(vocab_size)[None, :]
  eos = token_ids == settings.eos_id
  banned = (token_ids == settings.pad_id) | (token_ids == settings.bos_id)
  banned = banned | (eos & (step < settings.min_len))
  banned = banned | (~eos & (step >= settings.max_len - 1))
  if settings.no_repeat_ngram_size > 0:
    banned = banned | ngram_ban(seqs, step, settings.no_repeat_ngram_size, vocab_size)
  if settings.ban_repeated_content_words:
    if repeat_ban_mask is None:
      raise ValueError('ban_repeated_content_words needs a repeat_ban_mask')
    banned = banned | repeat_ban(seqs, step, repeat_ban_mask)
  return log_probs + jnp.where(banned, NEG_INF, 0.0)
