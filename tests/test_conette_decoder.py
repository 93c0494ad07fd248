"""CoNeTTE decoder and beam search vs conette 0.3.2 (random weights, published folder format).

A random decoder built with conette's own `AACTransformerDecoder` is saved as
the published folder, read back by `aac_jax.convert.conette`, and must give
the same teacher-forced logits (padded frames and tokens included) and the
same beam-search captions (beam 3, its repetition ban) for every task token.
"""

import functools

import conette_reference as cref
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aac_jax import decoding, models
from aac_jax.convert import conette as convert

D_MODEL = 32
MAX_PRED = 20
FAST = {'xla_backend_optimization_level': 0}


def _decode(model, params, frames, pad, settings, **kwargs):
  """`decoding.decode_encoded`, jitted with fast compilation."""
  run = functools.partial(decoding.decode_encoded, model, settings=settings, **kwargs)
  return jax.jit(run, compiler_options=FAST)(params, frames, pad.astype(np.float32))


def _relative_error(ours, reference) -> float:
  return float(np.max(np.abs(ours - reference)) / np.max(np.abs(reference)))


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
  """The reference, and a Captioner carrying its converted decoder."""
  ref = cref.build_reference(d_model=D_MODEL, eos_bias=5.0)
  folder = cref.write_published_folder(ref, tmp_path_factory.mktemp('conette'))
  published = convert.read_folder(folder)
  tokens = convert.read_tokens(published)
  cfg = models.CaptionerConfig(
    vocab_size=len(tokens),
    encoder_dim=D_MODEL,
    encoder_layers=1,
    encoder_heads=2,
    encoder_ff_dim=32,
    subsampling=2,
    decoder_style='conette',
    decoder_dim=D_MODEL,
    decoder_heads=4,
    decoder_layers=2,
    decoder_ff_dim=64,
    max_decode_len=MAX_PRED + 1,
    deterministic=True,
  )
  model = models.Captioner(cfg)
  params = models.init_params(model, jax.random.key(0), num_mels=8)
  shapes = jax.tree.map(lambda x: x.shape, params['decoder'])
  params = {**params, 'decoder': convert.decoder_params(published.state, heads=4)}
  assert jax.tree.map(lambda x: x.shape, params['decoder']) == shapes
  return ref, published, tokens, model, params


def _frames(seed: int, batch: int = 3, time: int = 9):
  """Random frame embeddings `[b, s, d]` and pad masks: clip i has `time - 3 i` real frames."""
  rng = np.random.default_rng(seed)
  frames = rng.normal(size=(batch, time, D_MODEL)).astype(np.float32)
  lengths = np.maximum(time - 3 * np.arange(batch), 1)
  pad = np.arange(time)[None, :] >= lengths[:, None]
  frames[pad] = 50.0 * rng.normal(size=frames[pad].shape)
  return frames, pad


def test_tokens_keep_conette_ids(converted):
  ref, published, tokens, _, _ = converted
  assert tokens == ref.tokens
  tasks = convert.task_tokens(published, tokens)
  assert list(tasks) == list(cref.TASKS) and tasks['clotho'] == tokens.index('<bos_clotho>')
  assert convert.repeatable_tokens(published, tokens) == list(cref.STOP_WORDS)


def test_teacher_forced_logits_match_reference(converted):
  ref, published, tokens, model, params = converted
  frames, pad = _frames(seed=1)
  task = tokens.index('<bos_audiocaps>')
  rng = np.random.default_rng(2)
  inputs = rng.integers(4, len(tokens) - len(cref.TASKS), size=(3, 7))
  inputs[:, 0] = task
  lengths = np.array([7, 5, 3])
  inputs[np.arange(7)[None, :] >= lengths[:, None]] = 0  # PAD after each caption
  expected = cref.reference_logits(ref, frames, pad, inputs)
  ours = np.asarray(
    model.apply({'params': params}, frames, pad.astype(np.float32), inputs, method='decode')
  )
  real = inputs != 0
  assert _relative_error(ours[real], expected[real]) < 1e-4
  # With task_token_id the decoder reads the task token at position 0 whatever it is given.
  tasked = model.clone(config=model.config.replace(task_token_id=task))
  with_bos = np.where(np.arange(7)[None, :] == 0, 1, inputs)
  again = tasked.apply(
    {'params': params}, frames, pad.astype(np.float32), with_bos, method='decode'
  )
  np.testing.assert_allclose(np.asarray(again)[real], ours[real], rtol=0, atol=1e-6)


