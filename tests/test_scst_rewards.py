"""SCST rewards, baselines and advantages on a hand-made batch.

The reward corpus has two clips, so every n-gram of it has document
frequency 1 and idf log(2) - log(1) = log 2; the CIDEr-D values below follow
from the definition by hand:
- "a b" against "a b": unigram and bigram cosine 1, no 3- or 4-grams:
  10 * (1 + 1 + 0 + 0) / 4 = 5.
- "a" against "a b": unigram cosine 1 / sqrt(2), length penalty
  exp(-(0 - 1)^2 / 72) (bigram counts 0 and 1): 10 * that / 4.
- "c d" against {"c d", "c e"}: mean of 5 and 10 * (1/2) / 4 = 1.25.
- no shared word: 0.
"""

import dataclasses
import math

import jax
import numpy as np
import pytest

from aac_jax.data import tokenizer as tokenizer_lib
from aac_jax.data.sources import EvalSplit
from aac_jax.metrics import compute_caption_metrics
from aac_jax.metrics import reward as reward_lib
from aac_jax.scst import rewards, steps
from aac_jax.train import parallel

REFERENCES = EvalSplit('train', ['clip0', 'clip1'], [['A b.'], ['c d', 'C, e!']])
A_VS_AB = 10 * math.exp(-1 / 72) / math.sqrt(2) / 4
TOKENIZER = tokenizer_lib.Tokenizer(tokenizer_lib.SPECIAL_TOKENS + ('a', 'b', 'c', 'd', 'e'))
A, B, C, D, E = 4, 5, 6, 7, 8
EOS = tokenizer_lib.EOS_ID


def _row(*words, length=4):
  row = list(words) + [EOS]
  return row + [tokenizer_lib.PAD_ID] * (length - len(row))


# Clip 0 (refs "a b"): samples "a b", "a", "c d"; clip 1 (refs "c d", "c e"):
# samples "c d", "a b", "c d".
SAMPLES = np.array(
  [
    [_row(A, B), _row(A), _row(C, D)],
    [_row(C, D), _row(A, B), _row(C, D)],
  ],
  np.int32,
)
GREEDY = np.array([_row(A), _row(C, E)], np.int32)  # "a" (A_VS_AB), "c e" (3.125 by symmetry)
INDEX = np.array([0, 1], np.int32)
EXPECTED_REWARDS = np.array([[5.0, A_VS_AB, 0.0], [3.125, 0.0, 3.125]])


@pytest.fixture(scope='module')
def reward_fn():
  return rewards.CaptionReward(REFERENCES, {'cider_d': 1.0})


def test_cider_d_reward_equals_hand_computed(reward_fn):
  captions = ['a b', 'A', 'c d', 'c d', 'x y z']
  got = reward_fn(captions, np.array([0, 0, 1, 0, 1]))
  np.testing.assert_allclose(got, [5.0, A_VS_AB, 3.125, 0.0, 0.0], rtol=1e-6)


def test_mean_others_baseline_and_advantages(reward_fn):
  scored = rewards.score_rollout(reward_fn, TOKENIZER, SAMPLES, INDEX, 'mean_others')
  assert scored.captions == ['a b', 'a', 'c d', 'c d', 'a b', 'c d']
  np.testing.assert_allclose(scored.rewards, EXPECTED_REWARDS, rtol=1e-6)
  assert list(scored.terms) == ['cider_d']  # The reward's one term, per sample.
  np.testing.assert_allclose(scored.terms['cider_d'], EXPECTED_REWARDS.reshape(-1), rtol=1e-6)
  r = EXPECTED_REWARDS
  expected_baselines = [
    [(r[0, 1] + r[0, 2]) / 2, (r[0, 0] + r[0, 2]) / 2, (r[0, 0] + r[0, 1]) / 2],
    [1.5625, 3.125, 1.5625],
  ]
  np.testing.assert_allclose(scored.baselines, expected_baselines, rtol=1e-6)
  adv = steps.compute_advantages(scored.rewards, scored.baselines, normalize=False)
  expected_adv = [
    [5.0 - A_VS_AB / 2, A_VS_AB - 2.5, -(5.0 + A_VS_AB) / 2],
    [1.5625, -3.125, 1.5625],
  ]
  np.testing.assert_allclose(adv, expected_adv, rtol=1e-5, atol=1e-6)
  # Leave-one-out advantages of a clip sum to zero.
  np.testing.assert_allclose(np.sum(adv, axis=1), 0.0, atol=1e-5)


