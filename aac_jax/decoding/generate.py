"""From audio features to captions: encode once, then decode by `settings.method`.

`generate` is a pure traceable function (call it inside your own `jax.jit`);
`make_generate_fn` jits it for one device; `make_sharded_generate_fn` maps
it data-parallel over a 1-D mesh with `jax.jit(jax.shard_map(...))`
(parameters replicated, batch split on the leading axis).
"""

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
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
  axis_name: str = 'data',
  compiler_options: dict[str, Any] | None = None,
  frontend: Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]] | None = None,
) -> GenerateFn:
  """Data-parallel `generate` over a 1-D mesh (pmap semantics, current API).

  Parameters are replicated (`P()`), the batch is split over `axis_name`
  (`P(axis_name)`); the batch must divide by the mesh size. Per-row sampling
  keys are drawn before the split, so results equal single-device
  `generate` with the same `rng`. Evaluation decodes through this function.

  Args:
    model: a `Captioner`.
    settings: decoding settings.
    mesh: e.g. `Mesh(jax.devices(), ('data',))`.
    axis_name: the mesh axis carrying the batch.
    compiler_options: XLA options for `jax.jit`.
    frontend: `frontend(audio [b, n], audio_paddings [b, n]) -> (features,
      feature_paddings)`, run inside the map on each device's share; the
      returned function then takes audio instead of features.

  Returns:
    `fn(params, features, feature_paddings, rng=None, repeat_ban_mask=None)
    -> DecodeOutput`, outputs sharded on the batch axis.
  """

  def local(params, features, feature_paddings, rngs, repeat_ban_mask):
    if frontend is not None:
      features, feature_paddings = frontend(features, feature_paddings)
    encoded, enc_paddings = steps.eval_model(model).apply(
      {'params': params}, features, feature_paddings, method='encode'
    )
    return decode_encoded(
      model, params, encoded, enc_paddings, settings, rngs=rngs, repeat_ban_mask=repeat_ban_mask
    )

  batch = P(axis_name)
  # No collectives run inside; check_vma=False lets the search loops start
  # from device-invariant zeros (cache buffers, token buffers) and carry
  # per-device values without pcast-ing every initial carry.
  in_specs = (P(), batch, batch, batch, P())
  sharded = jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=batch, check_vma=False)

  @functools.partial(jax.jit, compiler_options=compiler_options)
  def run(params, features, feature_paddings, rng, repeat_ban_mask):
    rngs = jax.random.split(rng, features.shape[0])
    return sharded(params, features, feature_paddings, rngs, repeat_ban_mask)

  def fn(params, features, feature_paddings, rng=None, repeat_ban_mask=None):
    rng, repeat_ban_mask = _defaults(model, rng, repeat_ban_mask)
    return run(params, features, feature_paddings, rng, repeat_ban_mask)

  return fn
