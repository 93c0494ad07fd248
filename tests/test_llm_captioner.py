"""The captioner with a language-model decoder (`decoder_style='llm'`): bridge, decoding, freezing."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from aac_jax import decoding
from aac_jax.models import (
  Captioner,
  init_params,
  llm_bridge,
  make_captioner_config,
  pretrained_setup,
)
from configs import base

MELS = 8
VOCAB = 24
fast_jit = functools.partial(jax.jit, compiler_options={'xla_backend_optimization_level': 0})


def llm_model_config(**llm_changes) -> ml_collections.ConfigDict:
  """A tiny `config.model` with a Qwen2-shaped decoder (biases, GQA, tied embeddings)."""
  llm = base.get_llm_config()
  llm.update(
    dict(
      prompt='describe the sound',
      prompt_ids=[5, 6, 7],
      frame_stack=2,
      projector_dim=16,
      train='full',
      lora_rank=0,
      lora_dropout=0.0,
      hidden_size=16,
      num_layers=2,
      num_heads=4,
      num_kv_heads=2,
      head_dim=4,
      intermediate_size=24,
      rope_theta=10000.0,
    )
  )
  llm.update(llm_changes)
  model = base.get_model_config()
  model.update(
    dict(
      decoder_style='llm',
      subsampling=4,
      encoder_dim=16,
      encoder_layers=1,
      encoder_heads=2,
      encoder_ff_dim=32,
      conv_kernel_size=5,
      dropout=0.0,
      attention_dropout=0.0,
      max_decode_len=10,
      llm=llm,
    )
  )
  return model


def make_model(**llm_changes):
  return Captioner(make_captioner_config(llm_model_config(**llm_changes), VOCAB))


def random_params(model, seed):
  """Random values in the init's shapes (biases and adapters non-zero, so that they count)."""
  shapes = jax.eval_shape(lambda: init_params(model, jax.random.key(0), num_mels=MELS))
  leaves, tree = jax.tree.flatten_with_path(shapes)
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    scale = 1.0 if path[-1].key == 'scale' else 0.0
    return jnp.asarray(scale + 0.3 * rng.normal(size=leaf.shape), jnp.float32)

  return jax.tree.unflatten(tree, [draw(path, leaf) for path, leaf in leaves])


def _inputs(seed=0, lengths=(40, 26)):
  rng = np.random.default_rng(seed)
  frames = max(lengths)
  feats = jnp.asarray(rng.normal(size=(len(lengths), frames, MELS)), jnp.float32)
  pads = jnp.asarray(np.arange(frames)[None] >= np.array(lengths)[:, None], jnp.float32)
  return feats, pads


def test_padding_in_a_batch_gives_the_clip_alone_logits():
  model = make_model()
  params = random_params(model, 0)
  feats, pads = _inputs()
  tokens = jnp.asarray(np.random.default_rng(1).integers(4, VOCAB, size=(2, 6)), jnp.int32)
  apply = fast_jit(model.apply)
  batch = apply({'params': params}, feats, pads, tokens)
  alone = apply({'params': params}, feats[1:, :26], pads[1:, :26], tokens[1:])
  assert batch.shape == (2, 6, VOCAB)
  np.testing.assert_allclose(batch[1:], alone, atol=1e-5)
  # The prompt and audio reach the caption logits.
  other = model.clone(config=model.config.replace(llm_prompt_ids=(5, 6, 8)))
  assert not np.allclose(fast_jit(other.apply)({'params': params}, feats, pads, tokens), batch)


def test_several_references_equal_repeated_clips():
  model = make_model()
  params = random_params(model, 1)
  feats, pads = _inputs(2)
  tokens = jnp.asarray(np.random.default_rng(3).integers(4, VOCAB, size=(2, 3, 5)), jnp.int32)
  apply = fast_jit(model.apply)
  refs = apply({'params': params}, feats, pads, tokens)
  flat = apply(
    {'params': params}, jnp.repeat(feats, 3, 0), jnp.repeat(pads, 3, 0), tokens.reshape(6, 5)
  )
  np.testing.assert_allclose(refs.reshape(6, 5, VOCAB), flat, atol=1e-5)


@pytest.mark.parametrize('method', ['greedy', 'beam', 'sample'])
def test_cached_decoding_equals_uncached(method):
  model = make_model()
  params = random_params(model, 4)
  feats, pads = _inputs(5)
  settings = decoding.make_decode_settings(
    None, method=method, max_len=8, beam_size=3, ban_repeated_content_words=True
  )
  ban = decoding.make_repeat_ban_mask(VOCAB, [4, 5])

  def run(cached):
    fn = functools.partial(
      decoding.generate, model, settings=settings, cached=cached, repeat_ban_mask=ban
    )
    return fast_jit(fn)(params, feats, pads, rng=jax.random.key(0))

  cached, uncached = run(True), run(False)
  np.testing.assert_array_equal(cached.tokens, uncached.tokens)
  assert cached.tokens.shape == (2, 8)