def test_kl_shaped_reward_subtracts_the_weighted_log_ratio_before_the_baselines(reward_fn):
  log_ratio = np.array([[0.5, -1.0, 2.0], [0.0, 3.0, -0.25]])
  scored = rewards.score_rollout(
    reward_fn, TOKENIZER, SAMPLES, INDEX, 'mean_others', log_ratio=log_ratio, kl_weight=0.2
  )
  shaped = EXPECTED_REWARDS - 0.2 * log_ratio
  np.testing.assert_allclose(scored.rewards, shaped, rtol=1e-6)
  np.testing.assert_allclose(scored.baselines, rewards.baseline_rewards(shaped, 'mean_others'))
  np.testing.assert_allclose(scored.terms['kl'], log_ratio.reshape(-1))
  np.testing.assert_allclose(scored.terms['cider_d'], EXPECTED_REWARDS.reshape(-1), rtol=1e-6)
  with pytest.raises(ValueError, match='mean_others'):
    rewards.score_rollout(
      reward_fn, TOKENIZER, SAMPLES, INDEX, 'greedy', GREEDY, log_ratio=log_ratio, kl_weight=0.2
    )


def test_greedy_baseline_and_advantages(reward_fn):
  scored = rewards.score_rollout(reward_fn, TOKENIZER, SAMPLES, INDEX, 'greedy', GREEDY)
  assert scored.greedy_captions == ['a', 'c e']
  np.testing.assert_allclose(scored.greedy_rewards, [A_VS_AB, 3.125], rtol=1e-6)
  # The terms are the samples' only (the greedy captions are scored in the same call).
  np.testing.assert_allclose(scored.terms['cider_d'], EXPECTED_REWARDS.reshape(-1), rtol=1e-6)
  np.testing.assert_allclose(scored.baselines, [[A_VS_AB] * 3, [3.125] * 3], rtol=1e-6)
  adv = steps.compute_advantages(scored.rewards, scored.baselines, normalize=False)
  expected = [[5.0 - A_VS_AB, 0.0, -A_VS_AB], [0.0, -3.125, 0.0]]
  np.testing.assert_allclose(adv, expected, rtol=1e-5, atol=1e-6)


# Clips with capitals and punctuation; pieces that recur across different words
# ("chirp-ing", "bark-ing", "t-he", "t-hen"), so subword n-grams and word n-grams differ.
LM_REFERENCES = EvalSplit(
  'train',
  ['clip0', 'clip1', 'clip2'],
  [
    ['A dog barks loudly, then birds chirp.', 'The dog is barking.'],
    ['Rain falls on the roof.', 'Water flows and rain falls.'],
    ['Footsteps walk slowly, a door closes!', 'A man speaks while the door closes.'],
  ],
)
LM_SAMPLES = [
  ['a dog barking then birds chirping', 'The dog barks, the birds chirp.'],
  ['rain falls on a roof', 'water falls and rain flows'],
  ['a door closes then footsteps walk', 'A man walks slowly.'],
]
LM_GREEDY = ['dog barks loudly', 'rain falls', 'a door closes']


def _bpe_caption_tokenizer() -> tokenizer_lib.CaptionTokenizer:
  """The run tokenizer of a byte-level BPE trained on toy captions (Qwen2's kind)."""
  pytest.importorskip('tokenizers')
  import toy_dataset

  from aac_jax.data import llm_tokenizer

  rng = np.random.default_rng(0)
  captions = [toy_dataset.make_caption(rng) for _ in range(400)]
  specials = ['<|endoftext|>', '<|im_start|>', '<|im_end|>']  # EOS, then BOS and PAD.
  llm = llm_tokenizer.LlmTokenizer(toy_dataset.bpe_tokenizer(captions, specials=specials))
  eos = {'eos_token_id': llm.vocab_size - len(specials)}
  return tokenizer_lib.CaptionTokenizer(
    llm, tokenizer_lib.special_partners(llm, eos, llm.vocab_size), llm.vocab_size
  )


def _padded_ids(tok, captions, length=32):
  return np.stack([tok.encode_targets(c, length) for c in captions])


