"""From audio features to captions: encode once, then decode by `settings.method`.

`generate` is a pure traceable function (call it inside your own `jax.jit`);
`make_generate_fn` jits it for one device; `make_sharded_generate_fn` jits
it over a device mesh (the batch split on its leading axis, parameters laid
out however they come: copied or sharded).
"""

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from aac_jax.decoding import steps
from aac_jax.decoding.beam import beam_search
from aac_jax.decoding.conette_beam import conette_beam_search
from aac_jax.decoding.search import DecodeOutput, greedy_search, sample
from aac_jax.decoding.settings import DecodeSettings

GenerateFn = Callable[..., DecodeOutput]


def decode_encoded(
  model: nn.Module,
  params: Any,
  encoded: jax.Array,
  enc_paddings: jax.Array,
  settings: DecodeSettings,
  *,
  rngs: jax.Array | None = None,
  repeat_ban_mask: jax.Array | None = None,
  cached: bool = True,
) -> DecodeOutput:
  """Decodes captions from encoder outputs.

  Args:
    model: a `Captioner` (any mode; dropout is turned off here).
    params: its parameters.
    encoded: `[b, enc_time, encoder_dim]`.
    enc_paddings: `[b, enc_time]`, 1 = pad.
    settings: decoding settings (method and limits).
    rngs: `[b]` per-row PRNG keys; required for `method='sample'`.
    repeat_ban_mask: bool `[vocab]` for `ban_repeated_content_words`.
    cached: use the KV cache (False re-runs the decoder each step).

  Returns:
    `DecodeOutput` with tokens `[b, max_len]`.
  """
  batch = encoded.shape[0]
  make = steps.make_step_fn if cached else steps.make_uncached_step_fn
  if settings.method in ('beam', 'conette_beam'):
    k = settings.beam_size
    step_fn, cache = make(
      model,
      params,
      steps.repeat_rows(encoded, k),
      steps.repeat_rows(enc_paddings, k),
      settings.max_len,
    )
    search = beam_search if settings.method == 'beam' else conette_beam_search
    return search(step_fn, cache, batch, settings, repeat_ban_mask)
  step_fn, cache = make(model, params, encoded, enc_paddings, settings.max_len)
  if settings.method == 'sample':
    if rngs is None:
      raise ValueError("method='sample' needs rngs")
    return sample(step_fn, cache, rngs, settings, repeat_ban_mask)
  return greedy_search(step_fn, cache, batch, settings, repeat_ban_mask)


def generate(
  model: nn.Module,
  params: Any,
  features: jax.Array,
  feature_paddings: jax.Array,
  settings: DecodeSettings,
  *,
  rng: jax.Array | None = None,
  repeat_ban_mask: jax.Array | None = None,
  num_samples: int = 1,
  cached: bool = True,
) -> DecodeOutput:
  """Captions for a batch of clips.

  Args:
    model: a `Captioner`.
    params: its parameters.
    features: `[b, time, mels]` log-mel features.
    feature_paddings: `[b, time]`, 1 = pad.
    settings: decoding settings.
    rng: PRNG key (sampling); split into one key per output row.
    repeat_ban_mask: bool `[vocab]` for `ban_repeated_content_words`.
    num_samples: outputs per clip; the encoder runs once and its output is
      repeated (rows `i * num_samples + j`), e.g. K samples for SCST.
    cached: use the KV cache.

  Returns:
    `DecodeOutput` with tokens `[b * num_samples, max_len]`.
  """
  encoded, enc_paddings = steps.eval_model(model).apply(
    {'params': params}, features, feature_paddings, method='encode'
  )
  encoded = steps.repeat_rows(encoded, num_samples)
  enc_paddings = steps.repeat_rows(enc_paddings, num_samples)
  rngs = None if rng is None else jax.random.split(rng, encoded.shape[0])
  return decode_encoded(
    model,
    params,
    encoded,
    enc_paddings,
    settings,
    rngs=rngs,
    repeat_ban_mask=repeat_ban_mask,
    cached=cached,
  )


