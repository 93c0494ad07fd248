"""SCST device steps: 8 simulated devices equal one, and the update goes uphill.

As in tests/test_train_step.py, the parity tests use an "optimizer" that
stores the gradient it receives in its state, so the gradient itself is
compared (AdamW would hide a gradient scaled by the device count).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from aac_jax import decoding, models
from aac_jax.data import tokenizer
from aac_jax.scst import rewards, steps
from aac_jax.train import parallel, state, trainer
from aac_jax.train import steps as train_steps
from configs import base

VOCAB = 20  # Divisible by a tensor axis of 2.
CLIPS = 16
K = 3
LENGTH = 8
SAMPLES = 2400  # 0.15 s at 16 kHz: 16 frames.
SAMPLE_RATE = 16000


def _config():
  config = base.get_base_config()
  config.frontend.spec_augment = False
  config.frontend.n_mels = 16
  m = config.model
  m.subsampling, m.encoder_dim, m.encoder_layers, m.encoder_heads, m.encoder_ff_dim = (
    2,
    16,
    1,
    2,
    32,
  )
  m.decoder_dim, m.decoder_layers, m.decoder_heads, m.decoder_ff_dim = 16, 1, 2, 32
  m.conv_kernel_size, m.max_decode_len = 3, LENGTH
  # Dropout streams depend on the device a row lands on; parity needs it off.
  m.dropout = m.attention_dropout = 0.0
  return config


@functools.lru_cache(maxsize=1)
def _setup():
  config = _config()
  model = models.Captioner(models.make_captioner_config(config.model, VOCAB))
  params = models.init_params(model, jax.random.key(3), num_mels=16, length=LENGTH)
  return config, model, params


def _audio(seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  audio = rng.normal(0, 0.1, (CLIPS, SAMPLES)).astype(np.float32)
  lengths = rng.integers(SAMPLES // 3, SAMPLES + 1, CLIPS)
  paddings = (np.arange(SAMPLES)[None] >= lengths[:, None]).astype(np.float32)
  return {'audio': audio * (1 - paddings), 'audio_paddings': paddings}


def _rollout(seed: int = 0) -> dict[str, np.ndarray]:
  """Samples whose lengths (and so token counts) differ a lot between devices."""
  rng = np.random.default_rng(seed)
  samples = np.zeros((CLIPS, K, LENGTH), np.int32)
  for i in range(CLIPS):
    for j in range(K):
      n = (i // 2 + j) % LENGTH  # device d holds captions of about d words
      samples[i, j, :n] = rng.integers(4, VOCAB, n)
      samples[i, j, n] = tokenizer.EOS_ID
  r = rng.normal(size=(CLIPS, K)).astype(np.float32) * (1 + np.arange(CLIPS))[:, None]
  return {'samples': samples, 'rewards': r, 'baselines': rewards.baseline_rewards(r, 'mean_others')}


def _capture_gradients() -> optax.GradientTransformation:
  return optax.GradientTransformation(
    init=lambda params: jax.tree.map(jnp.zeros_like, params),
    update=lambda grads, opt_state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads),
  )


def _mesh(mesh_shape):
  """`(config, mesh)` of `(data, fsdp, tensor)` over the first devices."""
  config = _setup()[0].copy_and_resolve_references()
  config.mesh.update(dict(zip(('data', 'fsdp', 'tensor'), mesh_shape, strict=True)))
  devices = jax.devices()[: int(np.prod(mesh_shape))]
  return config, parallel.create_mesh(config.mesh, devices)


@functools.cache
def _update_fn(mesh_shape: tuple, normalize: bool, normalizer: str, ce_weight: float = 0.0):
  """`(mesh, state sharding, jitted update)` with a gradient-capturing optimizer."""
  _, model, _ = _setup()
  config, mesh = _mesh(mesh_shape)
  sharding = trainer.state_sharding_for(config, model, _capture_gradients(), mesh)
  fn = steps.make_update_step(
    mesh,
    sharding,
    donate=False,
    model=model,
    tx=_capture_gradients(),
    schedule=optax.constant_schedule(1.0),
    frontend_cfg=config.frontend,
    sample_rate=SAMPLE_RATE,
    normalize_advantage=normalize,
    normalizer=normalizer,
    ce_weight=ce_weight,
  )
  return mesh, sharding, fn


def _gradient(
  num_devices, normalize, normalizer, rollout, params=None, mesh_shape=None, targets=None, ce=0.0
):
  """(gradient, metrics) of one update step on the first `num_devices` devices (or a mesh).

  `targets` (one reference per clip) and `ce` (its loss weight) add the CE term.
  """
  mesh, sharding, fn = _update_fn(mesh_shape or (num_devices, 1, 1), normalize, normalizer, ce)
  params = _setup()[2] if params is None else params
  train_state = state.create_train_state(params, _capture_gradients())
  train_state = jax.device_put(train_state, sharding)
  extra = {} if targets is None else {'targets': targets}
  batch = parallel.shard_batch({**_audio(), **extra}, mesh)
  new_state, metrics = fn(
    train_state, batch, parallel.shard_batch(rollout, mesh), jax.random.key(0)
  )
  return parallel.to_host(new_state.opt_state), parallel.to_host(metrics)


@jax.jit
def _seq_log_probs(params, samples):
  """Reference log p(sample) `[b, K]` on one device, no shard_map."""
  config, model, _ = _setup()
  audio = _audio()
  features, paddings = train_steps.compute_features(audio, None, config.frontend, SAMPLE_RATE)
  token_lp = steps.sample_token_log_probs(
    model, params, features, paddings, samples, jax.random.key(0)
  )
  return jnp.sum(token_lp * (samples != tokenizer.PAD_ID), axis=-1)


def _assert_trees_close(a, b, rtol=1e-5):
  flat_a, flat_b = jax.tree.leaves(a), jax.tree.leaves(b)
  scale = max(float(np.max(np.abs(y))) for y in flat_b)
  for x, y in zip(flat_a, flat_b, strict=True):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * scale)


def test_update_on_eight_devices_equals_one_device():
  # Token-normalised loss and standardised advantages: both need global sums.
  assert jax.device_count() == 8
  rollout = _rollout()
  grads8, metrics8 = _gradient(8, True, 'tokens', rollout)
  grads1, metrics1 = _gradient(1, True, 'tokens', rollout)
  _assert_trees_close(grads8, grads1)
  for key in metrics1:
    np.testing.assert_allclose(metrics8[key], metrics1[key], rtol=1e-5, atol=1e-6, err_msg=key)
  # The loss equals the one written out directly on the global batch.
  adv = steps.compute_advantages(rollout['rewards'], rollout['baselines'], True)
  mask = rollout['samples'] != tokenizer.PAD_ID
  seq_lp = _seq_log_probs(_setup()[2], rollout['samples'])
  np.testing.assert_allclose(metrics8['loss'], -jnp.sum(adv * seq_lp) / mask.sum(), rtol=1e-5)
  np.testing.assert_allclose(metrics8['sample_tokens'], mask.sum() / (CLIPS * K), rtol=1e-6)
  np.testing.assert_allclose(metrics8['reward_mean'], rollout['rewards'].mean(), rtol=1e-5)
  assert metrics8['advantage_std'] == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize(
  'mesh_shape', [(2, 4, 1), (1, 8, 1), (2, 2, 2), (1, 4, 2)], ids=lambda s: 'x'.join(map(str, s))
)
def test_update_on_every_mesh_equals_one_device(mesh_shape):
  rollout = _rollout()
  grads, metrics = _gradient(8, True, 'tokens', rollout, mesh_shape=mesh_shape)
  grads1, metrics1 = _gradient(1, True, 'tokens', rollout)
  _assert_trees_close(grads, grads1)
  for key in metrics1:
    np.testing.assert_allclose(metrics[key], metrics1[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_tokens_per_device_are_uneven():
  # Token-weighted normalisation is only tested if devices differ in tokens.
  mask = _rollout()['samples'] != tokenizer.PAD_ID
  assert len(set(mask.reshape(8, -1).sum(axis=1).tolist())) == 8


def _sample(devices, params, mesh_shape=None):
  config, model, _ = _setup()
  settings = decoding.make_decode_settings(config.decode, method='sample', max_len=LENGTH)
  mesh = _mesh(mesh_shape)[1] if mesh_shape else parallel.create_mesh(None, devices)
  fn = steps.make_sample_step(
    mesh,
    K,
    model=model,
    sample_settings=settings,
    greedy_settings=settings.replace(method='greedy'),
    frontend_cfg=config.frontend,
    sample_rate=SAMPLE_RATE,
  )
  ban = jnp.zeros((VOCAB,), bool)
  return parallel.to_host(
    fn(params, parallel.shard_batch(_audio(), mesh), jax.random.key(5), 7, ban)
  )


@functools.lru_cache(maxsize=1)
def _samples8():
  return _sample(jax.devices(), _setup()[2])


def test_samples_end_with_eos_and_match_teacher_forcing():
  out8 = _samples8()
  samples = out8['samples']
  assert samples.shape == (CLIPS, K, LENGTH)
  # Every sample ends with EOS (then PAD), and samples of a clip differ.
  assert np.all(np.sum(samples == tokenizer.EOS_ID, axis=-1) == 1)
  assert len({tuple(s) for s in samples.reshape(-1, LENGTH).tolist()}) > CLIPS
  assert out8['greedy'].shape == (CLIPS, LENGTH)
  # The sampler's log p (EOS included) is what the update differentiates.
  recomputed = _seq_log_probs(_setup()[2], samples)
  np.testing.assert_allclose(out8['sample_log_probs'], recomputed, rtol=1e-4, atol=1e-4)


def test_samples_on_a_sharded_mesh_equal_eight_data_devices():
  # Keys are drawn for the global batch: the mesh changes no sample.
  sharded = _sample(jax.devices(), _setup()[2], mesh_shape=(1, 4, 2))
  expected = _samples8()
  np.testing.assert_array_equal(sharded['samples'], expected['samples'])
  np.testing.assert_array_equal(sharded['greedy'], expected['greedy'])
  np.testing.assert_allclose(
    sharded['sample_log_probs'], expected['sample_log_probs'], rtol=1e-4, atol=1e-4
  )


def test_update_raises_log_prob_of_the_high_reward_sample():
  _, _, params = _setup()
  samples = _samples8()['samples']
  r = np.zeros((CLIPS, K), np.float32)
  r[0, 0] = 10.0  # one sample is much better than every other
  rollout = {
    'samples': samples,
    'rewards': r,
    'baselines': rewards.baseline_rewards(r, 'mean_others'),
  }
  before = _seq_log_probs(params, samples)
  grads, metrics = _gradient(8, True, 'tokens', rollout, params)
  new_params = jax.tree.map(lambda p, g: p - 0.05 * g, params, grads)  # one SGD step
  after = _seq_log_probs(new_params, samples)
  change = np.asarray(after - before)
  assert change[0, 0] > 0.01, change[0]
  assert np.argmax(change) == 0  # the largest increase of all samples
  assert np.all(change[0, 1:] < 0)  # the clip's other samples (negative advantage) go down
  # Leave-one-out advantages 10, -5, -5 (mean 0 over the batch) standardised.
  assert metrics['advantage_max'] == pytest.approx(10 / np.sqrt(150 / (CLIPS * K)), rel=1e-4)


def _references(seed: int = 1) -> np.ndarray:
  """One reference per clip: words, EOS, PAD, of uneven lengths."""
  rng = np.random.default_rng(seed)
  targets = np.zeros((CLIPS, LENGTH), np.int32)
  for i in range(CLIPS):
    n = int(rng.integers(1, LENGTH))
    targets[i, :n] = rng.integers(4, VOCAB, n)
    targets[i, n] = tokenizer.EOS_ID
  return targets


def test_reference_cross_entropy_term_adds_its_weighted_gradient_on_any_mesh():
  # loss = policy term + w x (CE per token of the references): the gradient moves by
  # exactly w x the gradient of the CE written out on one device, on 8 devices too.
  config, model, params = _setup()
  rollout, targets, weight = _rollout(), _references(), 0.5

  @jax.jit
  def reference_ce(params):
    features, paddings = train_steps.compute_features(_audio(), None, config.frontend, SAMPLE_RATE)
    encoded, enc_paddings = model.apply({'params': params}, features, paddings, method='encode')
    logits = model.apply(
      {'params': params},
      encoded,
      enc_paddings,
      tokenizer.shift_right(jnp.asarray(targets)),
      method='decode',
    )
    log_p = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_p, jnp.asarray(targets)[..., None], axis=-1)[..., 0]
    mask = targets != tokenizer.PAD_ID
    return jnp.sum(nll * mask) / mask.sum()

  ce, ce_grad = jax.value_and_grad(reference_ce)(params)
  plain, plain_metrics = _gradient(1, True, 'tokens', rollout)
  with_ce1, metrics1 = _gradient(1, True, 'tokens', rollout, targets=targets, ce=weight)
  with_ce8, metrics8 = _gradient(
    8, True, 'tokens', rollout, targets=targets, ce=weight, mesh_shape=(2, 2, 2)
  )
  expected = jax.tree.map(lambda g, c: g + weight * c, plain, ce_grad)
  _assert_trees_close(with_ce1, expected, rtol=1e-4)
  _assert_trees_close(with_ce8, with_ce1)
  np.testing.assert_allclose(metrics1['ce_loss'], ce, rtol=1e-5)
  np.testing.assert_allclose(metrics8['ce_loss'], ce, rtol=1e-5)
  assert metrics1['loss'] == pytest.approx(plain_metrics['loss'], rel=1e-5)  # The policy term.
  assert 'ce_loss' not in plain_metrics
