"""Decoding tests: hand-built Markov models (no network) and a tiny captioner."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from aac_jax import decoding
from aac_jax.decoding import DecodeSettings, make_decode_settings
from aac_jax.models import Captioner, CaptionerConfig, init_params, param_axes
from aac_jax.train import parallel
from configs import base

PAD, BOS, EOS = 0, 1, 2
MELS = 8
# Tiny programs: compile fast rather than run fast.
FAST = {'xla_backend_optimization_level': 0}
fast_jit = functools.partial(jax.jit, compiler_options=FAST)


# ---------------------------------------------------------------- Markov models


def markov_step_fn(transitions: np.ndarray):
  """Step function of a first-order Markov chain: `[vocab, vocab]` probabilities."""
  table = jnp.log(jnp.asarray(transitions, jnp.float32))

  def step_fn(tokens, cache):
    return table[tokens[:, 0]], {'step': cache['step'] + 1}

  return step_fn, {'step': jnp.zeros((), jnp.int32)}


def trap_chain() -> np.ndarray:
  """BOS -> 3 (0.6) or 4 (0.4); 3 -> one of 5..8 (0.25 each); 4 -> 9 (0.9).

  Greedy takes 3 then 5 (p = 0.15); the best caption is 4 9 (p = 0.36).
  Every word other than 3 and 4 ends the caption.
  """
  t = np.full((10, 10), 1e-4)
  t[BOS, 3], t[BOS, 4] = 0.6, 0.4
  t[3, 5:9] = 0.25
  t[4, 9], t[4, EOS] = 0.9, 0.1
  t[5:10, EOS] = 1.0
  return t / t.sum(axis=1, keepdims=True)


def run_markov(transitions, settings, batch=1, rngs=None):
  step_fn, cache = markov_step_fn(transitions)
  if settings.method == 'beam':
    return decoding.beam_search(step_fn, cache, batch, settings)
  if settings.method == 'sample':
    return decoding.sample(step_fn, cache, rngs, settings)
  return decoding.greedy_search(step_fn, cache, batch, settings)


def caption(tokens) -> list[int]:
  """Tokens up to and including EOS; checks PAD follows."""
  tokens = list(np.asarray(tokens))
  end = tokens.index(EOS) + 1
  assert all(t == PAD for t in tokens[end:]), tokens
  return tokens[:end]


def test_beam_finds_best_sequence_greedy_misses():
  settings = DecodeSettings(method='beam', max_len=6, beam_size=2, length_penalty=0.0)
  beam = fast_jit(lambda: run_markov(trap_chain(), settings))()
  greedy = fast_jit(lambda: run_markov(trap_chain(), settings.replace(method='greedy')))()
  assert caption(greedy.tokens[0]) == [3, 5, EOS]
  assert caption(beam.tokens[0]) == [4, 9, EOS]
  p = trap_chain()
  np.testing.assert_allclose(beam.scores[0], np.log(p[BOS, 4] * p[4, 9] * p[9, EOS]), rtol=1e-5)
  np.testing.assert_allclose(jnp.sum(beam.log_probs[0]), beam.scores[0], rtol=1e-5)


def all_captions(vocab: int, max_len: int):
  """Every caption of up to `max_len` tokens (EOS included) over words 3..vocab-1."""
  words = range(3, vocab)
  for n in range(max_len):
    for seq in itertools.product(words, repeat=n):
      yield list(seq) + [EOS]


def test_exhaustive_beam_matches_brute_force_with_length_penalty():
  """A beam as wide as the search space returns the best normalised captions."""
  rng = np.random.default_rng(0)
  vocab, max_len, alpha = 6, 4, 0.8
  t = rng.dirichlet(np.ones(vocab) * 0.7, size=vocab)
  settings = DecodeSettings(method='beam', max_len=max_len, beam_size=27, length_penalty=alpha)
  step_fn, cache = markov_step_fn(t)
  out = fast_jit(lambda: decoding.beam_search(step_fn, cache, 1, settings, return_all_beams=True))()
  logt = np.log(t.astype(np.float32))

  def score(seq):
    logp = sum(logt[a, b] for a, b in zip([BOS] + seq[:-1], seq, strict=True))
    return logp / ((5 + len(seq)) / 6) ** alpha

  # min_len = 1: at least one word before EOS.
  ranked = sorted((score(s), s) for s in all_captions(vocab, max_len) if len(s) >= 2)[::-1]
  for i in range(10):
    np.testing.assert_allclose(out.scores[0, i], ranked[i][0], rtol=1e-5)
    assert caption(out.tokens[0, i]) == ranked[i][1]


def test_min_len_and_eos_forced_at_max_len():
  settings = DecodeSettings(max_len=5, min_len=3)
  out = fast_jit(lambda: run_markov(trap_chain(), settings))()
  assert len(caption(out.tokens[0])) - 1 >= 3
  loop = np.full((10, 10), 1e-3)
  loop[:, 3] = 1.0  # "3 3 3 ..." and almost never EOS
  loop /= loop.sum(axis=1, keepdims=True)
  for method in ('greedy', 'beam'):
    out = fast_jit(lambda m=method: run_markov(loop, settings.replace(method=m)))()
    assert caption(out.tokens[0]) == [3, 3, 3, 3, EOS]


def random_chain(vocab=12, seed=0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(vocab, vocab)) * 1.5
  logits[:, EOS] -= 1.0
  return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def reference_allowed(probs: np.ndarray, temperature: float, top_k: int, top_p: float):
  """Sets of tokens top-k/top-p may emit, from one row of model probabilities."""
  logits = np.log(probs) / temperature
  logits[[PAD, BOS]] = -np.inf
  order = np.argsort(-logits)
  p = np.exp(logits - logits[order[0]])
  p /= p.sum()
  if top_k:
    order = order[:top_k]
  if top_p < 1.0:
    q = p[order] / p[order].sum()
    keep = np.cumsum(q) - q < top_p
    order = order[keep]
  return set(order.tolist())


@pytest.mark.parametrize('top_k, top_p', [(3, 1.0), (0, 0.6), (4, 0.5)])
def test_top_k_top_p_stay_in_allowed_set(top_k, top_p):
  chain = random_chain()
  settings = DecodeSettings(
    method='sample', max_len=6, min_len=0, temperature=0.8, top_k=top_k, top_p=top_p
  )
  rngs = jax.random.split(jax.random.key(0), 512)
  run = fast_jit(lambda s: run_markov(chain, s, rngs=rngs), static_argnums=0)
  out = np.asarray(run(settings).tokens)
  free = np.asarray(run(settings.replace(top_k=0, top_p=1.0)).tokens)
  allowed = [reference_allowed(chain[prev], 0.8, top_k, top_p) for prev in range(len(chain))]
  outside = 0
  for filtered, tokens in ((True, out), (False, free)):
    for row in tokens:
      seq = caption(row)[: settings.max_len - 1]  # the last position is forced to EOS
      for prev, token in zip([BOS] + seq[:-1], seq, strict=True):
        if filtered:
          assert token in allowed[prev], row
        else:
          outside += token not in allowed[prev]
  assert outside > 50  # without the filters the sampler does leave the set
  assert len(np.unique(out)) > 3  # and with them it still samples


def test_sample_log_probs_are_model_log_probs():
  chain = random_chain(seed=1)
  settings = DecodeSettings(method='sample', max_len=6, temperature=0.5, top_k=3)
  rngs = jax.random.split(jax.random.key(1), 16)
  out = fast_jit(lambda: run_markov(chain, settings, rngs=rngs))()
  for row, lps in zip(np.asarray(out.tokens), np.asarray(out.log_probs), strict=True):
    seq = caption(row)
    expected = [np.log(chain[a, b]) for a, b in zip([BOS] + seq[:-1], seq, strict=True)]
    np.testing.assert_allclose(lps[: len(seq)], expected, rtol=1e-4)
    assert np.all(lps[len(seq) :] == 0.0)


def repeated_ngrams(seq: list[int], n: int) -> bool:
  grams = [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]
  return len(grams) != len(set(grams))


def content_words(seq: list[int]) -> list[int]:
  return [t for t in seq if t >= 5]  # 3 is <unk>, 4 the function word here


def test_no_repeat_ngram_and_content_word_bans_on_markov_loop():
  chain = random_chain(vocab=9, seed=2)
  chain[:, 5] += 3.0  # a strong attractor: "5 5 5 ..." without the bans
  chain[:, 4] += 1.0
  chain[:, EOS] *= 0.1
  chain /= chain.sum(axis=1, keepdims=True)
  rngs = jax.random.split(jax.random.key(2), 64)
  mask = jnp.asarray(decoding.make_repeat_ban_mask(9, function_word_ids=[4]))
  greedy = DecodeSettings(max_len=10, beam_size=3)

  def run(settings):
    step_fn, cache = markov_step_fn(chain)
    fn = {'greedy': decoding.greedy_search, 'beam': decoding.beam_search}.get(settings.method)
    if fn is None:
      return decoding.sample(step_fn, cache, rngs, settings, mask).tokens
    return fn(step_fn, cache, 64, settings, mask).tokens

  runs = [greedy] + [greedy.replace(no_repeat_ngram_size=n) for n in (1, 3)]
  runs += [
    greedy.replace(method=m, no_repeat_ngram_size=2, ban_repeated_content_words=True)
    for m in ('greedy', 'beam', 'sample')
  ]
  outs = fast_jit(lambda: [run(r) for r in runs])()
  outs = [[caption(row) for row in np.asarray(out)] for out in outs]
  assert any(repeated_ngrams(c, 2) for c in outs[0])  # the bans below do bite
  assert any(len(content_words(c)) > len(set(content_words(c))) for c in outs[0])
  for settings, captions in zip(runs[1:], outs[1:], strict=True):
    n = settings.no_repeat_ngram_size
    for c in captions:
      assert not repeated_ngrams(c, n), (settings, c)
      words = content_words(c)
      assert not settings.ban_repeated_content_words or len(words) == len(set(words)), c
  assert len({tuple(c) for c in outs[-1]}) > 1  # sampling: not all the same


def test_settings_from_config_and_token_ids():
  from aac_jax.data import tokenizer

  settings = make_decode_settings(base.get_decode_config(), method='beam', beam_size=5)
  assert (settings.method, settings.beam_size, settings.max_len) == ('beam', 5, 24)
  assert (settings.pad_id, settings.bos_id, settings.eos_id) == (
    tokenizer.PAD_ID,
    tokenizer.BOS_ID,
    tokenizer.EOS_ID,
  )
  with pytest.raises(ValueError, match='unknown'):
    make_decode_settings(base.get_decode_config(), beam=4)
  mask = decoding.make_repeat_ban_mask(8, [5, 6])
  np.testing.assert_array_equal(mask, [0, 0, 0, 0, 1, 0, 0, 1])


# ------------------------------------------------------------ a tiny captioner


@pytest.fixture(scope='module')
def tiny():
  cfg = CaptionerConfig(
    vocab_size=24,
    encoder_dim=16,
    encoder_layers=1,
    encoder_heads=2,
    encoder_ff_dim=32,
    conv_kernel_size=5,
    decoder_dim=16,
    decoder_layers=2,
    decoder_heads=2,
    decoder_ff_dim=32,
    max_decode_len=12,
  )
  model = Captioner(cfg)
  init = fast_jit(lambda key: init_params(model, key, num_mels=MELS))
  params = init(jax.random.key(0))
  rng = np.random.default_rng(0)
  feats = jnp.asarray(rng.normal(size=(8, 24, MELS)), jnp.float32)
  lengths = np.array([24, 20, 9, 13, 24, 5, 17, 22])
  pads = jnp.asarray(np.arange(24)[None, :] >= lengths[:, None], jnp.float32)
  return model, params, feats, pads


SETTINGS = DecodeSettings(max_len=10, beam_size=3, length_penalty=0.6)


def decode_all(model, params, feats, pads, settings_list, cached=True):
  """One jit decoding the batch with each settings (fewer compilations)."""

  @fast_jit
  def run(params):
    return [
      decoding.generate(model, params, feats, pads, s, rng=jax.random.key(7), cached=cached)
      for s in settings_list
    ]

  return run(params)


@functools.partial(fast_jit, static_argnums=0)
def rescore(model, params, feats, pads, tokens):
  """Teacher-forced log-probabilities `[b, len]` of `tokens` (0 after EOS)."""
  inputs = jnp.pad(tokens[:, :-1], ((0, 0), (1, 0)), constant_values=BOS)
  logits = decoding.eval_model(model).apply({'params': params}, feats, pads, inputs)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  token_log_probs = jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]
  return jnp.where(tokens == PAD, 0.0, token_log_probs)


def test_model_decoding_cached_uncached_beam_one_cold_sampling_ngrams(tiny):
  """Cached == uncached; beam 1 == greedy; sampling at T -> 0 == greedy."""
  model, params, feats, pads = tiny
  greedy, beam = SETTINGS, SETTINGS.replace(method='beam')
  cached = decode_all(
    model,
    params,
    feats,
    pads,
    [
      greedy,
      beam,
      SETTINGS.replace(method='sample', temperature=1e-6),
      beam.replace(no_repeat_ngram_size=2),
    ],
  )
  uncached = decode_all(
    model, params, feats, pads, [greedy, beam, beam.replace(beam_size=1, length_penalty=0.0)], False
  )
  for a, b in zip(cached[:2], uncached[:2], strict=True):
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_allclose(a.log_probs, b.log_probs, atol=1e-5)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
  greedy_out, beam_out, cold, no_repeat = cached
  np.testing.assert_array_equal(uncached[2].tokens, greedy_out.tokens)
  np.testing.assert_array_equal(cold.tokens, greedy_out.tokens)
  assert not np.array_equal(beam_out.tokens, greedy_out.tokens)
  for out in (greedy_out, beam_out, no_repeat):  # the searches' log-probs are the model's
    expected = rescore(model, params, feats, pads, out.tokens)
    np.testing.assert_allclose(out.log_probs, expected, atol=2e-5)
  assert any(repeated_ngrams(caption(r), 2) for r in np.asarray(greedy_out.tokens))
  for row in np.asarray(no_repeat.tokens):
    assert not repeated_ngrams(caption(row), 2), row


def test_sharded_decoding_equals_single_device(tiny):
  model, params, feats, pads = tiny
  mesh = Mesh(jax.devices(), ('data',))
  assert mesh.size == 8
  settings = SETTINGS.replace(method='sample', top_k=5)
  single = decode_all(model, params, feats, pads, [SETTINGS, settings])
  for method_settings, expected in zip((SETTINGS, settings), single, strict=True):
    fn = decoding.make_sharded_generate_fn(
      model, method_settings, mesh, batch_axes='data', compiler_options=FAST
    )
    sharded = fn(params, feats, pads, jax.random.key(7))
    assert len(sharded.tokens.sharding.device_set) == 8
    np.testing.assert_array_equal(sharded.tokens, expected.tokens)
    np.testing.assert_allclose(sharded.log_probs, expected.log_probs, atol=1e-5)


@pytest.mark.parametrize('method', ['greedy', 'beam'])
def test_decoding_with_sharded_parameters_equals_unsharded(tiny, method):
  # data 2 x fsdp 2 x tensor 2: parameters split by the logical-axis rules.
  model, params, feats, pads = tiny
  mesh_cfg = base.get_mesh_config()
  mesh_cfg.update(data=2, fsdp=2, tensor=2)
  mesh = parallel.create_mesh(mesh_cfg)
  logical, shapes = param_axes(model, num_mels=MELS)
  sharded_params = jax.device_put(
    params, parallel.param_shardings(logical, shapes, mesh, parallel.mesh_rules(mesh_cfg))
  )
  assert any(not x.sharding.is_fully_replicated for x in jax.tree.leaves(sharded_params))
  settings = SETTINGS.replace(method=method)
  (expected,) = decode_all(model, params, feats, pads, [settings])
  fn = decoding.make_sharded_generate_fn(model, settings, mesh, compiler_options=FAST)
  out = fn(sharded_params, feats, pads, jax.random.key(7))
  np.testing.assert_array_equal(out.tokens, expected.tokens)
  np.testing.assert_allclose(out.log_probs, expected.log_probs, atol=1e-5)
