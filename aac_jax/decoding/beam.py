"""Beam search as a `lax.while_loop` over a small state.

Rows are laid out example-major: row `i * beam_size + j` is beam `j` of
example `i` (`steps.repeat_rows`). Each step extends the live beams by every
token, keeps the best `2 * beam_size` candidates (so at least `beam_size` do
not end), moves those ending in EOS to the finished set with the score
`log p / ((5 + len) / 6) ** alpha` (`len` counts EOS) and keeps the best
`beam_size` others live. The loop stops early once, for every example, no
live beam can still beat the worst of `beam_size` finished ones.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from aac_jax.decoding.constraints import NEG_INF, apply_constraints, is_banned
from aac_jax.decoding.search import DecodeOutput, last_tokens
from aac_jax.decoding.settings import DecodeSettings
from aac_jax.decoding.steps import StepFn


class BeamState(NamedTuple):
  step: jax.Array  # [] int32, position being filled
  live_seqs: jax.Array  # [batch, beam, max_len] int32
  live_log_probs: jax.Array  # [batch, beam, max_len] float32, per token
  live_scores: jax.Array  # [batch, beam] float32 summed log p (NEG_INF: empty)
  fin_seqs: jax.Array  # [batch, beam, max_len] int32
  fin_log_probs: jax.Array  # [batch, beam, max_len] float32
  fin_scores: jax.Array  # [batch, beam] float32 normalised, descending (NEG_INF: empty)
  cache: Any  # leaves [batch * beam, ...] or scalars


def length_penalty(length: jax.Array, alpha: float) -> jax.Array:
  """GNMT length penalty `((5 + length) / 6) ** alpha`."""
  return ((5.0 + length) / 6.0) ** alpha


def gather_beams(x: jax.Array, indices: jax.Array) -> jax.Array:
  """Per-example gather: `[b, n, ...]`, `[b, m]` -> `[b, m, ...]`."""
  return jax.vmap(lambda row, idx: row[idx])(x, indices)


def gather_cache(cache: Any, indices: jax.Array) -> Any:
  """Reorders cache rows `[b * beam, ...]` by beam `indices` `[b, beam]`."""
  batch, beam = indices.shape

  def gather(leaf):
    if leaf.ndim == 0:
      return leaf
    rows = leaf.reshape((batch, beam) + leaf.shape[1:])
    return gather_beams(rows, indices).reshape(leaf.shape)

  return jax.tree.map(gather, cache)


def _init_state(cache: Any, batch: int, beam: int, settings: DecodeSettings) -> BeamState:
  seqs = jnp.full((batch, beam, settings.max_len), settings.pad_id, jnp.int32)
  log_probs = jnp.zeros((batch, beam, settings.max_len), jnp.float32)
  # Only beam 0 is live at first: the others would duplicate it.
  first = jnp.where(jnp.arange(beam) == 0, 0.0, NEG_INF)
  return BeamState(
    step=jnp.zeros((), jnp.int32),
    live_seqs=seqs,
    live_log_probs=log_probs,
    live_scores=jnp.broadcast_to(first, (batch, beam)),
    fin_seqs=seqs,
    fin_log_probs=log_probs,
    fin_scores=jnp.full((batch, beam), NEG_INF, jnp.float32),
    cache=cache,
  )


def _running(state: BeamState, settings: DecodeSettings) -> jax.Array:
  """False once every example's top beams are final (or max_len is reached)."""
  alpha, max_len = settings.length_penalty, settings.max_len
  # Log-probs only fall, so a live beam's best final score uses the largest
  # penalty over its possible lengths (an end point: the penalty is monotone).
  best_penalty = jnp.maximum(
    length_penalty(state.step + 1.0, alpha), length_penalty(max_len, alpha)
  )
  best_live = state.live_scores[:, 0] / best_penalty  # [batch]
  settled = is_banned(state.live_scores[:, 0]) | (state.fin_scores[:, -1] >= best_live)
  return (state.step < max_len) & ~jnp.all(settled)