def test_lora_run_trains_adapters_and_projector_only():
  model = make_model(
    train='lora', lora_rank=2, lora_targets=['q', 'k', 'v', 'o', 'gate', 'up', 'down']
  )
  params = random_params(model, 6)
  feats, pads = _inputs(7)
  targets = jnp.asarray(np.random.default_rng(8).integers(4, VOCAB, size=(2, 6)), jnp.int32)
  inputs = jnp.pad(targets[:, :-1], ((0, 0), (1, 0)), constant_values=1)
  tx = pretrained_setup.freeze_optimizer(optax.adamw(1e-2, weight_decay=0.1), model.config)

  def loss_fn(p):
    logits = model.apply({'params': p}, feats, pads, inputs)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

  @fast_jit
  def train(p):
    state = tx.init(p)
    for _ in range(3):
      grads = jax.grad(loss_fn)(p)
      updates, state = tx.update(grads, state, p)
      p = optax.apply_updates(p, updates)
    return p

  trained = train(params)
  frozen = llm_bridge.frozen_mask(params, 'lora')
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  after = jax.tree.leaves(trained)
  kinds = {'frozen': 0, 'lora': 0, 'projector': 0}
  for (path, before), new, is_frozen in zip(flat, after, jax.tree.leaves(frozen), strict=True):
    keys = [k.key for k in path]
    if is_frozen:
      assert keys[:2] == ['decoder', 'llm'], keys
      np.testing.assert_array_equal(np.asarray(new), np.asarray(before), err_msg=str(keys))
      kinds['frozen'] += 1
    elif keys[-1] in ('lora_a', 'lora_b') or 'projector' in keys:
      assert not np.array_equal(np.asarray(new), np.asarray(before)), keys
      kinds['lora' if keys[-1].startswith('lora') else 'projector'] += 1
  assert kinds['frozen'] > 10 and kinds['lora'] == 2 * 7 * 2 and kinds['projector'] == 4, kinds


def test_every_parameter_names_its_axes():
  from aac_jax.models import param_axes, partitioning

  model = make_model(train='lora', lora_rank=2)
  logical, shapes = param_axes(model, num_mels=MELS)
  boxed = jax.eval_shape(
    lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 64, MELS)), jnp.zeros((1, 64)), jnp.zeros((1, 4), jnp.int32)
    )
  )
  assert partitioning.missing_axes(boxed['params']) == []
  assert logical['decoder']['llm']['layers_0']['self_attn']['q_proj'][
    'kernel'
  ] == jax.sharding.PartitionSpec('embed', 'heads')


@pytest.mark.parametrize('arg', [None, 'runlocal', 'synthetic'])
def test_clotho_llm_configs_validate_and_build(arg):
  from aac_jax import config_validation
  from configs import clotho_llm

  config = clotho_llm.get_config(arg)
  config_validation.validate(config, 'train', 8)
  config.model.llm.prompt_ids = [4, 5]
  cfg = make_captioner_config(config.model, 300)
  assert cfg.decoder_style == 'llm' and cfg.llm_prompt_ids == (4, 5)
  assert (cfg.llm_train, cfg.llm.lora_rank) == (('lora', 8) if arg is None else ('full', 0))


def test_llm_config_problems_name_their_fields():
  from aac_jax import config_validation
  from configs import clotho_llm

  config = clotho_llm.get_config('runlocal')
  bad = dict(train='lora', lora_rank=0, projector='conv', lora_targets=['q', 'qkv'])
  config.model.llm.update(dict(bad, num_kv_heads=3, head_dim=7))
  lines = config_validation.problems(config, 'train', 8)
  fields = ('lora_rank', 'projector', 'lora_targets', 'num_heads', 'head_dim')
  assert sorted(line.split('=')[0] for line in lines) == sorted(f'model.llm.{f}' for f in fields)
  config.model.llm.init = 'converted'  # A converted folder's sizes are its own.
  assert len(config_validation.problems(config, 'train', 8)) == 3
  config.model.decoder_style = 'aac_jax'  # model.llm is not read.
  assert config_validation.problems(config, 'train', 8) == []


def test_resolve_prompt_uses_the_run_tokenizer():
  from aac_jax.data.tokenizer import Tokenizer
  from configs import clotho_llm

  config = clotho_llm.get_config('runlocal')
  tokenizer = Tokenizer.build(['describe the sound of a dog'], min_count=1)
  llm_bridge.resolve_prompt(config, tokenizer)
  assert config.model.llm.prompt_ids == tokenizer.encode('describe the sound')