def test_reward_of_subword_samples_is_cider_d_of_their_decoded_words():
  """With a BPE decoder the reward is the CIDEr-D evaluation reports on the decoded text."""
  tok = _bpe_caption_tokenizer()
  b, k = len(LM_SAMPLES), len(LM_SAMPLES[0])
  samples = _padded_ids(tok, [c for row in LM_SAMPLES for c in row]).reshape(b, k, -1)
  greedy = _padded_ids(tok, LM_GREEDY)
  index = np.arange(b)
  reward_fn = rewards.CaptionReward(LM_REFERENCES, {'cider_d': 1.0})
  scored = rewards.score_rollout(reward_fn, tok, samples, index, 'greedy', greedy)
  assert scored.captions == [c for row in LM_SAMPLES for c in row]
  refs = LM_REFERENCES.references
  # Every clip once, so evaluation's document frequencies are the reward's.
  for column, got in [*enumerate(scored.rewards.T), (None, scored.greedy_rewards)]:
    captions = LM_GREEDY if column is None else [row[column] for row in LM_SAMPLES]
    want = compute_caption_metrics(captions, refs).per_clip['cider_d']
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # CIDEr-D counted on the subword ids instead gives other rewards.
  ref_ids = np.stack([_padded_ids(tok, rs) for rs in refs])
  on_ids = reward_lib.CiderDReward.from_token_ids(ref_ids, vocab_size=tok.vocab_size)
  subword = on_ids.score_ids(samples.reshape(b * k, -1), np.repeat(ref_ids, k, axis=0))
  assert np.abs(subword - scored.rewards.reshape(-1)).max() > 0.1


def test_normalised_advantages_hand_computed():
  rewards_ = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]], np.float32)
  greedy = np.array([2.0, 1.0])
  baselines = rewards.baseline_rewards(rewards_, 'greedy', greedy)
  np.testing.assert_array_equal(baselines, [[2, 2, 2], [1, 1, 1]])
  # Raw advantages -1 0 1 -1 -1 5: mean 0.5, variance 27.5 / 6.
  expected = (np.array([[-1, 0, 1], [-1, -1, 5]]) - 0.5) / math.sqrt(27.5 / 6)
  got = steps.compute_advantages(rewards_, baselines, normalize=True, eps=0.0)
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  others = rewards.baseline_rewards(rewards_, 'mean_others')
  np.testing.assert_allclose(others, [[2.5, 2.0, 1.5], [3.0, 3.0, 0.0]])


def test_normalisation_uses_the_global_batch_across_devices():
  rng = np.random.default_rng(0)
  rewards_ = rng.normal(size=(16, 3)).astype(np.float32) * np.arange(1, 17)[:, None]
  baselines = rewards.baseline_rewards(rewards_, 'mean_others')
  # Split over 8 devices, the statistics are still those of all 48 samples.
  mesh = parallel.create_mesh()
  fn = jax.jit(lambda r, b: steps.compute_advantages(r, b, True))
  split = parallel.shard_batch({'r': rewards_, 'b': baselines}, mesh)
  assert len(split['r'].sharding.device_set) == 8
  np.testing.assert_allclose(
    fn(split['r'], split['b']),
    (rewards_ - baselines - np.mean(rewards_ - baselines)) / np.std(rewards_ - baselines),
    rtol=1e-5,
    atol=1e-6,
  )


def _hand_set_checker(probs: dict[str, float]):
  """A detector whose P(error) (last of 6 outputs) is set by hand per caption."""

  def checker(captions):
    return np.array([[0.5] * 5 + [probs[c]] for c in captions])

  return checker


def test_fluency_term_multiplies_the_reward_by_the_formula():
  probs = {'a b': 0.95, 'A': 0.3, 'c d': 0.92, 'x y': 0.89}
  captions, clips = list(probs), np.array([0, 0, 1, 0])
  cider = np.array([5.0, A_VS_AB, 3.125, 0.0])
  p = np.array(list(probs.values()))
  for mode, error in (('hard', p > 0.9), ('soft', p)):
    term = rewards.FluencyTerm(_hand_set_checker(probs), mode)
    reward_fn = rewards.CaptionReward(REFERENCES, {'cider_d': 1.0}, fluency=term)
    np.testing.assert_allclose(reward_fn(captions, clips), cider * (1 - 0.9 * error), rtol=1e-6)
    np.testing.assert_array_equal(reward_fn.metric_scores(captions, clips)['fluency_error'], error)
  half = rewards.FluencyTerm(_hand_set_checker(probs), 'hard', threshold=0.5, penalty=0.5)
  np.testing.assert_allclose(half.error(captions), [1, 0, 1, 1])
  reward_fn = rewards.CaptionReward(REFERENCES, {'cider_d': 1.0}, fluency=half)
  np.testing.assert_allclose(reward_fn(captions, clips), cider * [0.5, 1, 0.5, 0.5], rtol=1e-6)


