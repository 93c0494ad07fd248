"""tools/torch_captioner.py is the aac_jax captioner: same parameters, logits, gradients, updates.

The PyTorch model is the eager reference of `tools/bench_train.py
--compare_torch`; these tests load random aac_jax parameters into it (every
leaf random, biases and LayerNorm scales too) and compare with aac_jax on a
shrunk demo config (2 s clips, 2 clips x 2 references, one clip and some
captions padded).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from aac_jax import models
from aac_jax.data import tokenizer
from aac_jax.train import state, steps
from configs import base, synthetic_demo
from tools import torch_captioner

VOCAB = 262
LENGTH = 10
CAPTION_LENGTHS = ((10, 6), (3, 8))  # Real tokens of each reference (EOS included).
NUM_UPDATES = 3
FAST = {'xla_backend_optimization_level': 0}  # Compiles faster.


@pytest.fixture(scope='module', autouse=True)
def one_thread():
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


def _param_shapes(config, vocab_size):
  model = models.Captioner(models.make_captioner_config(config.model, vocab_size))
  return jax.eval_shape(
    lambda: models.init_params(model, jax.random.key(0), num_mels=config.frontend.n_mels)
  )


@pytest.mark.parametrize(
  'get_config, vocab_size, expected',
  [(synthetic_demo.get_config, 262, 783_632), (base.get_base_config, 5000, 15_195_392)],
  ids=['demo', 'base'],
)
def test_same_parameters(get_config, vocab_size, expected):
  config = get_config()
  shapes = _param_shapes(config, vocab_size)
  model = torch_captioner.from_config(config, vocab_size)
  assert models.count_params(shapes) == expected
  assert torch_captioner.count_params(model) == expected
  # Every torch parameter gets exactly one flax source of the right shape.
  torch_captioner.load_jax_params(model, jax.tree.map(lambda s: np.zeros(s.shape), shapes))
  assert all(not p.any() for p in model.parameters())


def test_load_rejects_missing_or_extra_parameters():
  config = synthetic_demo.get_config()
  shapes = _param_shapes(config, VOCAB)
  params = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes)
  model = torch_captioner.from_config(config, VOCAB)
  del params['decoder']['layer0']['ff']['wi']['bias']
  with pytest.raises(ValueError, match='not found'):
    torch_captioner.load_jax_params(model, params)
  params = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes)
  params['decoder']['extra'] = {'kernel': np.zeros((2, 2), np.float32)}
  with pytest.raises(ValueError, match='exactly once'):
    torch_captioner.load_jax_params(model, params)


def test_learning_rate_schedule():
  config = synthetic_demo.get_config()
  for warmup, num_steps in ((100, 1200), (0, 50), (5, 3)):
    config.optim.warmup_steps = warmup
    schedule = state.create_learning_rate_schedule(config.optim, num_steps)
    torch_lr = torch_captioner.learning_rate_fn(config.optim, num_steps)
    for step in range(0, num_steps + 10, 7):
      np.testing.assert_allclose(torch_lr(step), float(schedule(step)), rtol=1e-5, atol=1e-9)


def test_spec_augment_masks_real_frames_with_their_mean():
  cfg = base.get_frontend_config()
  features = torch.randn(3, 50, 64)
  paddings = torch.zeros(3, 50)
  paddings[1, 30:] = 1.0
  generator = torch.Generator().manual_seed(0)
  masked = torch_captioner.spec_augment(features, paddings, cfg, generator)
  changed = masked != features
  assert changed.any()
  assert not changed[1, 30:].any()  # Padding untouched.
  for b, length in enumerate((50, 30, 50)):
    fill = features[b, :length].mean()
    np.testing.assert_allclose(masked[b][changed[b]].numpy(), fill.item(), rtol=1e-5)
    # Time bands are at most time_mask_ratio * length frames (2 of them).
    masked_rows = changed[b].all(dim=1).sum().item()
    assert masked_rows <= 2 * int(cfg.time_mask_ratio * length)
  cfg.spec_augment = False
  assert torch_captioner.spec_augment(features, paddings, cfg) is features


def _small_config():
  config = synthetic_demo.get_config()  # No dropout, no SpecAugment.
  config.dataset.max_audio_seconds = 2.0
  config.frontend.feature_stats = 'fixed'
  config.frontend.feature_mean = -4.0  # Exercises the normalisation.
  config.frontend.feature_std = 3.0
  config.optim.warmup_steps = 2  # Updates at lr 0, lr / 2, then the cosine part.
  config.train.num_steps = 6
  return config


def _batch(config):
  rng = np.random.default_rng(0)
  samples = int(config.dataset.max_audio_seconds * config.dataset.sample_rate)
  audio = rng.normal(0, 0.1, (2, samples)).astype(np.float32)
  paddings = np.zeros((2, samples), np.float32)
  paddings[1, samples - 9000 :] = 1.0  # Non-zero audio under the padding.
  targets = rng.integers(4, VOCAB, (2, 2, LENGTH)).astype(np.int32)
  for (b, r), length in np.ndenumerate(np.array(CAPTION_LENGTHS)):
    targets[b, r, length - 1] = tokenizer.EOS_ID
    targets[b, r, length:] = tokenizer.PAD_ID
  return {'audio': audio, 'audio_paddings': paddings, 'targets': targets}


def _random_params(shapes, seed=0):
  """Random values for every leaf, biases and LayerNorm scales included (init has 0 and 1)."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    names = [k.key for k in path]
    shape = leaf.shape
    if names[-1] == 'embedding':
      std = shape[1] ** -0.5
    elif names[-1] == 'kernel':
      heads_in = names[-2] in ('query', 'key', 'value')  # [in, heads, head_dim]
      std = (shape[0] if heads_in else np.prod(shape[:-1])) ** -0.5
    elif names[-1] == 'scale':
      return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    else:
      std = 0.1
    return (std * rng.standard_normal(shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope='module')
def setup():
  """Config, batch, random params, the optax optimizer and a jitted aac_jax update.

  `update(params, opt_state, batch)` gives `(loss, logits, grads, params,
  opt_state)`: the loss, logits and gradients at `params`, then one optimizer
  update (one compilation serves both parity tests).
  """
  config = _small_config()
  model = models.Captioner(models.make_captioner_config(config.model, VOCAB, deterministic=True))
  params = _random_params(_param_shapes(config, VOCAB))
  tx, _ = state.create_optimizer(config.optim, config.train.num_steps)

  def loss_fn(params, batch):
    features, paddings = steps.compute_features(
      batch, None, config.frontend, config.dataset.sample_rate
    )
    targets = batch['targets']
    logits = model.apply({'params': params}, features, paddings, tokenizer.shift_right(targets))
    loss_sum, tokens = steps.token_loss_sum(logits, targets, config.optim.label_smoothing)
    return loss_sum / jnp.maximum(tokens, 1.0), logits

  def update(params, opt_state, batch):
    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return loss, logits, grads, optax.apply_updates(params, updates), opt_state

  return config, _batch(config), params, tx, jax.jit(update, compiler_options=FAST)


def _torch_model(config, params):
  model = torch_captioner.from_config(config, VOCAB)
  torch_captioner.load_jax_params(model, params)
  return model


def test_forward_and_gradients_match(setup):
  config, batch, params, tx, update = setup
  loss, logits, grads, _, _ = update(params, tx.init(params), batch)

  model = _torch_model(config, params).eval()
  tbatch = torch_captioner.torch_batch(batch, 'cpu')
  targets = tbatch['targets']
  torch_logits = model(
    tbatch['audio'], tbatch['audio_paddings'], torch_captioner.shift_right(targets)
  )
  torch_loss = torch_captioner.token_loss(torch_logits, targets, config.optim.label_smoothing)
  torch_loss.backward()

  logits = np.asarray(logits)
  assert torch_logits.shape == logits.shape == (2, 2, LENGTH, VOCAB)
  scale = np.abs(logits).max()
  np.testing.assert_allclose(torch_logits.detach().numpy(), logits, rtol=0, atol=1e-5 * scale)
  np.testing.assert_allclose(torch_loss.item(), float(loss), rtol=1e-6)

  expected = torch_captioner.jax_to_torch_arrays(model, grads)
  for name, param in model.named_parameters():
    want = expected[name]
    np.testing.assert_allclose(
      param.grad.numpy(), want, rtol=0, atol=1e-4 * np.abs(want).max(), err_msg=name
    )


def test_train_steps_match(setup):
  config, batch, initial, tx, update = setup
  params, opt_state = initial, tx.init(initial)
  jax_losses, jax_grads = [], []
  for _ in range(NUM_UPDATES):
    loss, _, grads, params, opt_state = update(params, opt_state, batch)
    jax_losses.append(float(loss))
    jax_grads.append(grads)

  model = _torch_model(config, initial)
  step = torch_captioner.make_train_step(
    model, config.optim, config.train.num_steps, config.optim.label_smoothing
  )
  tbatch = torch_captioner.torch_batch(batch, 'cpu')
  torch_losses = [step(tbatch).item() for _ in range(NUM_UPDATES)]

  np.testing.assert_allclose(torch_losses, jax_losses, rtol=1e-5)
  assert torch_losses[1] == pytest.approx(torch_losses[0], rel=1e-6)  # lr 0 at step 0.
  assert torch_losses[2] < torch_losses[1]
  expected = torch_captioner.jax_to_torch_arrays(model, params)
  start = torch_captioner.jax_to_torch_arrays(model, initial)
  grads = [torch_captioner.jax_to_torch_arrays(model, g) for g in jax_grads]
  lr = config.optim.lr
  num_well = 0
  for name, param in model.named_parameters():
    diff = np.abs(param.detach().numpy() - expected[name])
    assert not np.array_equal(expected[name], start[name]), name
    # Adam divides by |g|: where a gradient is at float-noise level in some update
    # (key biases: softmax ignores a shift of a query's logits, so their gradient is
    # exactly 0), the step's direction is noise in both frameworks; such elements
    # are only held to a fraction of a step. Everything else agrees to 0.1% of one.
    well = np.min([np.abs(g[name]) for g in grads], axis=0) >= 1e-6
    num_well += well.sum()
    assert diff[well].max(initial=0) <= 1e-3 * lr, name
    assert diff.max() <= 0.25 * lr, name
  assert num_well >= 0.98 * torch_captioner.count_params(model)


def test_bench_parts_build_and_run_on_both_sides():
  """tools/bench_train_parts.py: every part runs in aac_jax and PyTorch, parameter counts equal."""
  from tools import bench_train_parts  # noqa: PLC0415 (defines bench_train's absl flags)

  config = _small_config()
  parts = bench_train_parts.build_parts(config, VOCAB, _batch(config))
  assert set(bench_train_parts.MODEL_PARTS) <= set(parts)
  counts = {name: count for name, (_, _, count) in parts.items()}
  assert counts['optimizer'] == models.count_params(_param_shapes(config, VOCAB))
  model_parts = counts['subsampling'] + config.model.encoder_layers * counts['block']
  assert model_parts + counts['decoder+loss'] == counts['optimizer']  # Nothing left out.
  for jax_run, torch_run, _ in parts.values():
    jax_run()
    torch_run()