def _extend(state, step_fn, settings, repeat_ban_mask):
  """Scores every one-token extension; returns the best `2 * beam` candidates.

  Returns:
    scores `[b, 2k]` (summed, with bans), seqs `[b, 2k, max_len]`, per-token
    log-probs `[b, 2k, max_len]`, source beams `[b, 2k]` and the new cache.
  """
  batch, beam, max_len = state.live_seqs.shape
  flat_seqs = state.live_seqs.reshape(batch * beam, max_len)
  logits, cache = step_fn(last_tokens(flat_seqs, state.step, settings.bos_id), state.cache)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [b * k, vocab]
  vocab = log_probs.shape[-1]
  allowed = apply_constraints(log_probs, flat_seqs, state.step, settings, repeat_ban_mask)
  candidates = state.live_scores[:, :, None] + allowed.reshape(batch, beam, vocab)  # [b, k, v]
  scores, flat_ids = lax.top_k(candidates.reshape(batch, beam * vocab), 2 * beam)  # [b, 2k]
  source, token = flat_ids // vocab, flat_ids % vocab  # [b, 2k]
  token_log_probs = jnp.take_along_axis(log_probs.reshape(batch, beam * vocab), flat_ids, axis=1)
  here = jnp.arange(max_len) == state.step  # [max_len]
  seqs = jnp.where(here, token[..., None], gather_beams(state.live_seqs, source))
  seq_log_probs = jnp.where(
    here, token_log_probs[..., None], gather_beams(state.live_log_probs, source)
  )
  return scores, seqs, seq_log_probs, source, cache


def _beam_step(state, step_fn, settings, repeat_ban_mask) -> BeamState:
  beam = state.live_scores.shape[1]
  scores, seqs, seq_log_probs, source, cache = _extend(state, step_fn, settings, repeat_ban_mask)
  valid = ~is_banned(scores)  # [b, 2k]
  ended = jnp.take(seqs, state.step, axis=2) == settings.eos_id  # [b, 2k]
  # Live: the best `beam` candidates that did not end.
  live_scores, keep = lax.top_k(jnp.where(valid & ~ended, scores, NEG_INF), beam)  # [b, k]
  # Finished: merge the new endings into the finished set by normalised score.
  normalised = scores / length_penalty(state.step + 1.0, settings.length_penalty)
  new_fin = jnp.where(valid & ended, normalised, NEG_INF)  # [b, 2k]
  fin_scores, fin_keep = lax.top_k(jnp.concatenate([state.fin_scores, new_fin], axis=1), beam)
  return BeamState(
    step=state.step + 1,
    live_seqs=gather_beams(seqs, keep),
    live_log_probs=gather_beams(seq_log_probs, keep),
    live_scores=live_scores,
    fin_seqs=gather_beams(jnp.concatenate([state.fin_seqs, seqs], axis=1), fin_keep),
    fin_log_probs=gather_beams(
      jnp.concatenate([state.fin_log_probs, seq_log_probs], axis=1), fin_keep
    ),
    fin_scores=fin_scores,
    cache=gather_cache(cache, gather_beams(source, keep)),
  )


def beam_search(
  step_fn: StepFn,
  cache: Any,
  batch_size: int,
  settings: DecodeSettings,
  repeat_ban_mask: jax.Array | None = None,
  return_all_beams: bool = False,
) -> DecodeOutput:
  """Beam search with length penalty, length limits and repetition bans.

  Args:
    step_fn: `(tokens [b * k, 1], cache) -> (logits [b * k, vocab], cache)`
      where k = `settings.beam_size`; build it from encoder outputs repeated
      with `steps.repeat_rows(x, k)`.
    cache: initial cache for `b * k` rows.
    batch_size: examples `b`.
    settings: `beam_size`, `length_penalty`, `max_len`, `min_len`,
      `no_repeat_ngram_size`, `ban_repeated_content_words`, token ids.
    repeat_ban_mask: bool `[vocab]` (see `settings.make_repeat_ban_mask`).
    return_all_beams: return every finished beam, best first.

  Returns:
    `DecodeOutput` of the best beam (`tokens` `[b, max_len]`, `scores`
    `[b]`), or of all beams (`[b, k, max_len]`, `[b, k]`).
  """
  state = _init_state(cache, batch_size, settings.beam_size, settings)
  state = lax.while_loop(
    lambda s: _running(s, settings),
    lambda s: _beam_step(s, step_fn, settings, repeat_ban_mask),
    state,
  )
  # Every beam alive at max_len - 1 had to end, so an example without a
  # finished beam only arises if bans killed all live beams: fall back to them.
  has_fin = ~is_banned(state.fin_scores[:, :1])  # [b, 1]
  tokens = jnp.where(has_fin[..., None], state.fin_seqs, state.live_seqs)
  log_probs = jnp.where(has_fin[..., None], state.fin_log_probs, state.live_log_probs)
  scores = jnp.where(has_fin, state.fin_scores, state.live_scores)
  if return_all_beams:
    return DecodeOutput(tokens, log_probs, scores)
  return DecodeOutput(tokens[:, 0], log_probs[:, 0], scores[:, 0])