def test_cached_steps_equal_teacher_forcing(converted):
  _, _, tokens, model, params = converted
  frames, pad = _frames(seed=3)
  inputs = np.random.default_rng(4).integers(4, len(tokens), size=(3, 6))
  full = model.apply({'params': params}, frames, pad.astype(np.float32), inputs, method='decode')
  step_fn, cache = decoding.make_step_fn(model, params, frames, pad.astype(np.float32), 6)
  steps = []
  for t in range(6):
    logits, cache = step_fn(jnp.asarray(inputs[:, t : t + 1]), cache)
    steps.append(logits)
  np.testing.assert_allclose(np.stack(steps, axis=1), full, rtol=1e-5, atol=1e-5)


def _settings(task: int, **changes) -> decoding.DecodeSettings:
  values = dict(
    method='conette_beam',
    beam_size=3,
    min_len=3,
    max_len=MAX_PRED + 1,
    ban_repeated_content_words=True,
    repeatable_tokens=cref.STOP_WORDS,
    bos_id=task,
  )
  return decoding.make_decode_settings(values | changes)


def _as_reference(row: np.ndarray) -> list[int]:
  """Our `[max_len]` row as conette returns it: words, and EOS if it chose one."""
  words = row[: list(row).index(2)].tolist()
  return words + [2] if len(words) < MAX_PRED else words


def _reference_rows(best: np.ndarray) -> list[list[int]]:
  rows = []
  for row in best.tolist():
    rows.append(row[: row.index(2) + 1] if 2 in row else [t for t in row if t != 0])
  return rows


@pytest.fixture(scope='module')
def lengths():
  """Caption lengths the per-task beam tests saw (checked for variety at the end)."""
  return set()


@pytest.mark.parametrize('task_index', range(len(cref.TASKS)))
def test_beam_search_matches_reference_for_each_task(converted, lengths, task_index):
  ref, published, tokens, model, params = converted
  task = convert.task_tokens(published, tokens)[cref.TASKS[task_index]]
  frames, pad = _frames(seed=10 + task_index, batch=4)
  best, scores = cref.reference_generate(ref, frames, pad, task)
  settings = _settings(task)
  mask = jnp.asarray(decoding.repeat_ban_mask_for(tokens, settings))
  tasked = model.clone(config=model.config.replace(task_token_id=task))
  out = _decode(tasked, params, frames, pad, settings, repeat_ban_mask=mask)
  ours = [_as_reference(row) for row in np.asarray(out.tokens)]
  assert ours == _reference_rows(best)
  lengths.update(len(row) for row in ours)
  np.testing.assert_allclose(out.scores, scores, rtol=1e-4)


def test_beam_captions_had_various_lengths(lengths):
  """Beams retired early and at the limit: both paths of the search were compared."""
  assert min(lengths) <= 5 and max(lengths) == MAX_PRED and len(lengths) >= 3, lengths


def test_beam_search_without_ban_and_short_limit(converted):
  """No forbid mask, min 0 tokens, at most 5: captions cut at the limit get EOS appended."""
  ref, _, tokens, model, params = converted
  task = tokens.index('<bos_clotho>')
  frames, pad = _frames(seed=30, batch=4)
  best, scores = cref.reference_generate(
    ref, frames, pad, task, forbid=False, min_pred_size=0, max_pred_size=5
  )
  settings = _settings(task, min_len=0, max_len=6, ban_repeated_content_words=False)
  out = _decode(model, params, frames, pad, settings)
  rows = []
  for row in np.asarray(out.tokens).tolist():
    words = row[: row.index(2)]
    rows.append(words + [2] if len(words) < 5 else words)
  assert rows == _reference_rows(best)
  np.testing.assert_allclose(out.scores, scores, rtol=1e-4)


@pytest.mark.parametrize('method', ['greedy', 'sample'])
def test_other_searches_run_cached_like_uncached(converted, method):
  _, _, tokens, model, params = converted
  frames, pad = _frames(seed=40)
  settings = decoding.make_decode_settings(method=method, max_len=8)
  rngs = jax.random.split(jax.random.key(0), 3)
  outputs = [
    _decode(model, params, frames, pad, settings, rngs=rngs, cached=cached).tokens
    for cached in (True, False)
  ]
  np.testing.assert_array_equal(outputs[0], outputs[1])
  assert np.all(np.any(np.asarray(outputs[0]) == 2, axis=1))
