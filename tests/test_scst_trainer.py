"""The SCST stage end to end on `toy_aac`: from a CE run, exact resume, reports.

Real runs, real orbax files, no mocks: a 2-step cross-entropy run, then SCST
runs started from it with `train.init_from`.
"""

import json
import re

import jax
import numpy as np
import pytest
import toy_dataset

from aac_jax import scst
from aac_jax.data import pipeline, tokenizer
from aac_jax.models import llm_bridge
from aac_jax.train import checkpointing, trainer
from configs import clotho_llm, synthetic_demo, synthetic_demo_scst


def _point_at_toy(config, data_dir, name):
  config.dataset.name = name
  config.dataset.builder_config = ''
  config.dataset.data_dir = str(data_dir)
  config.dataset.max_audio_seconds = 1.0
  # Same model and front end in both stages: the eval step compiles once.
  config.model.dropout = config.model.attention_dropout = 0.0
  config.frontend.spec_augment = False
  config.eval.test_at_end = False


def _write_ce_workdir(config, workdir):
  """A cross-entropy workdir as the trainer leaves it: config, vocab and a checkpoint.

  The state is the trainer's own fresh initialisation (training it first
  would only add compile time here; test_checkpoint_resume covers that).
  """
  exp = trainer.start_experiment(config, str(workdir))
  trainer.write_config(config, exp.workdir)
  manager = checkpointing.create_checkpoint_manager(workdir, config.train)
  train_iter = pipeline.make_train_iterator(config.dataset, exp.tokenizer, config.train.batch_size)
  state = trainer.restore_state(exp, manager, train_iter)
  checkpointing.save_checkpoint(manager, 2, state, train_iter, {'cider_d': 0.0})
  manager.wait_until_finished()
  manager.close()


@pytest.fixture(scope='module')
def ce_workdir(tmp_path_factory):
  """A cross-entropy workdir on a fresh `toy_aac` copy."""
  cache = tmp_path_factory.getbasetemp() / 'jax_cache'
  previous = jax.config.jax_compilation_cache_dir
  jax.config.update('jax_compilation_cache_dir', str(cache))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  data_dir = tmp_path_factory.mktemp('tfds')
  name = toy_dataset.build_toy_dataset(str(data_dir))
  config = synthetic_demo.get_config('runlocal')
  _point_at_toy(config, data_dir, name)
  workdir = tmp_path_factory.mktemp('ce')
  _write_ce_workdir(config, workdir)
  yield workdir, data_dir, name
  jax.config.update('jax_compilation_cache_dir', previous)


def _scst_config(ce_workdir, stop_at_step=-1, **scst_overrides):
  workdir, data_dir, name = ce_workdir
  config = synthetic_demo_scst.get_config(f'runlocal,init_from={workdir}')
  _point_at_toy(config, data_dir, name)
  config.eval.test_at_end = True
  config.train.stop_at_step = stop_at_step
  config.scst.update(scst_overrides)
  return config


