"""Greedy search and sampling (temperature, top-k, top-p) as `lax.while_loop`s.

Both run one `step_fn` call per position with fixed shapes, stop early once
every row has emitted EOS, and return `DecodeOutput`.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from aac_jax.decoding.constraints import NEG_INF, apply_constraints
from aac_jax.decoding.settings import DecodeSettings
from aac_jax.decoding.steps import StepFn


class DecodeOutput(NamedTuple):
  """What every decoding function returns.

  Attributes:
    tokens: int32 `[batch, max_len]`: words, EOS, then PAD.
    log_probs: float32 `[batch, max_len]`: log-probability of each token
      under the model's own distribution (log_softmax of the logits: no
      temperature, no top-k/top-p truncation, no bans), 0 after EOS. EOS is
      included. For sampling this is log p_model, not the log-probability of
      the tempered/truncated distribution actually sampled from.
    scores: float32 `[batch]`: the sum of `log_probs` (greedy, sampling), or
      the length-normalised beam score (beam search).
  """

  tokens: jax.Array
  log_probs: jax.Array
  scores: jax.Array


class _LoopState(NamedTuple):
  step: jax.Array  # [] int32, position being filled
  tokens: jax.Array  # [batch, max_len] int32
  log_probs: jax.Array  # [batch, max_len] float32
  done: jax.Array  # [batch] bool, EOS emitted
  cache: Any  # step_fn's cache


def last_tokens(tokens: jax.Array, step: jax.Array, bos_id: int) -> jax.Array:
  """Decoder input for `step`: `[rows, max_len]` -> `[rows, 1]` (BOS at step 0)."""
  previous = jnp.take(tokens, jnp.maximum(step - 1, 0), axis=1)
  return jnp.where(step == 0, bos_id, previous)[:, None]


def _decode_loop(step_fn, cache, batch_size, settings, choose, repeat_ban_mask) -> DecodeOutput:
  """Shared loop; `choose(allowed_log_probs [b, vocab], step) -> tokens [b]`."""
  max_len = settings.max_len

  def running(state: _LoopState) -> jax.Array:
    return (state.step < max_len) & ~jnp.all(state.done)

  def body(state: _LoopState) -> _LoopState:
    inputs = last_tokens(state.tokens, state.step, settings.bos_id)
    logits, cache = step_fn(inputs, state.cache)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [b, vocab]
    allowed = apply_constraints(log_probs, state.tokens, state.step, settings, repeat_ban_mask)
    token = jnp.where(state.done, settings.pad_id, choose(allowed, state.step))  # [b]
    token_log_prob = jnp.take_along_axis(log_probs, token[:, None], axis=1)[:, 0]
    return _LoopState(
      step=state.step + 1,
      tokens=state.tokens.at[:, state.step].set(token),
      log_probs=state.log_probs.at[:, state.step].set(jnp.where(state.done, 0.0, token_log_prob)),
      done=state.done | (token == settings.eos_id),
      cache=cache,
    )

  init = _LoopState(
    step=jnp.zeros((), jnp.int32),
    tokens=jnp.full((batch_size, max_len), settings.pad_id, jnp.int32),
    log_probs=jnp.zeros((batch_size, max_len), jnp.float32),
    done=jnp.zeros((batch_size,), bool),
    cache=cache,
  )
  final = lax.while_loop(running, body, init)
  return DecodeOutput(final.tokens, final.log_probs, jnp.sum(final.log_probs, axis=-1))


def greedy_search(
  step_fn: StepFn,
  cache: Any,
  batch_size: int,
  settings: DecodeSettings,
  repeat_ban_mask: jax.Array | None = None,
) -> DecodeOutput:
  """Most likely allowed token at each step.

  Args:
    step_fn: `(tokens [b, 1], cache) -> (logits [b, vocab], cache)`.
    cache: initial cache for `batch_size` rows.
    batch_size: rows `b`.
    settings: `max_len`, `min_len`, `no_repeat_ngram_size`,
      `ban_repeated_content_words` and token ids are used.
    repeat_ban_mask: bool `[vocab]` (see `settings.make_repeat_ban_mask`).

  Returns:
    `DecodeOutput` with `[b, max_len]` tokens.
  """
  return _decode_loop(
    step_fn, cache, batch_size, settings, lambda lp, _: jnp.argmax(lp, axis=-1), repeat_ban_mask
  )


def filter_top_k(logits: jax.Array, k: int) -> jax.Array:
  """Keeps the `k` largest logits per row (ties kept), others to NEG_INF: `[b, v]`."""
  if k <= 0 or k >= logits.shape[-1]:
    return logits
  threshold = lax.top_k(logits, k)[0][:, -1:]
  return jnp.where(logits >= threshold, logits, NEG_INF)


def filter_top_p(logits: jax.Array, p: float) -> jax.Array:
  """Nucleus filter: keeps the smallest set of most likely tokens whose
  probability reaches `p` (the most likely token always stays): `[b, v]`."""
  if p >= 1.0:
    return logits
  sorted_logits = -jnp.sort(-logits, axis=-1)  # [b, v] descending
  sorted_probs = jax.nn.softmax(sorted_logits, axis=-1)
  mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
  num_kept = jnp.sum(mass_before < p, axis=-1, keepdims=True)  # [b, 1], >= 1
  threshold = jnp.take_along_axis(sorted_logits, num_kept - 1, axis=-1)
  return jnp.where(logits >= threshold, logits, NEG_INF)


def sample(
  step_fn: StepFn,
  cache: Any,
  rngs: jax.Array,
  settings: DecodeSettings,
  repeat_ban_mask: jax.Array | None = None,
) -> DecodeOutput:
  """Ancestral sampling with temperature, then top-k, then top-p.

  Bans (min length, n-grams, repeated words) apply before the temperature.
  Each row draws from its own key folded with the step, so a row's sample
  does not depend on the batch it sits in or on the device count.

  Args:
    step_fn: `(tokens [b, 1], cache) -> (logits [b, vocab], cache)`.
    cache: initial cache for `b` rows.
    rngs: `[b]` PRNG keys (`jax.random.split(rng, b)`; raw `[b, 2]` keys too).
    settings: as for `greedy_search`, plus `temperature` (<= 0 = greedy),
      `top_k` and `top_p`.
    repeat_ban_mask: bool `[vocab]`.

  Returns:
    `DecodeOutput`; `log_probs` are under the untempered, untruncated model
    distribution (what SCST differentiates), EOS included.
  """
  batch_size = rngs.shape[0]
  if settings.temperature <= 0.0:
    return greedy_search(step_fn, cache, batch_size, settings, repeat_ban_mask)

  def choose(allowed: jax.Array, step: jax.Array) -> jax.Array:
    logits = filter_top_k(allowed / settings.temperature, settings.top_k)
    logits = filter_top_p(logits, settings.top_p)
    keys = jax.vmap(lambda key: jax.random.fold_in(key, step))(rngs)
    return jax.vmap(jax.random.categorical)(keys, logits)

  return _decode_loop(step_fn, cache, batch_size, settings, choose, repeat_ban_mask)
