"""Step functions: the callback every decoding loop calls once per position.

A step function maps the current input tokens and a cache to next-token
logits and the updated cache:

    step_fn(tokens [rows, 1] int32, cache) -> (logits [rows, vocab] float32, cache)

The cache is any pytree whose leaves are either scalars (shared by all rows,
e.g. a position counter) or arrays with `rows` leading (beam search reorders
those along with the beams). Two builders exist: `make_step_fn` (the model's
Linen KV cache, one token of work per step) and `make_uncached_step_fn`
(re-runs the full decoder over the whole prefix at every step; a reference
for tests and the baseline of the cache speed-up benchmark).
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

StepFn = Callable[[jax.Array, Any], tuple[jax.Array, Any]]


def eval_model(model: nn.Module, decode: bool = False) -> nn.Module:
  """The same `Captioner` without dropout, optionally in cached-decode mode."""
  return model.clone(config=model.config.replace(deterministic=True, decode=decode))


def repeat_rows(x: jax.Array, times: int) -> jax.Array:
  """`[b, ...]` -> `[b * times, ...]`, each row repeated in place (row-major beams)."""
  return jnp.repeat(x, times, axis=0) if times > 1 else x


def _check_length(model: nn.Module, max_len: int) -> None:
  if max_len > model.config.max_decode_len:
    raise ValueError(f'max_len {max_len} > model max_decode_len {model.config.max_decode_len}')


def init_cache(
  model: nn.Module, params: Any, encoded: jax.Array, enc_paddings: jax.Array, max_len: int
) -> Any:
  """Creates the decoder's `cache` collection for `max_len` steps.

  A full-length dummy pass allocates the self-attention KV buffers
  `[rows, max_len, heads, head_dim]` (zeros, index 0) and stores the
  projected encoder keys and values of every cross-attention once.

  Args:
    model: a `Captioner` (any mode; run here with `decode=True`).
    params: its parameters.
    encoded: `[rows, enc_time, encoder_dim]`.
    enc_paddings: `[rows, enc_time]`.
    max_len: decoding steps.

  Returns:
    The `cache` pytree.
  """
  _check_length(model, max_len)
  decoder = eval_model(model, decode=True)
  dummy = jnp.zeros((encoded.shape[0], max_len), jnp.int32)
  _, variables = decoder.apply(
    {'params': params}, encoded, enc_paddings, dummy, method='decode', mutable=['cache']
  )
  return variables['cache']


def make_step_fn(
  model: nn.Module, params: Any, encoded: jax.Array, enc_paddings: jax.Array, max_len: int
) -> tuple[StepFn, Any]:
  """KV-cached step function and its initial cache.

  Args:
    model: a `Captioner`.
    params: its parameters.
    encoded: `[rows, enc_time, encoder_dim]` (repeat rows for beams first).
    enc_paddings: `[rows, enc_time]`.
    max_len: decoding steps (<= `max_decode_len`).

  Returns:
    `(step_fn, cache)`.
  """
  decoder = eval_model(model, decode=True)
  cache = init_cache(model, params, encoded, enc_paddings, max_len)

  def step_fn(tokens: jax.Array, cache: Any) -> tuple[jax.Array, Any]:
    logits, variables = decoder.apply(
      {'params': params, 'cache': cache},
      encoded,
      enc_paddings,
      tokens,
      method='decode',
      mutable=['cache'],
    )
    return logits[:, -1], variables['cache']

  return step_fn, cache


def make_uncached_step_fn(
  model: nn.Module, params: Any, encoded: jax.Array, enc_paddings: jax.Array, max_len: int
) -> tuple[StepFn, Any]:
  """Step function that re-runs the full decoder over the prefix each step.

  Its cache is `{'tokens': [rows, max_len] int32, 'index': [] int32}`; the
  causal mask makes the not-yet-written positions irrelevant.

  Args:
    model: a `Captioner`.
    params: its parameters.
    encoded: `[rows, enc_time, encoder_dim]`.
    enc_paddings: `[rows, enc_time]`.
    max_len: decoding steps (<= `max_decode_len`).

  Returns:
    `(step_fn, cache)`.
  """
  _check_length(model, max_len)
  decoder = eval_model(model, decode=False)
  cache = {
    'tokens': jnp.zeros((encoded.shape[0], max_len), jnp.int32),
    'index': jnp.zeros((), jnp.int32),
  }

  def step_fn(tokens: jax.Array, cache: Any) -> tuple[jax.Array, Any]:
    index = cache['index']
    buffer = lax.dynamic_update_slice(cache['tokens'], tokens.astype(jnp.int32), (0, index))
    logits = decoder.apply({'params': params}, encoded, enc_paddings, buffer, method='decode')
    step_logits = lax.dynamic_index_in_dim(logits, index, axis=1, keepdims=False)
    return step_logits, {'tokens': buffer, 'index': index + tokens.shape[1]}

  return step_fn, cache