@pytest.fixture(scope='module')
def straight(ce_workdir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('scst')
  return workdir, scst.run_scst(_scst_config(ce_workdir), str(workdir))


def test_scst_run_reports_both_rows(straight, ce_workdir):
  workdir, result = straight
  assert (result.step, result.reason, int(result.state.step)) == (4, 'finished', 4)
  assert result.split == 'test' and result.final_step == 4
  for scores in (result.initial, result.final):
    for key in ('cider_d', 'bleu_4', 'vocab_size', 'repeated_bigram_rate', 'mean_length'):
      assert np.isfinite(scores[key]), key
  saved = json.loads((workdir / scst.trainer.INITIAL_SCORES_FILE).read_text())
  assert saved['test'] == pytest.approx(result.initial)
  assert (workdir / 'predictions' / 'test_init.json').exists()
  assert (workdir / 'vocab.txt').read_text() == (ce_workdir[0] / 'vocab.txt').read_text()
  # The features are normalised with the cross-entropy run's numbers.
  assert (workdir / 'feature_stats.json').read_text() == (
    ce_workdir[0] / 'feature_stats.json'
  ).read_text()
  assert 'SCST finished at step 4' in (workdir / 'train.log').read_text()
  assert 0.0 < result.timing['reward_share'] < 1.0
  table = scst.format_comparison(result)
  assert table[1].startswith('cross-entropy') and table[2].startswith('scst')


def test_resume_from_disk_equals_straight_run(straight, ce_workdir, tmp_path):
  _, reference = straight
  first = scst.run_scst(_scst_config(ce_workdir, stop_at_step=2), str(tmp_path))
  assert (first.step, first.reason, first.final) == (2, 'stopped', {})
  assert sorted(
    checkpointing.create_checkpoint_manager(
      tmp_path, _scst_config(ce_workdir).train, read_only=True
    ).all_steps()
  ) == [2]
  resumed = scst.run_scst(_scst_config(ce_workdir), str(tmp_path))
  assert resumed.step == 4 and int(resumed.state.step) == 4
  assert resumed.initial == pytest.approx(reference.initial)  # read back, not re-measured
  for x, y in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(reference.state), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_scst_needs_a_starting_point(ce_workdir, tmp_path):
  config = _scst_config(ce_workdir)
  config.train.init_from = ''
  with pytest.raises(ValueError, match='init_from'):
    scst.run_scst(config, str(tmp_path))


@pytest.fixture(scope='module')
def llm_ce_workdir(ce_workdir, tmp_path_factory):
  """A cross-entropy workdir of a LoRA language-model captioner on the same toy data."""
  _, data_dir, name = ce_workdir
  config = clotho_llm.get_config('runlocal')
  _point_at_toy(config, data_dir, name)
  config.model.llm.update(dict(train='lora', lora_rank=2, lora_targets=['q', 'v', 'down']))
  workdir = tmp_path_factory.mktemp('llm_ce')
  _write_ce_workdir(config, workdir)
  return workdir, data_dir, name


def test_scst_with_a_lora_language_model_moves_adapters_only(llm_ce_workdir, tmp_path):
  # The SCST config names no model: decoder_style='llm' and the whole model.llm block
  # (LoRA, prompt ids) come from the cross-entropy run's config.json.
  config = _scst_config(llm_ce_workdir)
  config.scst.eval_initial = config.eval.test_at_end = False
  config.train.eval_every = 0
  result = scst.run_scst(config, str(tmp_path))
  assert (result.step, result.reason, int(result.state.step)) == (4, 'finished', 4)
  saved = json.loads((tmp_path / 'config.json').read_text())['model']
  assert saved['decoder_style'] == 'llm' and saved['llm']['train'] == 'lora'
  log = (tmp_path / 'train.log').read_text()
  rewards = [float(v) for v in re.findall(r'train/reward_mean=([^,\s]+)', log)]
  assert len(rewards) == 4 and np.all(np.isfinite(rewards)), rewards

  trained = result.state.params
  target = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), trained
  )
  before, _, _ = checkpointing.restore_params(llm_ce_workdir[0], config.train, target)
  frozen = jax.tree.leaves(llm_bridge.frozen_mask(before, 'lora'))
  moved = {'frozen': 0, 'lora': 0, 'projector': 0}
  leaves = jax.tree_util.tree_flatten_with_path(before)[0]
  for (path, old), new, is_frozen in zip(leaves, jax.tree.leaves(trained), frozen, strict=True):
    keys = [k.key for k in path]
    same = np.array_equal(np.asarray(old), np.asarray(new))
    if is_frozen:
      assert same, keys  # the language model's base weights: bit-identical
      moved['frozen'] += 1
    elif keys[-1] in ('lora_a', 'lora_b') or 'projector' in keys:
      assert not same, keys
      moved['lora' if keys[-1].startswith('lora') else 'projector'] += 1
  assert moved['frozen'] > 10 and moved['lora'] == 2 * 3 and moved['projector'] == 4, moved


@pytest.fixture(scope='module')
def micro_clap_dir(tmp_path_factory):
  """A converted random CLAP folder (tests/clap_reference.py 'micro', unfused layout)."""
  pytest.importorskip('torch')
  pytest.importorskip('transformers')
  import sys

  from tests import clap_reference, corpora

  sys.path.insert(0, 'tools')
  import convert_checkpoint

  hf, out = tmp_path_factory.mktemp('clap_hf'), tmp_path_factory.mktemp('clap')
  captions = clap_reference.read_captions(
    corpora.corpora_dir() / 'clotho' / 'clotho_captions_development.csv', 100
  )
  tok = clap_reference.train_tokenizer(hf, captions, max_length=40)
  clap_reference.save_random_clap(hf, False, len(tok), size='micro')
  assert convert_checkpoint.main(['clap', '--input', str(hf), '--output', str(out)]) == 0
  return out


