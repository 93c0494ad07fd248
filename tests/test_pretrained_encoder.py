"""Captioner on a pretrained tagger: padding, freezing, encoder_init, front end, mixup."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from aac_jax.audio import frontend
from aac_jax.models import Captioner, init_params, mixup, pretrained_setup, pretrained_store
from aac_jax.models.config import CaptionerConfig
from configs import base

VOCAB = 20


def _config(encoder='convnext', **changes):
  values = dict(
    vocab_size=VOCAB,
    encoder=encoder,
    encoder_projection=True,
    encoder_dim=32,
    encoder_layers=1,
    encoder_heads=2,
    encoder_ff_dim=64,
    decoder_dim=32,
    decoder_layers=1,
    decoder_heads=2,
    decoder_ff_dim=64,
    max_decode_len=8,
    dropout=0.0,
    attention_dropout=0.0,
    deterministic=True,
  )
  values.update(changes)
  return CaptionerConfig(**values)


def _features(encoder, lengths, width):
  cfg = base.get_base_config()
  cfg.model.encoder = encoder
  cfg.dataset.sample_rate = 32000
  pretrained_setup.resolve_encoder_frontend(cfg)
  rng = np.random.default_rng(0)
  wave = rng.uniform(-0.5, 0.5, (len(lengths), 100_000)).astype(np.float32)[:, :width]
  pads = (np.arange(width)[None] >= np.asarray(lengths)[:, None]).astype(np.float32)
  wave *= 1 - pads
  return frontend.log_mel(jnp.asarray(wave), jnp.asarray(pads), cfg.frontend, 32000)


@pytest.fixture(scope='module')
def convnext_setup():
  model = Captioner(_config())
  params = init_params(model, jax.random.key(0), num_mels=224)
  return model, params


def test_padding_does_not_change_real_encodings(convnext_setup):
  model, params = convnext_setup
  lengths = [40_000, 52_000]
  short, short_pads = _features('convnext', lengths, 52_000)
  long, long_pads = _features('convnext', lengths, 70_000)
  encode = jax.jit(lambda p, f, q: model.apply({'params': p}, f, q, method='encode'))
  enc_a, pads_a = encode(params, short, short_pads)
  enc_b, pads_b = encode(params, long, long_pads)
  for i in range(2):
    real = int(np.sum(np.asarray(pads_a[i]) < 0.5))
    assert real == int(np.sum(np.asarray(pads_b[i]) < 0.5)) > 0
    np.testing.assert_allclose(enc_a[i, :real], enc_b[i, :real], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('freeze,frozen_stages', [('all', 4), ('2', 2), ('none', 0)])
def test_frozen_leaves_stay_bit_identical(convnext_setup, freeze, frozen_stages):
  _, params = convnext_setup
  cfg = _config(encoder_freeze=freeze)
  mask = pretrained_setup.frozen_mask(params, cfg)
  tagger = mask['encoder']['tagger']
  assert all(jax.tree.leaves(tagger['stem'])) == (frozen_stages > 0)
  for i in range(4):
    assert all(jax.tree.leaves(tagger[f'stages_{i}_0'])) == (i < frozen_stages)
    if i:
      assert all(jax.tree.leaves(tagger[f'down_convs_{i - 1}'])) == (i < frozen_stages)
  assert not any(jax.tree.leaves(mask['decoder']))
  tx = pretrained_setup.freeze_optimizer(optax.adamw(1e-2, weight_decay=0.5), cfg)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  for old, upd, frozen in zip(
    jax.tree.leaves(params), jax.tree.leaves(new), jax.tree.leaves(mask), strict=True
  ):
    assert np.array_equal(old, upd) == frozen


def test_encoder_freeze_is_validated():
  with pytest.raises(ValueError, match="'all', 'none' or a number of stages 0..4"):
    _config(encoder='convnext', encoder_freeze='5')


def test_encoder_init_loads_tagger_and_checks_shapes(tmp_path, convnext_setup):
  model, params = convnext_setup
  tagger = jax.tree.map(lambda x: np.asarray(x) + 1.0, params['encoder']['tagger'])
  tagger = dict(tagger, head={'kernel': np.zeros((768, 527), np.float32)})  # head: ignored
  folder = str(tmp_path / 'convnext')
  pretrained_store.save_converted(folder, tagger, {'encoder': 'convnext', 'frontend': {}})
  loaded = pretrained_setup.load_encoder_init(params, _config(encoder_init=folder))
  np.testing.assert_array_equal(
    loaded['encoder']['tagger']['stages_2_4']['dwconv']['kernel'],
    np.asarray(params['encoder']['tagger']['stages_2_4']['dwconv']['kernel']) + 1.0,
  )
  assert loaded['decoder'] is params['decoder']
  bad = dict(tagger, bn0={'scale': np.ones(3, np.float32), 'bias': np.ones(224, np.float32)})
  pretrained_store.save_converted(folder, bad, {'encoder': 'convnext', 'frontend': {}})
  with pytest.raises(ValueError, match=r'bn0/scale has shape \(3,\), the model needs \(224,\)'):
    pretrained_setup.load_encoder_init(params, _config(encoder_init=folder))
  with pytest.raises(ValueError, match="converted 'convnext' model, not 'cnn14'"):
    pretrained_setup.load_encoder_init(params, _config(encoder='cnn14', encoder_init=folder))


def test_frontend_follows_encoder_and_refuses_other_sample_rate(tmp_path):
  cfg = base.get_base_config()
  cfg.model.encoder = 'convnext'
  cfg.dataset.name = 'clotho_aac'
  with pytest.raises(ValueError, match=r'aac-build-dataset clotho .*--sample_rate 32000'):
    pretrained_setup.resolve_encoder_frontend(cfg)
  cfg.dataset.sample_rate = 32000
  pretrained_setup.resolve_encoder_frontend(cfg)
  f = cfg.frontend
  assert (f.kind, f.n_mels, f.n_fft, f.hop_length, f.feature_stats) == (
    'pann',
    224,
    1024,
    320,
    'fixed',
  )
  cfg.model.encoder_init = str(tmp_path)
  with pytest.raises(FileNotFoundError, match='convert_checkpoint.py'):
    pretrained_setup.resolve_encoder_frontend(cfg)


def test_mixup_draw_and_training_call(convnext_setup):
  for seed in range(5):
    mix = mixup.sample_mix(jax.random.key(seed), 4, 0.4)
    assert float(mix.lam) >= 0.5
    assert not np.any(np.asarray(mix.partner) == np.arange(4))
    assert sorted(np.asarray(mix.partner).tolist()) == [0, 1, 2, 3]
  _, params = convnext_setup
  feats, pads = _features('convnext', [40_000, 52_000, 45_000, 48_000], 52_000)
  tokens = jnp.ones((4, 5), jnp.int32)
  plain = Captioner(_config(deterministic=False))
  mixed = Captioner(_config(deterministic=False, mixup_alpha=0.4))
  rngs = {'dropout': jax.random.key(1)}
  a = jax.jit(lambda p: plain.apply({'params': p}, feats, pads, tokens, rngs=rngs))(params)
  b = jax.jit(lambda p: mixed.apply({'params': p}, feats, pads, tokens, rngs=rngs))(params)
  assert a.shape == b.shape == (4, 5, VOCAB)
  assert not np.allclose(a, b)


def test_base_config_has_the_encoder_fields():
  cfg = base.get_base_config()
  assert isinstance(cfg.model, ml_collections.ConfigDict)
  assert (cfg.model.encoder, cfg.model.encoder_freeze, cfg.frontend.kind) == (
    'conformer',
    'none',
    'mel',
  )