def test_repetition_term_multiplies_the_reward_by_the_formula():
  # 3-grams of 'a b a b a b': aba bab aba bab -> 2 of 4 repeat one before; 'c d' has none.
  captions, clips = ['a b a b a b', 'c d', 'A b.'], np.array([0, 1, 0])
  cider = rewards.CaptionReward(REFERENCES, {'cider_d': 1.0})(captions, clips)
  assert (cider > 0).all()
  probs = {'a b a b a b': 0.5, 'c d': 0.2, 'A b.': 0.0}
  for fluency, factor in (
    (None, 1.0),
    (rewards.FluencyTerm(_hand_set_checker(probs), 'soft'), 1 - 0.9 * np.array([0.5, 0.2, 0.0])),
  ):
    reward_fn = rewards.CaptionReward(
      REFERENCES, {'cider_d': 1.0}, fluency=fluency, repetition_penalty=0.8
    )
    np.testing.assert_allclose(
      reward_fn(captions, clips), cider * factor * (1 - 0.8 * np.array([0.5, 0, 0])), rtol=1e-6
    )
    np.testing.assert_array_equal(
      reward_fn.metric_scores(captions, clips)['repetition'], [0.5, 0, 0]
    )
  assert 'repetition' not in rewards.CaptionReward(REFERENCES, {'cider_d': 1.0}).metric_scores(
    captions, clips
  )


def test_fluency_term_reads_a_saved_detector_folder_and_applies_the_formula(tmp_path):
  from aac_jax.metrics import fluency_training as ft
  from configs import base

  captions = ['a b', 'a', 'c d', 'c e', 'a b a b', 'x y z', 'c d and c d']
  tokenizer = ft.write_wordpiece(captions, tmp_path, 200)
  size = ft.DetectorSize(
    vocab_size=200, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32
  )
  module = ft.make_detector(size, tokenizer.get_vocab_size())
  inputs = ft.encode(tokenizer, captions)
  params = jax.jit(module.init)(jax.random.key(1), *(a[:1] for a in inputs))['params']
  ft.save_detector(tmp_path, module, params, {'source': 'test'})
  cfg = base.get_scst_config()
  cfg.fluency_dir, cfg.fluency = str(tmp_path), 'hard'
  term = rewards.fluency_term(cfg)  # Read through the FENSE loader.
  # Its P(error) equals the in-memory detector's (test_fluency_detector.py checks it).
  p = np.asarray(term.checker(captions), np.float64)[:, -1]
  term = dataclasses.replace(term, threshold=float(np.sort(p)[3:5].mean()))
  assert 0 < (p > term.threshold).sum() < len(p)  # Both sides of the threshold.
  clips = np.array([0, 0, 1, 1, 0, 1, 1])
  cider = rewards.CaptionReward(REFERENCES, {'cider_d': 1.0})(captions, clips)
  for mode, error in (('hard', p > term.threshold), ('soft', p)):
    fluency = dataclasses.replace(term, mode=mode)  # The same compiled detector.
    reward_fn = rewards.CaptionReward(REFERENCES, {'cider_d': 1.0}, fluency=fluency)
    np.testing.assert_allclose(reward_fn(captions, clips), cider * (1 - 0.9 * error), atol=1e-6)
  cfg.fluency = 'off'
  assert rewards.fluency_term(cfg) is None