def test_llm_init_loads_a_converted_folder_into_the_captioner(tmp_path):
  import sys

  sys.path.insert(0, 'tools')
  import make_random_llm

  from aac_jax.convert import llm as convert_llm

  hf_dir, out = str(tmp_path / 'hf'), str(tmp_path / 'converted')
  make_random_llm.main(
    ['--output', hf_dir, '--vocab_size', str(VOCAB), '--hidden_size', '16', '--num_heads', '4']
  )
  convert_llm.convert_folder(hf_dir, out)
  model = make_model(init=out, train='lora', lora_rank=2)
  assert model.config.llm.hidden_size == 16 and model.config.llm.rope_theta == 1e6
  params = init_params(model, jax.random.key(0), num_mels=MELS)
  loaded = pretrained_setup.load_converted_init(params, model.config)
  source, _ = convert_llm.load_llm(out)
  got = loaded['decoder']['llm']['layers_1']['self_attn']['q_proj']
  np.testing.assert_array_equal(got['bias'], source['layers_1']['self_attn']['q_proj']['bias'])
  np.testing.assert_array_equal(
    got['lora_a'], params['decoder']['llm']['layers_1']['self_attn']['q_proj']['lora_a']
  )
  with pytest.raises(ValueError, match='token ids'):
    Captioner(make_captioner_config(llm_model_config(init=out), VOCAB + 1))


def test_stack_frames_drops_leftovers_and_pads_short_clips():
  encoded = jnp.arange(2 * 7 * 2, dtype=jnp.float32).reshape(2, 7, 2)
  paddings = jnp.asarray(np.arange(7)[None] >= np.array([[7], [5]]), jnp.float32)
  stacked, pads = llm_bridge.stack_frames(encoded, paddings, 3)
  assert stacked.shape == (2, 2, 6)  # The 7th frame is dropped, as SLAM-LLM drops leftovers.
  np.testing.assert_array_equal(stacked[0, 1], encoded[0, 3:6].reshape(-1))
  np.testing.assert_array_equal(pads, [[0, 0], [0, 1]])  # Frames 3-5 of clip 1: one is padding.
  short, short_pads = llm_bridge.stack_frames(encoded[:, :2], paddings[:, :2], 3)
  assert short.shape == (2, 1, 6) and np.all(np.asarray(short_pads) == 1)


def _lora_data():
  feats, pads = _inputs(7)
  targets = jnp.asarray(np.random.default_rng(8).integers(4, VOCAB, size=(2, 6)), jnp.int32)
  return feats, pads, jnp.pad(targets[:, :-1], ((0, 0), (1, 0)), constant_values=1), targets


def _loss(model, p):
  feats, pads, inputs, targets = _lora_data()
  logits = model.apply({'params': p}, feats, pads, inputs)
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def test_bfloat16_base_is_stored_frozen_and_close_to_float32():
  lora = dict(train='lora', lora_rank=2, lora_targets=['q', 'k', 'v', 'o', 'gate', 'up', 'down'])
  model32, model16 = make_model(**lora), make_model(base_dtype='bfloat16', **lora)
  params32 = fast_jit(lambda k: init_params(model32, k, num_mels=MELS))(jax.random.key(1))
  params16 = fast_jit(lambda k: init_params(model16, k, num_mels=MELS))(jax.random.key(1))
  frozen = jax.tree.leaves(llm_bridge.frozen_mask(params16, 'lora'))
  dtypes = [leaf.dtype for leaf in jax.tree.leaves(params16)]
  assert {d for d, f in zip(dtypes, frozen, strict=True) if f} == {jnp.dtype(jnp.bfloat16)}
  assert {d for d, f in zip(dtypes, frozen, strict=True) if not f} == {jnp.dtype(jnp.float32)}
  # The same weights: the base rounded to bfloat16, adapters and projector as they are.
  params16 = jax.tree.map(lambda p, q: p.astype(q.dtype), params32, params16)
  tx = pretrained_setup.freeze_optimizer(optax.adamw(1e-2, weight_decay=0.1), model16.config)

  @fast_jit
  def train(p):
    state, losses = tx.init(p), []
    for _ in range(3):
      loss, grads = jax.value_and_grad(functools.partial(_loss, model16))(p)
      updates, state = tx.update(grads, state, p)
      p, losses = optax.apply_updates(p, updates), [*losses, loss]
    return p, jnp.stack(losses)

  trained, losses = train(params16)
  for before, after, is_frozen in zip(
    jax.tree.leaves(params16), jax.tree.leaves(trained), frozen, strict=True
  ):
    assert after.dtype == before.dtype
    if is_frozen:  # The same bfloat16 bits.
      np.testing.assert_array_equal(
        np.asarray(after).view(np.uint16), np.asarray(before).view(np.uint16)
      )
  loss32 = fast_jit(functools.partial(_loss, model32))(params32)
  np.testing.assert_allclose(losses[0], loss32, rtol=1e-3)
  assert losses[-1] < losses[0], losses
  lora_b = trained['decoder']['llm']['layers_0']['self_attn']['q_proj']['lora_b']
  assert lora_b.dtype == jnp.float32 and np.abs(np.asarray(lora_b)).max() > 0
