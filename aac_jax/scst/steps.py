"""The two device halves of an SCST step, in the global view (as `aac_jax.train.steps`).

An SCST step is split around the host-side reward:

1. `sample_step(params, batch, rngs, ...)`: front end, encoder, then K
   multinomial samples per clip (and the greedy caption when the baseline
   is greedy). No gradient.
2. the host decodes the samples, scores them against the clip's references
   and forms a baseline per sample (`aac_jax.scst.rewards`).
3. `scst_update_step(state, batch, rollout, rng, ...)`: teacher-forces the
   sampled tokens to recompute log p(sample) with gradients, and applies
   `loss = -sum(advantage * log p(sample)) / normaliser` (plus, with
   `ce_weight`, that weight times the cross-entropy of one reference caption
   per clip) through the optimizer.

Both read whole arrays (the global batch, every parameter) and are jitted
with the mesh's shardings (`aac_jax.train.parallel`); the loss is divided
by the sample or token count of the global batch on every mesh.
`tests/test_scst_step.py` and `tests/test_sharded_steps.py` compare meshes
with one device.

Log-probabilities are those of the untempered model; the tokens' mask holds
every real token of a sample, its EOS included (left out, the model learns
to never stop).
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
from aac_jax.data import tokenizer
from aac_jax.train import parallel
from aac_jax.train import steps as train_steps
from aac_jax.train.state import TrainState

Batch = Mapping[str, jax.Array]
NORMALIZERS = ('samples', 'tokens')


def sample_step(
  params: Any,
  batch: Batch,
  rngs: jax.Array,
  repeat_ban_mask: jax.Array,
  *,
  model: nn.Module,
  sample_settings: decoding.DecodeSettings,
  greedy_settings: decoding.DecodeSettings | None,
  frontend_cfg: ml_collections.ConfigDict,
  sample_rate: int,
) -> dict[str, jax.Array]:
  """K sampled captions per clip (and the greedy one).

  Args:
    params: model parameters.
    batch: `audio`, `audio_paddings` float32 `[b, samples]`.
    rngs: `[b, K]` PRNG keys, one per sample (K = samples per clip).
    repeat_ban_mask: bool `[vocab]` (used with `ban_repeated_content_words`).
    model: the `Captioner` (dropout is turned off for decoding).
    sample_settings: `method='sample'` settings.
    greedy_settings: greedy settings for the greedy baseline, or None.
    frontend_cfg: `config.frontend`.
    sample_rate: `config.dataset.sample_rate`.

  Returns:
    `samples` int32 `[b, K, L]` (words, EOS, PAD), `sample_log_probs`
    float32 `[b, K]` (sum over the sample's tokens, EOS included) and, with
    `greedy_settings`, `greedy` int32 `[b, L]`.
  """
  features, paddings = train_steps.compute_features(batch, None, frontend_cfg, sample_rate)
  encoded, enc_paddings = decoding.eval_model(model).apply(
    {'params': params}, features, paddings, method='encode'
  )
  b, k = rngs.shape
  out = decoding.decode_encoded(
    model,
    params,
    decoding.repeat_rows(encoded, k),
    decoding.repeat_rows(enc_paddings, k),
    sample_settings,
    rngs=rngs.reshape(b * k),
    repeat_ban_mask=repeat_ban_mask,
  )
  result = {
    'samples': out.tokens.reshape(b, k, -1),
    'sample_log_probs': out.scores.reshape(b, k),
  }
  if greedy_settings is not None:
    greedy = decoding.decode_encoded(
      model, params, encoded, enc_paddings, greedy_settings, repeat_ban_mask=repeat_ban_mask
    )
    result['greedy'] = greedy.tokens
  return result


def make_sample_step(mesh: Mesh, num_samples: int, **static: Any):
  """Jits `sample_step` with the mesh's batch sharding.

  The per-sample keys are drawn from `fold_in(rng, step)` for the global
  batch, so the samples do not depend on the mesh (with
  `jax_threefry_partitionable`).

  Args:
    mesh: the `('data', 'fsdp', 'tensor')` mesh.
    num_samples: K, samples per clip.
    **static: the keyword arguments of `sample_step`.

  Returns:
    `fn(params, batch, rng, step, repeat_ban_mask) -> dict` (see
    `sample_step`), outputs split over the batch axes.
  """
  body = functools.partial(sample_step, **static)

  @functools.partial(jax.jit, out_shardings=parallel.batch_sharding(mesh))
  def run(params, batch, rng, step, repeat_ban_mask):
    audio = parallel.constrain_batch({k: batch[k] for k in ('audio', 'audio_paddings')}, mesh)
    rngs = jax.random.split(jax.random.fold_in(rng, step), (audio['audio'].shape[0], num_samples))
    rngs = parallel.constrain_batch(rngs, mesh)
    return body(params, audio, rngs, repeat_ban_mask)

  return run


def make_reference_log_prob_step(
  mesh: Mesh, *, model: nn.Module, frontend_cfg: ml_collections.ConfigDict, sample_rate: int
):
  """Jits log p(sample) `[b, K]` under other (frozen reference) parameters.

  Args:
    mesh: the `('data', 'fsdp', 'tensor')` mesh.
    model: the decoding-mode `Captioner` (no dropout).
    frontend_cfg: `config.frontend`.
    sample_rate: `config.dataset.sample_rate`.

  Returns:
    `fn(params, batch, samples) -> float32 [b, K]`: each sample's summed
    token log-probabilities (EOS included), split over the batch axes.
  """

  @functools.partial(jax.jit, out_shardings=parallel.batch_sharding(mesh))
  def run(params, batch, samples):
    audio = parallel.constrain_batch({k: batch[k] for k in ('audio', 'audio_paddings')}, mesh)
    features, paddings = train_steps.compute_features(audio, None, frontend_cfg, sample_rate)
    token_log_probs = sample_token_log_probs(
      model, params, features, paddings, samples, jax.random.key(0)
    )
    return jnp.sum(token_log_probs * (samples != tokenizer.PAD_ID), axis=-1)

  return run


def compute_advantages(
  rewards: jax.Array,
  baselines: jax.Array,
  normalize: bool,
  eps: float = 1e-6,
) -> jax.Array:
  """Reward minus baseline, optionally standardised over the batch.

  Args:
    rewards: `[b, K]` reward per sample (the global batch).
    baselines: `[b, K]` baseline per sample.
    normalize: subtract the mean and divide by the standard deviation
      (population, over every sample of the batch).
    eps: added to the standard deviation.

  Returns:
    float32 `[b, K]` advantages.
  """
  adv = (rewards - baselines).astype(jnp.float32)
  if not normalize:
    return adv
  mean = jnp.mean(adv)
  var = jnp.mean(jnp.square(adv - mean))
  return (adv - mean) / (jnp.sqrt(var) + eps)


def _encode(model: nn.Module, params: Any, features, feature_paddings, rng):
  return model.apply(
    {'params': params}, features, feature_paddings, method='encode', rngs={'dropout': rng}
  )


def _teacher_forced_logits(model: nn.Module, params: Any, encoded, enc_paddings, tokens, rng):
  """Logits `[n, L, vocab]` of `tokens` `[n, L]` given one encoder row per token row."""
  return model.apply(
    {'params': params},
    encoded,
    enc_paddings,
    tokenizer.shift_right(tokens),
    method='decode',
    rngs={'dropout': rng},
  )


def _encoded_sample_log_probs(model, params, encoded, enc_paddings, samples, rng) -> jax.Array:
  """float32 `[b, K, L]` log p of each sampled token, from the clips' encoder outputs."""
  b, k, length = samples.shape
  flat = samples.reshape(b * k, length)
  logits = _teacher_forced_logits(
    model,
    params,
    decoding.repeat_rows(encoded, k),
    decoding.repeat_rows(enc_paddings, k),
    flat,
    rng,
  )
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(log_probs, flat[..., None], axis=-1)[..., 0].reshape(b, k, length)


def sample_token_log_probs(
  model: nn.Module,
  params: Any,
  features: jax.Array,
  feature_paddings: jax.Array,
  samples: jax.Array,
  rng: jax.Array,
) -> jax.Array:
  """Teacher-forced log p of every sampled token (encoder run once per clip).

  Args:
    model: the `Captioner` (training mode: dropout as configured).
    params: its parameters.
    features: `[b, time, mels]`.
    feature_paddings: `[b, time]`.
    samples: int32 `[b, K, L]` sampled tokens (words, EOS, PAD).
    rng: dropout key.

  Returns:
    float32 `[b, K, L]` log-probabilities (meaningless where samples are PAD).
  """
  encode_rng, decode_rng = jax.random.split(rng)
  encoded, enc_paddings = _encode(model, params, features, feature_paddings, encode_rng)
  return _encoded_sample_log_probs(model, params, encoded, enc_paddings, samples, decode_rng)


def _policy_loss(
  params,
  batch,
  samples,
  advantages,
  normalizer,
  rng,
  *,
  model,
  frontend_cfg,
  sample_rate,
  ce_weight,
):
  """The batch's loss; aux: the policy term's sum, `[b, K]` log p and the reference CE.

  loss = -sum(advantage * log p(sample)) / normalizer
         + ce_weight * (cross-entropy per token of `batch['targets']`),
  the second term only with `ce_weight > 0` (one reference per clip).
  """
  features, paddings = train_steps.compute_features(batch, None, frontend_cfg, sample_rate)
  encode_rng, decode_rng = jax.random.split(rng)
  encoded, enc_paddings = _encode(model, params, features, paddings, encode_rng)
  token_log_probs = _encoded_sample_log_probs(
    model, params, encoded, enc_paddings, samples, decode_rng
  )
  mask = (samples != tokenizer.PAD_ID).astype(jnp.float32)
  seq_log_probs = jnp.sum(token_log_probs * mask, axis=-1)  # [b, K]
  loss_sum = -jnp.sum(advantages * seq_log_probs)
  loss = loss_sum / normalizer
  ce = jnp.float32(0.0)
  if ce_weight:
    targets = batch['targets']
    logits = _teacher_forced_logits(
      model, params, encoded, enc_paddings, targets, jax.random.fold_in(decode_rng, 1)
    )
    ce_sum, ce_tokens = train_steps.token_loss_sum(logits, targets, 0.0)
    ce = ce_sum / jnp.maximum(ce_tokens, 1.0)
    loss = loss + ce_weight * ce
  return loss, (loss_sum, seq_log_probs, ce)


def _stats(values: jax.Array) -> dict[str, jax.Array]:
  mean = jnp.mean(values)
  return {'mean': mean, 'std': jnp.sqrt(jnp.mean(jnp.square(values - mean)))}


def scst_update_step(
  state: TrainState,
  batch: Batch,
  rollout: Batch,
  rng: jax.Array,
  *,
  model: nn.Module,
  tx: optax.GradientTransformation,
  schedule: optax.Schedule,
  frontend_cfg: ml_collections.ConfigDict,
  sample_rate: int,
  normalize_advantage: bool,
  normalizer: str = 'samples',
  ce_weight: float = 0.0,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One policy-gradient update on the global batch.

  Args:
    state: the train state.
    batch: the clips: `audio`, `audio_paddings` `[b, samples]`.
    rollout: `samples` int32 `[b, K, L]`, `rewards` and `baselines`
      float32 `[b, K]`.
    rng: base key; the step is folded in.
    model: the training-mode `Captioner`.
    tx: the optimizer.
    schedule: learning-rate schedule (for the `lr` metric).
    frontend_cfg: `config.frontend` (no SpecAugment: the samples were drawn
      from clean features).
    sample_rate: `config.dataset.sample_rate`.
    normalize_advantage: standardise advantages over the global batch.
    normalizer: divide the summed loss by the global number of 'samples'
      (b * K) or of real 'tokens' (EOS included).

  Returns:
    `(new_state, metrics)`, float32 scalars: `loss`,
    `grad_norm`, `lr` and those of `_rollout_metrics`.
  """
  if normalizer not in NORMALIZERS:
    raise ValueError(f'normalizer must be one of {NORMALIZERS}, got {normalizer!r}')
  rng = jax.random.fold_in(rng, state.step)
  samples, rewards = rollout['samples'], rollout['rewards']
  advantages = compute_advantages(rewards, rollout['baselines'], normalize_advantage)
  num_samples = jnp.float32(rewards.size)
  mask = (samples != tokenizer.PAD_ID).astype(jnp.float32)
  num_tokens = jnp.sum(mask)
  denominator = num_samples if normalizer == 'samples' else jnp.maximum(num_tokens, 1.0)
  loss_fn = functools.partial(
    _policy_loss,
    model=model,
    frontend_cfg=frontend_cfg,
    sample_rate=sample_rate,
    ce_weight=ce_weight,
  )
  grads, (loss_sum, seq_log_probs, ce) = jax.grad(loss_fn, has_aux=True)(
    state.params, batch, samples, advantages, denominator, rng
  )
  metrics = {
    'loss': loss_sum / denominator,
    'grad_norm': optax.tree.norm(grads),
    'lr': jnp.asarray(schedule(state.step), jnp.float32),
    **_rollout_metrics(rollout, advantages, seq_log_probs, num_samples, num_tokens),
  }
  if ce_weight:
    metrics['ce_loss'] = ce
  return state.apply_gradients(tx, grads), metrics


def _rollout_metrics(rollout, advantages, seq_log_probs, num_samples, num_tokens) -> dict:
  """Statistics of an update's rollout (the global batch).

  Returns:
    `reward_mean`, `reward_std`, `baseline_mean`, `advantage_mean`,
    `advantage_std`, `advantage_min`, `advantage_max`, `advantage_positive`
    (share > 0), `sample_log_prob` (mean per sample), `sample_tokens` (mean
    tokens per sample, EOS included).
  """
  rewards = rollout['rewards']
  reward_stats = _stats(rewards)
  adv_stats = _stats(advantages)
  return {
    'reward_mean': reward_stats['mean'],
    'reward_std': reward_stats['std'],
    'baseline_mean': jnp.sum(rollout['baselines']) / num_samples,
    'advantage_mean': adv_stats['mean'],
    'advantage_std': adv_stats['std'],
    'advantage_min': jnp.min(advantages),
    'advantage_max': jnp.max(advantages),
    'advantage_positive': jnp.sum(advantages > 0) / num_samples,
    'sample_log_prob': jnp.sum(seq_log_probs) / num_samples,
    'sample_tokens': num_tokens / num_samples,
  }


def make_update_step(mesh: Mesh, state_sharding: Any, *, donate: bool = True, **static: Any):
  """Jits `scst_update_step` with the mesh's shardings.

  Args:
    mesh: the `('data', 'fsdp', 'tensor')` mesh.
    state_sharding: the `TrainState` of shardings (`parallel.state_shardings`).
    donate: donate the input state buffers (the caller must not reuse them).
    **static: the keyword arguments of `scst_update_step` after `rng`.

  Returns:
    `step(state, batch, rollout, rng) -> (state, metrics)`; `batch` and
    `rollout` split over the batch axes (`batch` with `targets` when
    `ce_weight` is set).
  """
  body = functools.partial(scst_update_step, **static)
  step = parallel.jit_update_step(body, mesh, state_sharding, 2, donate)
  keys = ('audio', 'audio_paddings') + (('targets',) if static.get('ce_weight') else ())

  def run(state, batch, rollout, rng):
    return step(state, {k: batch[k] for k in keys}, rollout, rng)

  return run
