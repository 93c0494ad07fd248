"""The data-parallel train step: exact gradients over 8 simulated devices.

The "optimizer" in these tests stores the gradient it receives in its state
(`_capture_gradients`), so the real step is tested end to end and the
gradient comes out bit for bit (AdamW would hide a gradient scaled by the
device count: its first update is about lr * sign(gradient)).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from aac_jax import models
from aac_jax.data import tokenizer
from aac_jax.models import keyword_head
from aac_jax.train import parallel, state, steps, trainer
from configs import base

VOCAB = 24  # Divisible by a tensor axis of 2.
BATCH = 16
SAMPLES = 2400  # 0.15 s at 16 kHz: 16 frames.
LENGTH = 8


def _config():
  config = base.get_base_config()
  config.frontend.spec_augment = False
  config.frontend.n_mels = 16
  config.model.update(
    subsampling=2,
    encoder_dim=16,
    encoder_layers=1,
    encoder_heads=2,
    encoder_ff_dim=32,
    conv_kernel_size=3,
    decoder_dim=16,
    decoder_layers=1,
    decoder_heads=2,
    decoder_ff_dim=32,
    max_decode_len=8,
  )
  m = config.model
  # Dropout streams depend on the device a row lands on; the parity needs it off.
  m.dropout = m.attention_dropout = 0.0
  return config


def _batch(seed: int = 0) -> dict[str, np.ndarray]:
  """A batch whose devices hold very different numbers of real tokens."""
  rng = np.random.default_rng(seed)
  audio = rng.normal(0, 0.1, (BATCH, SAMPLES)).astype(np.float32)
  lengths = rng.integers(SAMPLES // 3, SAMPLES + 1, BATCH)
  paddings = (np.arange(SAMPLES)[None] >= lengths[:, None]).astype(np.float32)
  # Device d (2 rows each) gets captions of about d words: 0..7 real tokens + EOS.
  words = np.repeat(np.arange(8), 2)
  targets = np.zeros((BATCH, LENGTH), np.int32)
  for i, n in enumerate(words):
    targets[i, :n] = rng.integers(4, VOCAB, n)
    targets[i, n] = tokenizer.EOS_ID
  return {'audio': audio * (1 - paddings), 'audio_paddings': paddings, 'targets': targets}


@functools.lru_cache(maxsize=1)
def _setup():
  config = _config()
  model = models.Captioner(models.make_captioner_config(config.model, VOCAB))
  params = models.init_params(model, jax.random.key(1), num_mels=16, length=LENGTH)
  return config, model, params


def _capture_gradients() -> optax.GradientTransformation:
  """Leaves params unchanged and keeps the last gradient as its state."""
  return optax.GradientTransformation(
    init=lambda params: jax.tree.map(jnp.zeros_like, params),
    update=lambda grads, opt_state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads),
  )


@jax.jit
def _reference(params, batch):
  """Loss, gradient and per-device mean losses on one device, no shard_map."""
  config, model, _ = _setup()

  def loss_fn(p):
    features, paddings = steps.compute_features(batch, None, config.frontend, 16000)
    inputs = tokenizer.shift_right(batch['targets'])
    logits = model.apply({'params': p}, features, paddings, inputs)
    smoothing = config.optim.label_smoothing
    loss_sum, count = steps.token_loss_sum(logits, batch['targets'], smoothing)
    rows = BATCH // 8
    device_means = [
      jnp.divide(
        *steps.token_loss_sum(logits[i : i + rows], batch['targets'][i : i + rows], smoothing)
      )
      for i in range(0, BATCH, rows)
    ]
    return loss_sum / count, jnp.stack(device_means)

  (loss, device_means), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  return loss, grads, device_means


@functools.lru_cache(maxsize=1)
def _reference_result():
  _, _, params = _setup()
  return parallel.to_host(_reference(params, _batch()))


def _one_step_gradient(
  devices, batch, grad_accum_steps=1, setup=None, keyword_loss_weight=0.0, mesh_shape=None
):
  """Returns (gradient, metrics, state) of one train step on `devices`.

  `mesh_shape` `(data, fsdp, tensor)` lays the devices out as
  `config.mesh` would (default: all on data).
  """
  config, model, params = (setup or _setup)()
  if mesh_shape:
    config = config.copy_and_resolve_references()
    config.mesh.update(dict(zip(('data', 'fsdp', 'tensor'), mesh_shape, strict=True)))
  mesh = parallel.create_mesh(config.mesh if mesh_shape else None, devices)
  tx = _capture_gradients()
  sharding = trainer.state_sharding_for(config, model, tx, mesh)
  step = steps.make_train_step(
    mesh,
    sharding,
    donate=False,
    model=model,
    tx=tx,
    schedule=optax.constant_schedule(1.0),
    frontend_cfg=config.frontend,
    sample_rate=16000,
    label_smoothing=config.optim.label_smoothing,
    grad_accum_steps=grad_accum_steps,
    keyword_loss_weight=keyword_loss_weight,
  )
  train_state = jax.device_put(state.create_train_state(params, tx), sharding)
  new_state, metrics = step(train_state, parallel.shard_batch(batch, mesh), jax.random.key(0))
  return parallel.to_host(new_state.opt_state), parallel.to_host(metrics), new_state


def _assert_trees_close(a, b, rtol=1e-5):
  """Entry by entry with `rtol`, plus `rtol` times the tree's largest entry.

  Reduction order differs between layouts, so entries far smaller than the
  rest (some gradients are rounding noise around 0, e.g. a bias followed by
  a normalisation) carry float32 rounding of the larger ones; a gradient
  scaled by the device count would be off by 700 %.
  """
  flat_a, flat_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(flat_a) == len(flat_b)
  scale = max(float(np.max(np.abs(y))) for y in flat_b)
  for x, y in zip(flat_a, flat_b, strict=True):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * scale)


def test_eight_devices_match_single_device_gradient():
  assert jax.device_count() == 8
  batch = _batch()
  loss, grads, _ = _reference_result()
  grads8, metrics8, _ = _one_step_gradient(jax.devices(), batch)
  _assert_trees_close(grads8, grads)
  np.testing.assert_allclose(metrics8['loss'], loss, rtol=1e-5)
  assert metrics8['tokens'] == np.sum(batch['targets'] != tokenizer.PAD_ID)
  np.testing.assert_allclose(metrics8['grad_norm'], optax.tree.norm(grads), rtol=1e-5)


MESHES = [(8, 1, 1), (2, 4, 1), (1, 8, 1), (2, 2, 2), (1, 4, 2)]


@pytest.mark.parametrize('mesh_shape', MESHES, ids=lambda s: 'x'.join(map(str, s)))
def test_every_mesh_matches_single_device_gradient(mesh_shape):
  batch = _batch()
  loss, grads, _ = _reference_result()
  grads_mesh, metrics, new_state = _one_step_gradient(jax.devices(), batch, mesh_shape=mesh_shape)
  _assert_trees_close(grads_mesh, grads)
  np.testing.assert_allclose(metrics['loss'], loss, rtol=1e-5)
  np.testing.assert_allclose(metrics['grad_norm'], optax.tree.norm(grads), rtol=1e-5)
  # Each parameter (and its optimizer copy) lives where the rules say.
  config, model, _ = _setup()
  mesh = new_state.params['decoder']['embed']['embedding'].sharding.mesh
  logical, shapes = models.param_axes(model, num_mels=16, length=LENGTH)
  expected = parallel.param_shardings(logical, shapes, mesh, parallel.mesh_rules(None))
  for got, want in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(expected), strict=True):
    assert got.sharding.is_equivalent_to(want, got.ndim), (got.sharding, want)
  split = [x for x in jax.tree.leaves(new_state.params) if not x.sharding.is_fully_replicated]
  assert bool(split) == (mesh_shape[0] != 8)


@pytest.mark.parametrize('remat', ['block', 'full'])
def test_rematerialised_step_has_the_same_gradient(remat):
  # Recomputing blocks (or everything) in the backward pass changes memory, not results.
  config, _, params = _setup()

  def setup():
    remat_config = config.copy_and_resolve_references()
    remat_config.model.remat = remat
    cfg = models.make_captioner_config(remat_config.model, VOCAB)
    return remat_config, models.Captioner(cfg), params

  loss, grads, _ = _reference_result()
  grads_remat, metrics, _ = _one_step_gradient(
    jax.devices(), _batch(), grad_accum_steps=2, setup=setup, mesh_shape=(2, 2, 2)
  )
  _assert_trees_close(grads_remat, grads)
  np.testing.assert_allclose(metrics['loss'], loss, rtol=1e-5)


def test_batch_has_uneven_tokens_per_device():
  # The mean of per-device means differs from the global token mean on this
  # batch, so the equality above is not an accident of the data.
  loss, _, device_means = _reference_result()
  tokens = (_batch()['targets'] != tokenizer.PAD_ID).reshape(8, -1).sum(axis=1)
  assert len(set(tokens.tolist())) == 8
  assert abs(float(np.mean(device_means)) - float(loss)) > 1e-3


def test_gradient_accumulation_equals_full_batch():
  # 8 devices x 2 rows, 2 micro-batches of 1 row each.
  loss, grads, _ = _reference_result()
  grads_accum, metrics_accum, _ = _one_step_gradient(jax.devices(), _batch(), grad_accum_steps=2)
  _assert_trees_close(grads_accum, grads)
  np.testing.assert_allclose(metrics_accum['loss'], loss, rtol=1e-5)


KEYWORD_WEIGHT = 0.7


@functools.lru_cache(maxsize=1)
def _setup_keywords():
  config = _config()
  config.model.keyword_head = True
  model = models.Captioner(models.make_captioner_config(config.model, VOCAB))
  params = models.init_params(model, jax.random.key(2), num_mels=16, length=LENGTH)
  return config, model, params


@jax.jit
def _keyword_reference(params, batch):
  """Token mean loss + weight * keyword BCE per global caption word, on one device."""
  config, model, _ = _setup_keywords()

  def loss_fn(p):
    features, paddings = steps.compute_features(batch, None, config.frontend, 16000)
    inputs = tokenizer.shift_right(batch['targets'])
    logits, probs = model.apply({'params': p}, features, paddings, inputs, method='with_keywords')
    loss_sum, count = steps.token_loss_sum(logits, batch['targets'], config.optim.label_smoothing)
    words = keyword_head.keyword_targets(batch['targets'], VOCAB)
    kw_sum = keyword_head.keyword_loss_sum(probs, words)
    return loss_sum / count + KEYWORD_WEIGHT * kw_sum / jnp.sum(words), kw_sum / jnp.sum(words)

  (_, kw_loss), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  return grads, kw_loss


@pytest.mark.parametrize('grad_accum_steps', [1, 2])
def test_keyword_loss_eight_devices_match_single_device(grad_accum_steps):
  _, _, params = _setup_keywords()
  batch = _batch(seed=5)
  grads, kw_loss = parallel.to_host(_keyword_reference(params, batch))
  grads8, metrics8, _ = _one_step_gradient(
    jax.devices(), batch, grad_accum_steps, _setup_keywords, KEYWORD_WEIGHT
  )
  _assert_trees_close(grads8, grads)
  np.testing.assert_allclose(metrics8['keyword_loss'], kw_loss, rtol=1e-5)
  # The head is trained: its gradient is not zero.
  assert np.max(np.abs(grads['keyword_head']['frame_logits']['kernel'])) > 0


def test_several_references_per_clip_equal_repeated_clips():
  # [16 clips, 2 refs, len] with one shared encoding per clip on 8 devices
  # = 32 rows (each clip twice, one reference each) on one device.
  _, _, params = _setup()
  first, second = _batch(seed=7), _batch(seed=8)
  multi = dict(first, targets=np.stack([first['targets'], second['targets']], axis=1))
  repeated = {
    'audio': np.repeat(first['audio'], 2, axis=0),
    'audio_paddings': np.repeat(first['audio_paddings'], 2, axis=0),
    'targets': multi['targets'].reshape(2 * BATCH, LENGTH),
  }
  loss, grads, _ = parallel.to_host(_reference(params, repeated))
  grads8, metrics8, _ = _one_step_gradient(jax.devices(), multi)
  _assert_trees_close(grads8, grads)
  np.testing.assert_allclose(metrics8['loss'], loss, rtol=1e-5)
  assert metrics8['tokens'] == np.sum(multi['targets'] != tokenizer.PAD_ID)
