"""Tests of the conformer-transformer captioner (tiny sizes, CPU)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from aac_jax import decoding
from aac_jax.models import (
  Captioner,
  CaptionerConfig,
  count_params,
  init_params,
  layers,
  make_captioner_config,
)
from configs import base

MELS = 8
# Tiny programs: compile fast rather than run fast.
fast_jit = functools.partial(jax.jit, compiler_options={'xla_backend_optimization_level': 0})


def tiny_config(**changes) -> CaptionerConfig:
  values = dict(
    vocab_size=20,
    subsampling=4,
    encoder_dim=16,
    encoder_layers=2,
    encoder_heads=2,
    encoder_ff_dim=32,
    conv_kernel_size=5,
    decoder_dim=16,
    decoder_layers=2,
    decoder_heads=2,
    decoder_ff_dim=32,
    dropout=0.0,
    attention_dropout=0.0,
    max_decode_len=12,
  )
  values.update(changes)
  return CaptionerConfig(**values)


def random_params(model, seed):
  """Random parameters from the init's shapes (compiling the init is slow on CPU)."""
  shapes = jax.eval_shape(lambda: init_params(model, jax.random.key(0), num_mels=MELS))
  leaves, tree = jax.tree.flatten_with_path(shapes)
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    scale = 1.0 if path[-1].key == 'scale' else 0.0
    return jnp.asarray(scale + 0.3 * rng.normal(size=leaf.shape), jnp.float32)

  return jax.tree.unflatten(tree, [draw(path, leaf) for path, leaf in leaves])


def test_make_captioner_config_reads_config_model():
  model_cfg = base.get_model_config()
  model_cfg.subsampling = 8
  cfg = make_captioner_config(model_cfg, vocab_size=123)
  assert (cfg.vocab_size, cfg.subsampling, cfg.encoder_dim) == (123, 8, model_cfg.encoder_dim)
  assert (cfg.decoder_layers, cfg.max_decode_len) == (model_cfg.decoder_layers, 32)
  assert not cfg.deterministic and not cfg.decode
  assert cfg.replace(decode=True).decode
  model_cfg.subsampling = 3
  with pytest.raises(ValueError, match='subsampling'):
    make_captioner_config(model_cfg, vocab_size=123)


@pytest.mark.parametrize('factor', [2, 4, 8])
def test_padding_does_not_change_real_frames(factor):
  """Appending padding (filled with garbage) leaves real encodings unchanged."""
  cfg = tiny_config(subsampling=factor, deterministic=True)
  model = Captioner(cfg)
  params = random_params(model, 0)
  rng = np.random.default_rng(0)
  lengths = np.array([37, 23])
  feats = rng.normal(size=(2, 50, MELS)).astype(np.float32)
  pads = (np.arange(50)[None, :] >= lengths[:, None]).astype(np.float32)
  tokens = jnp.asarray(rng.integers(3, cfg.vocab_size, size=(2, 6)), jnp.int32)

  @fast_jit
  def run(f, p):
    encoded, enc_pads = model.apply({'params': params}, f, p, method='encode')
    logits = model.apply({'params': params}, encoded, enc_pads, tokens, method='decode')
    return encoded, enc_pads, logits

  short_enc, short_pad, short_logits = run(feats[:, :37], pads[:, :37])
  long_enc, long_pad, long_logits = run(feats, pads)
  assert short_enc.shape[1] == -(-37 // factor)
  real_out = -(-lengths // factor)  # ceil
  for i, n in enumerate(real_out):
    assert short_pad[i].sum() == short_pad.shape[1] - n
    assert long_pad[i].sum() == long_pad.shape[1] - n
    np.testing.assert_allclose(long_enc[i, :n], short_enc[i, :n], atol=2e-5, rtol=1e-5)
  # Cross-attention ignores the padded encoder frames too.
  np.testing.assert_allclose(long_logits, short_logits, atol=2e-5, rtol=1e-5)


def test_cached_steps_match_teacher_forcing():
  cfg = tiny_config()
  model = Captioner(cfg)
  params = random_params(model, 1)
  rng = np.random.default_rng(1)
  feats = jnp.asarray(rng.normal(size=(3, 30, MELS)), jnp.float32)
  pads = jnp.asarray(np.arange(30)[None, :] >= np.array([[30], [17], [9]]), jnp.float32)
  tokens = jnp.asarray(rng.integers(3, cfg.vocab_size, size=(3, 10)), jnp.int32)

  @fast_jit
  def both(params):
    ev = decoding.eval_model(model)
    encoded, enc_pads = ev.apply({'params': params}, feats, pads, method='encode')
    full = ev.apply({'params': params}, encoded, enc_pads, tokens, method='decode')
    step_fn, cache = decoding.make_step_fn(model, params, encoded, enc_pads, tokens.shape[1])
    _, stepped = jax.lax.scan(lambda c, tok: step_fn(tok[:, None], c)[::-1], cache, tokens.T)
    return full, jnp.swapaxes(stepped, 0, 1)

  full, stepped = both(params)
  assert full.shape == (3, 10, cfg.vocab_size) and full.dtype == jnp.float32
  np.testing.assert_allclose(stepped, full, atol=1e-5, rtol=1e-5)


def test_bf16_compute_keeps_fp32_params_and_dropout_uses_rng():
  cfg = tiny_config(compute_dtype='bfloat16', dropout=0.3)
  model = Captioner(cfg)
  params = random_params(model, 2)
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  feats = jnp.ones((2, 16, MELS)) * jnp.arange(16)[None, :, None]
  pads = jnp.zeros((2, 16))
  tokens = jnp.ones((2, 5), jnp.int32)
  apply = fast_jit(
    lambda r: model.apply({'params': params}, feats, pads, tokens, rngs={'dropout': r})
  )
  a, b = apply(jax.random.key(0)), apply(jax.random.key(1))
  assert a.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(a)))
  assert float(jnp.max(jnp.abs(a - b))) > 1e-3  # dropout is on and seeded


