"""CoNeTTE's beam search (`method='conette_beam'`) as a `lax.while_loop`.

Facts from the reference (conette 0.3.2, `conette/nn/decoding/beam.py`
`generate`, as the published model calls it): each clip starts with
`beam_size` beams; at step i the live beams of a clip propose their best
`n_live` extensions together (at step 0 only the first beam proposes), by
summed log-probability; the live beams, in order, take those proposals best
first; a beam whose new token is EOS, or that reaches `max_pred_size` tokens,
retires with the score `sum log p / (i + 1)` (its mean over the tokens it
made, EOS included) and the clip has one beam fewer. The caption is the
retired beam with the best score. Bans act on the logits before the
log-softmax (so the allowed tokens are renormalised): EOS before
`min_pred_size` tokens, and with a forbid-repetition mask every masked token
already in the beam, its first (task) token included.

Here rows are example-major (`steps.repeat_rows`), `max_len` =
`max_pred_size + 1` holds the caption plus an EOS, and beams live in fixed
slots (a retired slot stops proposing). A caption cut at `max_pred_size`
tokens without EOS gets one EOS appended (scored 0), so outputs end with EOS
as everywhere in aac_jax.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from aac_jax.decoding.beam import gather_beams, gather_cache
from aac_jax.decoding.constraints import ngram_ban, repeat_ban
from aac_jax.decoding.search import DecodeOutput, last_tokens
from aac_jax.decoding.settings import DecodeSettings
from aac_jax.decoding.steps import StepFn


class ConetteBeamState(NamedTuple):
  step: jax.Array  # [] int32, position being filled
  seqs: jax.Array  # [batch, beam, max_len] int32
  log_probs: jax.Array  # [batch, beam, max_len] float32, model log p per token (no bans)
  sums: jax.Array  # [batch, beam] float32 summed (banned, renormalised) log p
  live: jax.Array  # [batch, beam] bool
  fin_seqs: jax.Array  # [batch, beam, max_len] int32
  fin_log_probs: jax.Array  # [batch, beam, max_len] float32
  fin_scores: jax.Array  # [batch, beam] float32 mean log p (-inf: not retired)
  cache: Any  # leaves [batch * beam, ...] or scalars


def _banned_logits(logits, seqs, step, settings, repeat_ban_mask) -> jax.Array:
  """Logits `[rows, vocab]` with -inf where `settings` forbids the next token."""
  vocab = logits.shape[-1]
  token_ids = jnp.arange(vocab)[None, :]
  banned = (token_ids == settings.eos_id) & (step < settings.min_len)
  if settings.ban_repeated_content_words:
    if repeat_ban_mask is None:
      raise ValueError('ban_repeated_content_words needs a repeat_ban_mask')
    first = (token_ids == settings.bos_id) & repeat_ban_mask[None, :]
    banned = banned | first | repeat_ban(seqs, step, repeat_ban_mask)
  if settings.no_repeat_ngram_size > 0:
    banned = banned | ngram_ban(seqs, step, settings.no_repeat_ngram_size, vocab)
  return jnp.where(banned, -jnp.inf, logits)


def _proposals(state: ConetteBeamState, step_fn: StepFn, settings, repeat_ban_mask):
  """Each live slot's new (source slot, token, summed score) and the step's cache.

  Returns:
    source `[b, k]`, token `[b, k]`, score `[b, k]`, per-token model log p
    `[b, k, vocab]` and the new cache.
  """
  batch, beam, max_len = state.seqs.shape
  flat = state.seqs.reshape(batch * beam, max_len)
  logits, cache = step_fn(last_tokens(flat, state.step, settings.bos_id), state.cache)
  logits = logits.astype(jnp.float32)
  vocab = logits.shape[-1]
  model_log_probs = jax.nn.log_softmax(logits, axis=-1).reshape(batch, beam, vocab)
  allowed = jax.nn.log_softmax(
    _banned_logits(logits, flat, state.step, settings, repeat_ban_mask), axis=-1
  )
  # At step 0 every beam holds the same prefix: only the first one proposes.
  proposing = state.live & ((state.step > 0) | (jnp.arange(beam) == 0))[None, :]
  candidates = jnp.where(
    proposing[..., None], state.sums[..., None] + allowed.reshape(batch, beam, vocab), -jnp.inf
  )
  scores, flat_ids = lax.top_k(candidates.reshape(batch, beam * vocab), beam)  # [b, k] best first
  # The j-th live slot (in slot order) takes the j-th best proposal.
  rank = jnp.clip(jnp.cumsum(state.live, axis=1) - 1, 0, beam - 1)
  take = lambda x: jnp.take_along_axis(x, rank, axis=1)  # noqa: E731
  source = jnp.where(state.live, take(flat_ids // vocab), jnp.arange(beam)[None, :])
  return source, take(flat_ids % vocab), take(scores), model_log_probs, cache


def _step(state: ConetteBeamState, step_fn, settings, repeat_ban_mask) -> ConetteBeamState:
  source, token, score, model_log_probs, cache = _proposals(
    state, step_fn, settings, repeat_ban_mask
  )
  live = state.live
  here = (jnp.arange(state.seqs.shape[-1]) == state.step) & live[..., None]  # [b, k, L]
  token_log_prob = jnp.take_along_axis(gather_beams(model_log_probs, source), token[..., None], -1)
  seqs = jnp.where(here, token[..., None], gather_beams(state.seqs, source))
  log_probs = jnp.where(here, token_log_prob, gather_beams(state.log_probs, source))
  sums = jnp.where(live, score, state.sums)
  last_step = state.step == settings.max_len - 2
  retiring = live & ((token == settings.eos_id) | last_step)  # [b, k]
  return ConetteBeamState(
    step=state.step + 1,
    seqs=seqs,
    log_probs=log_probs,
    sums=sums,
    live=live & ~retiring,
    fin_seqs=jnp.where(retiring[..., None], seqs, state.fin_seqs),
    fin_log_probs=jnp.where(retiring[..., None], log_probs, state.fin_log_probs),
    fin_scores=jnp.where(retiring, sums / (state.step + 1.0), state.fin_scores),
    cache=gather_cache(cache, source),
  )


def _close_with_eos(tokens: jax.Array, eos_id: int) -> jax.Array:
  """Appends EOS at the last position of rows `[..., max_len]` that have none."""
  missing = ~jnp.any(tokens == eos_id, axis=-1, keepdims=True)
  last = jnp.arange(tokens.shape[-1]) == tokens.shape[-1] - 1
  return jnp.where(missing & last, eos_id, tokens)


def conette_beam_search(
  step_fn: StepFn,
  cache: Any,
  batch_size: int,
  settings: DecodeSettings,
  repeat_ban_mask: jax.Array | None = None,
  return_all_beams: bool = False,
) -> DecodeOutput:
  """CoNeTTE's beam search (see the module docstring).

  Args:
    step_fn: `(tokens [b * k, 1], cache) -> (logits [b * k, vocab], cache)`
      with k = `settings.beam_size` (encoder rows repeated with
      `steps.repeat_rows(x, k)`).
    cache: initial cache for `b * k` rows.
    batch_size: examples `b`.
    settings: `beam_size`, `min_len` (CoNeTTE's `min_pred_size`), `max_len`
      (`max_pred_size + 1`), `ban_repeated_content_words`,
      `no_repeat_ngram_size`, `bos_id` (the first input: a task token),
      `eos_id`, `pad_id`.
    repeat_ban_mask: bool `[vocab]`, the forbid-repetition mask (see
      `settings.repeat_ban_mask_for`).
    return_all_beams: return every beam, best first.

  Returns:
    `DecodeOutput`: tokens `[b, max_len]` (words, EOS, PAD), model
    log-probabilities per token, and the mean log-probability score `[b]`
    (or `[b, k, ...]` and `[b, k]` for all beams).
  """
  if settings.max_len < 2:
    raise ValueError('conette_beam needs max_len >= 2 (one token and EOS)')
  batch, beam, max_len = batch_size, settings.beam_size, settings.max_len
  seqs = jnp.full((batch, beam, max_len), settings.pad_id, jnp.int32)
  zeros = jnp.zeros((batch, beam, max_len), jnp.float32)
  state = ConetteBeamState(
    step=jnp.zeros((), jnp.int32),
    seqs=seqs,
    log_probs=zeros,
    sums=jnp.zeros((batch, beam), jnp.float32),
    live=jnp.ones((batch, beam), bool),
    fin_seqs=seqs,
    fin_log_probs=zeros,
    fin_scores=jnp.full((batch, beam), -jnp.inf, jnp.float32),
    cache=cache,
  )
  state = lax.while_loop(
    lambda s: (s.step < max_len - 1) & jnp.any(s.live),
    lambda s: _step(s, step_fn, settings, repeat_ban_mask),
    state,
  )
  order = jnp.argsort(-state.fin_scores, axis=1, stable=True)  # [b, k] best first
  tokens = _close_with_eos(gather_beams(state.fin_seqs, order), settings.eos_id)
  log_probs = gather_beams(state.fin_log_probs, order)
  scores = jnp.take_along_axis(state.fin_scores, order, axis=1)
  if return_all_beams:
    return DecodeOutput(tokens, log_probs, scores)
  return DecodeOutput(tokens[:, 0], log_probs[:, 0], scores[:, 0])
