"""The auxiliary keyword head: targets, loss against numpy, padding, config checks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aac_jax import config_validation
from aac_jax.data import tokenizer
from aac_jax.models import keyword_head
from configs import base


def test_keyword_targets_are_the_caption_words_without_specials():
  targets = jnp.array([[5, 7, 5, tokenizer.EOS_ID, 0, 0], [tokenizer.UNK_ID, 9, 2, 0, 0, 0]])
  hot = np.asarray(keyword_head.keyword_targets(targets, 12))
  expected = np.zeros((2, 12), np.float32)
  expected[0, [5, 7]] = 1.0
  expected[1, 9] = 1.0
  np.testing.assert_array_equal(hot, expected)


def test_keyword_loss_matches_numpy_binary_cross_entropy():
  rng = np.random.default_rng()
  probs = rng.uniform(0.01, 0.99, (4, 10)).astype(np.float32)
  words = (rng.random((4, 10)) < 0.3).astype(np.float32)
  words[:3, 0] = 1.0  # Real captions have at least one word (an all-zero row is a filler).
  words[3] = 0.0  # A filler row: adds nothing.
  expected = -(words * np.log(probs) + (1 - words) * np.log(1 - probs))[:3].sum()
  got = float(keyword_head.keyword_loss_sum(jnp.asarray(probs), jnp.asarray(words)))
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_linear_softmax_pooling_ignores_padding_and_follows_confident_frames():
  head = keyword_head.KeywordHead(vocab_size=6)
  rng = np.random.default_rng()
  encoded = jnp.asarray(rng.normal(size=(2, 7, 4)).astype(np.float32))
  paddings = jnp.zeros((2, 7))
  params = nn.unbox(head.init(jax.random.key(0), encoded, paddings))
  probs = head.apply(params, encoded, paddings)
  padded = jnp.concatenate([encoded, 100.0 * jnp.ones((2, 3, 4))], axis=1)
  padded_probs = head.apply(params, padded, jnp.concatenate([paddings, jnp.ones((2, 3))], 1))
  np.testing.assert_allclose(padded_probs, probs, rtol=1e-6)
  # Pooled probabilities lie between the mean and the max of the frame probabilities.
  frame = jax.nn.sigmoid(
    encoded @ params['params']['frame_logits']['kernel'] + params['params']['frame_logits']['bias']
  )
  assert np.all(probs >= frame.mean(axis=1) - 1e-6)
  assert np.all(probs <= frame.max(axis=1) + 1e-6)


def test_keyword_weight_without_head_names_the_fix():
  config = base.get_base_config()
  config.optim.keyword_loss_weight = 0.5
  with pytest.raises(config_validation.ConfigError, match='model.keyword_head=True'):
    config_validation.validate(config, 'train', 8)
  config.model.keyword_head = True
  config_validation.validate(config, 'train', 8)
  config.optim.keyword_loss_weight = -1.0
  with pytest.raises(config_validation.ConfigError, match='keyword_loss_weight=-1.0: must be >= 0'):
    config_validation.validate(config, 'train', 8)