def test_count_params():
  params = {'a': jnp.zeros((3, 4)), 'b': {'c': jnp.zeros((5,))}}
  assert count_params(params) == 17


def test_overfits_one_batch():
  """A few hundred Adam steps drive the loss on one batch near zero."""
  cfg = tiny_config(
    encoder_dim=32,
    decoder_dim=32,
    encoder_ff_dim=64,
    decoder_ff_dim=64,
    encoder_layers=1,
    decoder_layers=1,
  )
  model = Captioner(cfg)
  params = fast_jit(lambda key: init_params(model, key, num_mels=MELS))(jax.random.key(3))
  rng = np.random.default_rng(3)
  feats = jnp.asarray(rng.normal(size=(4, 40, MELS)), jnp.float32)
  pads = jnp.asarray(np.arange(40)[None, :] >= np.array([[40], [33], [25], [40]]), jnp.float32)
  lengths = np.array([8, 5, 6, 3])
  targets = rng.integers(4, cfg.vocab_size, size=(4, 10))
  targets[np.arange(4), lengths] = decoding.DecodeSettings().eos_id
  targets[np.arange(10)[None, :] > lengths[:, None]] = 0
  targets = jnp.asarray(targets, jnp.int32)
  inputs = jnp.pad(targets[:, :-1], ((0, 0), (1, 0)), constant_values=1)
  weights = (targets != 0).astype(jnp.float32)
  tx = optax.adam(3e-3)

  def loss_fn(params):
    logits = model.apply({'params': params}, feats, pads, inputs)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return jnp.sum(nll * weights) / jnp.sum(weights)

  @jax.jit  # Runs 300 steps: worth the optimising compile.
  def train(params):
    def step(carry, _):
      params, opt_state = carry
      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = tx.update(grads, opt_state)
      return (optax.apply_updates(params, updates), opt_state), loss

    (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), None, length=300)
    return params, losses

  params, losses = train(params)
  assert float(losses[0]) > 2.0
  assert float(losses[-1]) < 0.05, float(losses[-1])
  settings = decoding.make_decode_settings(None, max_len=10)
  out = decoding.make_generate_fn(model, settings)(params, feats, pads)
  np.testing.assert_array_equal(out.tokens, targets)


def test_fused_attention_projections_keep_dense_general_parameters_and_outputs():
  # The fused query/key/value projection has the parameters (names, shapes,
  # initial values) and the outputs of one DenseGeneral per projection.
  class Separate(nn.Module):
    @nn.compact
    def __call__(self, x):
      return [nn.DenseGeneral((4, 6), name=n)(x) for n in ('query', 'key', 'value')]

  class Fused(nn.Module):
    @nn.compact
    def __call__(self, x):
      return layers._fused_heads(x, 24, 4, jnp.float32, ('query', 'key', 'value'))

  x = jax.random.normal(jax.random.key(1), (2, 5, 12))
  separate = Separate().init(jax.random.key(0), x)
  fused = nn.unbox(Fused().init(jax.random.key(0), x))
  assert jax.tree.structure(separate) == jax.tree.structure(fused)
  jax.tree.map(np.testing.assert_array_equal, separate, fused)
  biased = jax.tree.map(lambda p: p + 0.1, separate)  # Non-zero biases too.
  for a, b in zip(Separate().apply(biased, x), Fused().apply(biased, x), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