def test_scst_with_a_clap_reward_term_runs_and_moves_the_model(
  ce_workdir, micro_clap_dir, tmp_path
):
  """reward='mix' with {cider_d: 1, clap: 1000}: the logged rewards carry the CLAP cosine."""
  config = _scst_config(ce_workdir, reward='mix', reward_weights={'cider_d': 1.0, 'clap': 1000.0})
  config.scst.clap_dir = str(micro_clap_dir)
  config.scst.eval_initial = config.eval.test_at_end = False
  config.train.eval_every = 0
  config.train.stop_at_step = 2  # The `straight` run's schedule: its compiled steps are reused.
  result = scst.run_scst(config, str(tmp_path))
  assert (result.step, result.reason, int(result.state.step)) == (2, 'stopped', 2)
  log = (tmp_path / 'train.log').read_text()
  rewards = np.array([float(v) for v in re.findall(r'train/reward_mean=([^,\s]+)', log)])
  spread = np.array([float(v) for v in re.findall(r'train/reward_std=([^,\s]+)', log)])
  # CIDEr-D alone is within [0, 10]; 1000 x a cosine in [-1, 1] is what takes it outside.
  assert len(rewards) == 2 and np.all(np.abs(rewards) > 10) and np.all(np.abs(rewards) < 1010)
  assert np.all(spread > 0), spread  # Samples of a clip differ: the advantages are not all 0.
  # Each term is logged: the mean reward is their weighted sum (6 printed digits).
  terms = {
    name: np.array([float(v) for v in re.findall(rf'train/reward_{name}_mean=([^,\s]+)', log)])
    for name in ('cider_d', 'clap')
  }
  np.testing.assert_allclose(terms['cider_d'] + 1000.0 * terms['clap'], rewards, rtol=1e-4)

  trained = result.state.params
  target = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), trained
  )
  before, _, _ = checkpointing.restore_params(ce_workdir[0], config.train, target)
  moved = [
    not np.array_equal(np.asarray(x), np.asarray(y))
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(trained), strict=True)
  ]
  assert sum(moved) > len(moved) // 2, (sum(moved), len(moved))


def test_iterator_with_a_tokenizer_adds_one_reference_per_clip_and_keeps_the_crops(ce_workdir):
  config = _scst_config(ce_workdir)
  exp_tokenizer = tokenizer.load_vocab(ce_workdir[0] / 'vocab.txt')
  references = scst.read_train_references(config.dataset).references
  plain = scst.make_scst_train_iterator(config.dataset, 4)
  with_targets = scst.make_scst_train_iterator(config.dataset, 4, tokenizer=exp_tokenizer)
  for _ in range(3):
    a, b = next(plain), next(with_targets)
    assert 'targets' not in a and b['targets'].shape == (4, config.dataset.max_caption_tokens)
    for key in ('audio', 'audio_paddings', 'index'):
      np.testing.assert_array_equal(a[key], b[key])
    for index, row in zip(b['index'], b['targets'], strict=True):
      expected = {
        tuple(exp_tokenizer.encode_targets(c, config.dataset.max_caption_tokens))
        for c in references[int(index)]
      }
      assert tuple(row) in expected


def test_scst_with_a_reference_cross_entropy_term_logs_it(ce_workdir, tmp_path):
  config = _scst_config(ce_workdir, ce_weight=0.5)
  config.scst.eval_initial = config.eval.test_at_end = False
  config.train.eval_every = 0
  config.train.stop_at_step = 2
  result = scst.run_scst(config, str(tmp_path))
  assert (result.step, result.reason) == (2, 'stopped')
  log = (tmp_path / 'train.log').read_text()
  ce = [float(v) for v in re.findall(r'train/ce_loss=([^,\s]+)', log)]
  assert len(ce) == 2 and all(0 < v < 20 for v in ce), ce


def test_kl_shaped_reward_starts_at_zero_and_grows_as_the_policy_moves(ce_workdir, tmp_path):
  # The reference is the init_from parameters: the first batches (sampled before any
  # update lands) have log p(sample) equal under both; later ones differ.
  config = _scst_config(ce_workdir, kl_weight=0.5)
  config.scst.eval_initial = config.eval.test_at_end = False
  config.train.eval_every = 0
  result = scst.run_scst(config, str(tmp_path))
  assert (result.step, result.reason) == (4, 'finished')
  log = (tmp_path / 'train.log').read_text()
  kl = [float(v) for v in re.findall(r'train/reward_kl_mean=([^,\s]+)', log)]
  assert len(kl) == 4, kl
  assert abs(kl[0]) < 1e-5 and abs(kl[1]) < 1e-5, kl  # Samples of the CE parameters.
  assert max(abs(kl[2]), abs(kl[3])) > 1e-4, kl  # After updates (4 steps of lr 1e-4).
