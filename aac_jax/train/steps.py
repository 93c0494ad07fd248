"""The cross-entropy train step and the own-loss check, in the global view.

Every function here reads whole arrays: the global batch and every
parameter. `make_train_step` jits `train_step` with the shardings of the
mesh (`aac_jax.train.parallel`): the batch split over `('data', 'fsdp')`,
parameters and optimizer state as the logical-axis rules say; XLA inserts
the gathers and reductions. The loss is the token-weighted mean over the
global batch, on every mesh. Random streams (SpecAugment, dropout) are
drawn for the global batch, so with `jax_threefry_partitionable` (JAX's
default) they do not depend on the mesh either. `tests/test_train_step.py`
and `tests/test_sharded_steps.py` compare meshes with one device.
"""

import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from aac_jax import decoding
from aac_jax.audio import frontend
from aac_jax.data import tokenizer
from aac_jax.models import keyword_head
from aac_jax.train import parallel
from aac_jax.train.state import TrainState

Batch = Mapping[str, jax.Array]


def token_loss_sum(
  logits: jax.Array, targets: jax.Array, label_smoothing: float
) -> tuple[jax.Array, jax.Array]:
  """Label-smoothed cross-entropy summed over real tokens.

  The smoothed target puts `1 - label_smoothing` on the true token and
  spreads `label_smoothing` uniformly over the whole vocabulary.

  Args:
    logits: `[batch, len, vocab]` (any float dtype; computed in float32).
    targets: int32 `[batch, len]`, `PAD_ID` where there is no token.
    label_smoothing: in `[0, 1)`.

  Returns:
    `(loss_sum, num_tokens)`: float32 scalars over the non-pad positions.
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
  nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  uniform = -jnp.mean(log_probs, axis=-1)
  loss = (1.0 - label_smoothing) * nll + label_smoothing * uniform
  weights = (targets != tokenizer.PAD_ID).astype(jnp.float32)
  return jnp.sum(loss * weights), jnp.sum(weights)


def compute_features(
  batch: Batch,
  rng: jax.Array | None,
  frontend_cfg: ml_collections.ConfigDict,
  sample_rate: int,
  augment: bool = False,
) -> tuple[jax.Array, jax.Array]:
  """Log-mel features of a batch, with SpecAugment when `augment`.

  Args:
    batch: `audio` and `audio_paddings`, float32 `[batch, samples]`.
    rng: key for SpecAugment (unused without `augment`).
    frontend_cfg: `config.frontend`.
    sample_rate: Hz of the audio (`config.dataset.sample_rate`).
    augment: apply SpecAugment (training; still off unless
      `frontend_cfg.spec_augment`).

  Returns:
    `(features [batch, frames, mels], frame_paddings [batch, frames])`.
  """
  features, paddings = frontend.log_mel(
    batch['audio'], batch['audio_paddings'], frontend_cfg, sample_rate
  )
  if augment:
    features = frontend.spec_augment(rng, features, paddings, frontend_cfg)
  return features, paddings


def model_inputs(
  batch: Batch,
  model: nn.Module,
  rng: jax.Array | None,
  frontend_cfg: ml_collections.ConfigDict,
  sample_rate: int,
  augment: bool = False,
) -> tuple[jax.Array, jax.Array, Any]:
  """What the model reads from a train batch: log-mel of `audio`, or stored `frames`.

  Returns:
    `(features, paddings, method)`: `method` is `model.from_frames` for a
    batch of stored frozen-tagger frames (`aac_jax.data.embeddings`), else
    None (the model's usual call on features).
  """
  if 'frames' in batch:
    return batch['frames'], batch['frame_paddings'], model.from_frames
  features, paddings = compute_features(batch, rng, frontend_cfg, sample_rate, augment)
  return features, paddings, None


def _micro_loss(
  params: Any,
  batch: Batch,
  rng: jax.Array,
  normalizers: dict[str, jax.Array],
  *,
  model: nn.Module,
  frontend_cfg: ml_collections.ConfigDict,
  sample_rate: int,
  label_smoothing: float,
  keyword_loss_weight: float = 0.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """A micro-batch's share of the whole batch's mean loss, and its unnormalised sums.

  `normalizers` hold the counts of the whole batch: `tokens`, and
  `keywords` when the keyword loss is on; dividing each micro-batch's sums
  by them makes the summed micro-batch gradients those of the whole batch.
  """
  augment_rng, dropout_rng = jax.random.split(rng)
  targets = batch['targets']
  method = model.with_keywords if keyword_loss_weight else None  # None: __call__.
  features, paddings, frames_method = model_inputs(
    batch, model, augment_rng, frontend_cfg, sample_rate, augment=True
  )
  method = frames_method or method
  inputs = (features, paddings, tokenizer.decoder_inputs(batch))

  def forward(params, inputs, dropout_rng):
    return model.apply({'params': params}, *inputs, rngs={'dropout': dropout_rng}, method=method)

  if model.config.remat == 'full':  # Keep only the inputs; recompute the rest backwards.
    forward = jax.checkpoint(forward)
  outputs = forward(params, inputs, dropout_rng)
  logits = outputs[0] if keyword_loss_weight else outputs
  loss_sum, _ = token_loss_sum(logits, targets, label_smoothing)
  sums = {'loss': loss_sum}
  total = loss_sum / normalizers['tokens']
  if keyword_loss_weight:
    sums['keyword_loss'] = keyword_head.keyword_loss_sum(outputs[1], batch['keywords'])
    total += keyword_loss_weight * sums['keyword_loss'] / normalizers['keywords']
  return total, sums


def _split_micro_batches(batch: Batch, num_micro: int) -> Batch:
  """`[b, ...]` leaves to `[num_micro, b // num_micro, ...]`, micro-batch `i` = rows `i::num_micro`.

  Strided, so that every device keeps its own rows: a device holding a
  contiguous block of the batch holds `1 / num_micro` of it in each
  micro-batch, and no row moves between devices.
  """

  def split(x):
    if x.shape[0] % num_micro:
      raise ValueError(f'batch {x.shape[0]} not divisible by {num_micro} micro-batches')
    return jnp.swapaxes(x.reshape(x.shape[0] // num_micro, num_micro, *x.shape[1:]), 0, 1)

  return jax.tree.map(split, dict(batch))


def _gradients(
  params: Any,
  batch: Batch,
  rng: jax.Array,
  normalizers: dict[str, jax.Array],
  num_micro: int,
  **loss_kw,
) -> tuple[Any, dict[str, jax.Array]]:
  """Whole-batch gradient and loss sums, over `num_micro` micro-batches.

  Each micro-batch's loss is divided by the global counts of the whole
  batch, so summing micro-batch gradients gives exactly the full-batch one.
  """
  grad_fn = jax.grad(functools.partial(_micro_loss, **loss_kw), has_aux=True)
  if num_micro == 1:
    return grad_fn(params, batch, rng, normalizers)

  def body(grad_sum, xs):
    micro, index = xs
    grads, sums = grad_fn(params, micro, jax.random.fold_in(rng, index), normalizers)
    return jax.tree.map(jnp.add, grad_sum, grads), sums

  zeros = jax.tree.map(jnp.zeros_like, params)
  micro_batches = _split_micro_batches(batch, num_micro)
  grads, sums = jax.lax.scan(body, zeros, (micro_batches, jnp.arange(num_micro)))
  return grads, jax.tree.map(jnp.sum, sums)


def _normalizers(batch: Batch, model: nn.Module, keyword_loss_weight: float):
  """`(batch, normalizers, token count)`: the whole batch's counts the losses divide by.

  With the keyword loss, `batch` gains `keywords` (its targets) and the
  normalizers their count.
  """
  tokens = jnp.sum((batch['targets'] != tokenizer.PAD_ID).astype(jnp.float32))
  # A batch of only padding would divide by zero; its gradient is zero anyway.
  normalizers = {'tokens': jnp.maximum(tokens, 1.0)}
  if keyword_loss_weight:
    batch = dict(batch)
    batch['keywords'] = keyword_head.keyword_targets(batch['targets'], model.config.vocab_size)
    normalizers['keywords'] = jnp.maximum(jnp.sum(batch['keywords']), 1.0)
  return batch, normalizers, tokens


def train_step(
  state: TrainState,
  batch: Batch,
  rng: jax.Array,
  *,
  model: nn.Module,
  tx: optax.GradientTransformation,
  schedule: optax.Schedule,
  frontend_cfg: ml_collections.ConfigDict,
  sample_rate: int,
  label_smoothing: float,
  grad_accum_steps: int = 1,
  keyword_loss_weight: float = 0.0,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update on the global batch.

  Args:
    state: the train state.
    batch: the global batch: `audio`, `audio_paddings` float32
      `[b, samples]`, `targets` int32 `[b, max_caption_tokens]`.
    rng: the run's base key; the step number and the micro-batch index are
      folded in here.
    model: the training-mode `Captioner` (dropout on).
    tx: the optimizer.
    schedule: learning-rate schedule (for the `lr` metric).
    frontend_cfg: `config.frontend`.
    sample_rate: `config.dataset.sample_rate`.
    label_smoothing: `config.optim.label_smoothing`.
    grad_accum_steps: micro-batches per update (divides `b` / batch shards).
    keyword_loss_weight: `config.optim.keyword_loss_weight`; > 0 needs a
      model with `keyword_head` and adds its loss (per caption word).

  Returns:
    `(new_state, metrics)`; metrics are float32 scalars: `loss`
    (token-weighted mean over the global batch), `grad_norm` (before
    clipping), `lr` (used for this update) and `tokens` (real target tokens
    in the global batch); with the keyword loss also `keyword_loss` (binary
    cross-entropy per caption word of the global batch).
  """
  rng = jax.random.fold_in(rng, state.step)
  batch, normalizers, tokens = _normalizers(batch, model, keyword_loss_weight)
  loss_kw = {'model': model, 'frontend_cfg': frontend_cfg, 'sample_rate': sample_rate}
  loss_kw.update(label_smoothing=label_smoothing, keyword_loss_weight=keyword_loss_weight)
  grads, sums = _gradients(state.params, batch, rng, normalizers, grad_accum_steps, **loss_kw)
  metrics = {
    'loss': sums['loss'] / normalizers['tokens'],
    'grad_norm': optax.tree.norm(grads),
    'lr': jnp.asarray(schedule(state.step), jnp.float32),
    'tokens': tokens,
  }
  if keyword_loss_weight:
    metrics['keyword_loss'] = sums['keyword_loss'] / normalizers['keywords']
  return state.apply_gradients(tx, grads), metrics


def own_loss(
  params: Any,
  batch: Batch,
  *,
  model: nn.Module,
  frontend_cfg: ml_collections.ConfigDict,
  sample_rate: int,
) -> jax.Array:
  """Mean token cross-entropy of `params` on a batch, without dropout or SpecAugment.

  What the trainer checks before saving a checkpoint: the loss of the very
  parameters being saved (the mean over the global batch).

  Args:
    params: the parameters.
    batch: `audio`, `audio_paddings` `[b, samples]` (or stored `frames`,
      `frame_paddings`) and `targets` `[b, L]` or `[b, R, L]` (SCST passes
      its sampled captions).
    model: the `Captioner` (any mode: dropout is turned off here).
    frontend_cfg: `config.frontend`.
    sample_rate: `config.dataset.sample_rate`.
  """
  model = decoding.eval_model(model)
  features, paddings, method = model_inputs(batch, model, None, frontend_cfg, sample_rate)
  targets = batch['targets']
  logits = model.apply(
    {'params': params}, features, paddings, tokenizer.decoder_inputs(batch), method=method
  )
  loss_sum, tokens = token_loss_sum(logits, targets, 0.0)
  return loss_sum / jnp.maximum(tokens, 1.0)


def make_own_loss_fn(mesh: Mesh, params_sharding: Any, **static: Any):
  """`own_loss` jitted with the mesh's shardings: `fn(params, batch) -> scalar`."""
  rep, batch = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  return jax.jit(
    functools.partial(own_loss, **static),
    in_shardings=(params_sharding, batch),
    out_shardings=rep,
  )


def make_train_step(mesh: Mesh, state_sharding: Any, *, donate: bool = True, **static: Any):
  """Jits `train_step` with the mesh's shardings.

  Args:
    mesh: the `('data', 'fsdp', 'tensor')` mesh.
    state_sharding: the `TrainState` of shardings (`parallel.state_shardings`).
    donate: donate the input state buffers (the caller must not reuse them).
    **static: the keyword arguments of `train_step` after `rng`.

  Returns:
    `step(state, batch, rng) -> (state, metrics)` taking a state laid out by
    `state_sharding`, a global batch split over `('data', 'fsdp')` and a key.
  """
  step = functools.partial(train_step, **static)
  return parallel.jit_update_step(step, mesh, state_sharding, 1, donate)