def test_fluency_settings_are_checked_before_any_work(tmp_path, monkeypatch):
  from aac_jax import config_validation
  from configs import synthetic_demo_scst

  monkeypatch.delenv('AAC_FENSE_DIR', raising=False)
  config = synthetic_demo_scst.get_config('runlocal')
  config.scst.fluency, config.scst.fluency_threshold, config.scst.fluency_penalty = 'on', 1.5, -1
  config.scst.repetition_penalty = 2.0
  config.scst.ce_weight = -0.5
  config.scst.kl_weight, config.scst.baseline = 0.1, 'greedy'
  lines = config_validation.problems(config, 'scst', 8)
  assert 'scst.repetition_penalty=2.0: must be in [0, 1]' in lines, lines
  assert 'scst.ce_weight=-0.5: must be >= 0' in lines, lines
  assert any(
    line.startswith("scst.kl_weight=0.1: a KL-shaped reward needs scst.baseline='mean_others'")
    for line in lines
  ), lines
  config.scst.kl_weight, config.scst.baseline = 0.0, 'mean_others'
  config.scst.repetition_penalty = 1.0
  config.scst.ce_weight = synthetic_demo_scst.get_config('runlocal,ce=2.5').scst.ce_weight
  assert config.scst.ce_weight == 2.5
  assert any(line.startswith("scst.fluency='on': must be one of") for line in lines), lines
  assert 'scst.fluency_threshold=1.5: must be in [0, 1]' in lines, lines
  assert 'scst.fluency_penalty=-1.0: must be in [0, 1]' in lines, lines
  config.scst.fluency, config.scst.fluency_threshold, config.scst.fluency_penalty = 'soft', 0.9, 0.9
  config.scst.fluency_dir = str(tmp_path / 'nowhere')
  (line,) = config_validation.problems(config, 'scst', 8)
  assert line.startswith(f"scst.fluency_dir='{tmp_path / 'nowhere'}': ") and (
    'python tools/train_fluency.py --output DIR' in line
  ), line
  config.scst.fluency_dir = str(tmp_path)  # A folder, but no detector in it.
  (line,) = config_validation.problems(config, 'scst', 8)
  assert 'has no echecker.json or config.json' in line, line
  for name in ('echecker.json', 'config.json'):
    (tmp_path / name).write_text('{}')
  assert config_validation.problems(config, 'scst', 8) == []


def test_bad_baselines_and_rewards_are_refused():
  with pytest.raises(ValueError, match='num_samples >= 2'):
    rewards.baseline_rewards(np.zeros((2, 1)), 'mean_others')
  with pytest.raises(ValueError, match='greedy'):
    rewards.baseline_rewards(np.zeros((2, 2)), 'greedy')
  with pytest.raises(ValueError, match='baseline must be'):
    rewards.baseline_rewards(np.zeros((2, 2)), 'median')


def test_reward_weights_and_spice_refusal(monkeypatch):
  from configs import base

  cfg = base.get_scst_config()
  assert rewards.reward_weights(cfg) == {'cider_d': 1.0}
  cfg.reward = 'spider'
  assert rewards.reward_weights(cfg) == {'cider_d': 0.5, 'spice': 0.5}
  cfg.reward = 'mix'
  cfg.reward_weights = {'cider_d': 0.7, 'spice': 0.3}
  assert rewards.reward_weights(cfg) == {'cider_d': 0.7, 'spice': 0.3}
  cfg.reward_weights = {'bleu': 1.0}
  with pytest.raises(ValueError, match='reward_weights'):
    rewards.reward_weights(cfg)
  # Without the CoreNLP jars a SPICE reward refuses to start (never a fake SPICE).
  monkeypatch.delenv('AAC_SPICE_CORENLP_DIR', raising=False)
  from aac_jax.metrics import spice

  with pytest.raises(spice.SpiceUnavailable):
    rewards.CaptionReward(REFERENCES, {'cider_d': 0.5, 'spice': 0.5})


@pytest.mark.parametrize('arg', [None, 'runlocal', 'runlocal,baseline=greedy,init_from=/x'])
def test_scst_configs_load_and_validate(arg):
  from aac_jax import config_validation
  from aac_jax.scst import trainer
  from configs import clotho_scst, synthetic_demo_scst

  for module in (synthetic_demo_scst, clotho_scst):
    config = module.get_config(arg)
    config_validation.validate(config, 'scst', 8)
    assert config.train.init_from and config.scst.enabled
    assert config.train.batch_size % 8 == 0
    sample, greedy = trainer.make_sample_settings(config)
    assert sample.method == 'sample' and sample.max_len <= config.model.max_decode_len
    assert (greedy is not None) == (config.scst.baseline == 'greedy')


def test_model_and_front_end_come_from_the_init_from_run(tmp_path):
  from aac_jax.scst import trainer
  from configs import synthetic_demo, synthetic_demo_scst

  ce = synthetic_demo.get_config()
  ce.model.encoder_dim, ce.frontend.hop_length, ce.model.dropout = 48, 256, 0.3
  (tmp_path / 'config.json').write_text(ce.to_json())
  config = synthetic_demo_scst.get_config(f'init_from={tmp_path}')
  config.model.encoder_dim = 7
  inherited = trainer.inherit_init_config(config)
  assert inherited.model.encoder_dim == 48 and inherited.frontend.hop_length == 256
  # This stage's own: dropout, SpecAugment, optimizer.
  assert inherited.model.dropout == 0.0 and not inherited.frontend.spec_augment
  assert inherited.optim.lr == config.optim.lr
  assert config.model.encoder_dim == 7  # the argument is not changed