def _defaults(model: nn.Module, rng, repeat_ban_mask) -> tuple[jax.Array, jax.Array]:
  """A fixed key and an all-False ban mask where the caller gives none."""
  if rng is None:
    rng = jax.random.key(0)
  if repeat_ban_mask is None:
    repeat_ban_mask = jnp.zeros((model.config.vocab_size,), bool)
  return rng, repeat_ban_mask


def make_generate_fn(
  model: nn.Module,
  settings: DecodeSettings,
  cached: bool = True,
  compiler_options: dict[str, Any] | None = None,
) -> GenerateFn:
  """Jitted single-device `generate`.

  Args:
    model: a `Captioner`.
    settings: decoding settings.
    cached: use the KV cache.
    compiler_options: XLA options for `jax.jit` (tests lower the CPU
      optimisation level to compile faster).

  Returns:
    `fn(params, features, feature_paddings, rng=None, repeat_ban_mask=None)
    -> DecodeOutput`.
  """

  @functools.partial(jax.jit, compiler_options=compiler_options)
  def run(params, features, feature_paddings, rng, repeat_ban_mask):
    return generate(
      model,
      params,
      features,
      feature_paddings,
      settings,
      rng=rng,
      repeat_ban_mask=repeat_ban_mask,
      cached=cached,
    )

  def fn(params, features, feature_paddings, rng=None, repeat_ban_mask=None):
    rng, repeat_ban_mask = _defaults(model, rng, repeat_ban_mask)
    return run(params, features, feature_paddings, rng, repeat_ban_mask)

  return fn


def make_sharded_generate_fn(
  model: nn.Module,
  settings: DecodeSettings,
  mesh: Mesh,
  batch_axes: str | tuple[str, ...] = ('data', 'fsdp'),
  compiler_options: dict[str, Any] | None = None,
  frontend: Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]] | None = None,
  search: Callable[..., DecodeOutput] | None = None,
) -> GenerateFn:
  """`generate` jitted over a mesh, in the global view.

  The batch is split over `batch_axes` (it must divide by their size);
  parameters keep the shardings they come with (replicated, or split by
  the logical-axis rules), and XLA gathers them where the computation needs.
  Per-row sampling keys are drawn for the whole batch, so results equal
  single-device `generate` with the same `rng`. Evaluation decodes through
  this function.

  Args:
    model: a `Captioner`.
    settings: decoding settings.
    mesh: a mesh with the `batch_axes` among its axes.
    batch_axes: the mesh axes carrying the batch.
    compiler_options: XLA options for `jax.jit`.
    frontend: `frontend(audio [b, n], audio_paddings [b, n]) -> (features,
      feature_paddings)`, run first inside the jitted function; the
      returned function then takes audio instead of features.
    search: `search(model, params, features, feature_paddings, settings, *,
      rng, repeat_ban_mask) -> DecodeOutput` instead of encode + decode
      (`rerank.generate_candidates`: `[b, n, ...]` candidates, one key).

  Returns:
    `fn(params, features, feature_paddings, rng=None, repeat_ban_mask=None)
    -> DecodeOutput`, outputs split on the batch axis.
  """
  batch = NamedSharding(mesh, P(batch_axes))

  def pin(x):
    return jax.lax.with_sharding_constraint(x, batch)

  @functools.partial(jax.jit, out_shardings=batch, compiler_options=compiler_options)
  def run(params, features, feature_paddings, rng, repeat_ban_mask):
    features, feature_paddings = pin(features), pin(feature_paddings)
    if frontend is not None:
      features, feature_paddings = frontend(features, feature_paddings)
    if search is not None:
      return search(
        model, params, features, feature_paddings, settings, rng=rng,
        repeat_ban_mask=repeat_ban_mask,
      )  # fmt: skip
    rngs = pin(jax.random.split(rng, features.shape[0]))
    encoded, enc_paddings = steps.eval_model(model).apply(
      {'params': params}, features, feature_paddings, method='encode'
    )
    return decode_encoded(
      model, params, encoded, enc_paddings, settings, rngs=rngs, repeat_ban_mask=repeat_ban_mask
    )

  def fn(params, features, feature_paddings, rng=None, repeat_ban_mask=None):
    rng, repeat_ban_mask = _defaults(model, rng, repeat_ban_mask)
    return run(params, features, feature_paddings, rng, repeat_ban_mask)

  return fn
