"""Config files load, variants parse, sweeps expand."""

import json

import pytest

from aac_jax import sweeps
from configs import (
  audiocaps,
  audiocaps_convnext,
  clotho,
  clotho_convnext,
  conette,
  synthetic_demo,
)
from configs.config_args import parse_config_arg


@pytest.mark.parametrize(
  'module', [synthetic_demo, clotho, audiocaps, clotho_convnext, audiocaps_convnext, conette]
)
@pytest.mark.parametrize('arg', [None, 'runlocal'])
def test_configs_load(module, arg):
  config = module.get_config(arg)
  assert config.model.max_decode_len >= config.dataset.max_caption_tokens + 1
  assert config.train.batch_size % 8 == 0  # Splits over the 8 test devices.
  assert config.decode.max_len <= config.model.max_decode_len


def test_unknown_variant_names_the_accepted_ones():
  with pytest.raises(ValueError, match='accepted'):
    clotho.get_config('modle=small')
  with pytest.raises(ValueError, match='choose one of'):
    clotho.get_config('model=huge')


def test_parse_config_arg_values_and_flags():
  parsed = parse_config_arg('model=small,runlocal', {'model': 'base', 'runlocal': False})
  assert parsed == {'model': 'small', 'runlocal': True}


def test_sweep_product_and_zip():
  points = sweeps.product(
    [sweeps.sweep('config.optim.lr', [1, 2]), sweeps.sweep('config.seed', [0, 1, 2])]
  )
  assert len(points) == 6
  assert {'config.optim.lr': 2, 'config.seed': 1} in points
  zipped = sweeps.zipit([sweeps.sweep('config.a', [1, 2]), sweeps.sweep('config.b', [3, 4])])
  assert zipped == [{'config.a': 1, 'config.b': 3}, {'config.a': 2, 'config.b': 4}]
  with pytest.raises(ValueError):
    sweeps.zipit([sweeps.sweep('config.a', [1]), sweeps.sweep('config.b', [3, 4])])
  assert sweeps.to_flags({'config.optim.lr': 0.1}) == ['--config.optim.lr=0.1']
  assert sweeps.run_name({'config.optim.lr': 0.1, 'config.seed': 3}) == 'lr=0.1,seed=3'


@pytest.mark.parametrize('module', [synthetic_demo, clotho])
def test_config_sweeps_resolve(module):
  """Every point of each config's get_sweep is a valid set of overrides."""
  from aac_jax.sweeps import define, runner

  path = f'configs/{module.__name__.rsplit(".", 1)[-1]}.py'
  sweep = runner.make_sweep(path, '/tmp/unused', seeds=2, extra_flags=[])
  assert len(sweep.points) == 2 * len(define.load_sweep(path))
  for config, point in zip(runner.check_points(sweep), sweep.points, strict=True):
    assert config.seed == point.seed
    for key, value in point.overrides.items():
      assert config[key.split('.', 1)[1]] == value


def test_synthetic_demo_short_variant():
  config = synthetic_demo.get_config('short')
  assert config.train.num_steps == 300 and config.train.eval_every == 150


@pytest.mark.parametrize('module', [clotho_convnext, audiocaps_convnext])
def test_convnext_recipes_follow_the_baseline(module):
  config = module.get_config('encoder_init=pretrained/convnext')
  assert (config.model.encoder, config.model.encoder_freeze) == ('convnext', 'all')
  assert config.model.encoder_init == 'pretrained/convnext'
  assert (config.dataset.sample_rate, config.dataset.builder_config) == (32000, '32000hz')
  assert (config.optim.lr, config.optim.weight_decay, config.model.mixup_alpha) == (5e-4, 2.0, 0.4)
  assert (config.decode.beam_size, config.model.decoder_dim) == (3, 256)


@pytest.mark.parametrize(
  'module, arg',
  [
    (conette, None),
    (conette, 'scst'),
    (conette, 'runlocal'),
    (clotho_convnext, None),
    (clotho_convnext, 'runlocal'),
    (audiocaps_convnext, None),
  ],
)
def test_recipes_score_with_their_sources_decoding(module, arg):
  """Validation, best-checkpoint choice and test decode as the published scores did.

  CoNeTTE's and the DCASE 2024 baseline's validation and test steps call
  their beam `generate`; a greedy `eval.decode` here (the base default) would
  score these recipes differently from the numbers they are compared with.
  """
  config = module.get_config(arg)
  assert config.eval.decode.to_dict() == config.decode.to_dict()
  d = config.eval.decode
  assert (d.method, d.beam_size, d.min_len, d.max_len) == ('conette_beam', 3, 3, 21)
  assert d.ban_repeated_content_words


def test_conette_init_from_scores_with_the_runs_decoding(tmp_path):
  """A converted run's decoding (its config.json) is also what validation and test use."""
  saved = conette.get_config().to_dict()
  saved['decode']['repeatable_tokens'] = ['a', 'the']
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  config = conette.get_config(f'init_from={tmp_path}')
  assert list(config.eval.decode.repeatable_tokens) == ['a', 'the']
  assert config.eval.decode.to_dict() == config.decode.to_dict()


@pytest.mark.parametrize('module', [clotho_convnext, audiocaps_convnext])
def test_convnext_recipes_build_the_baselines_model(module):
  """The baseline's decoder (CoNeTTE's), encoder stem, repetition ban and selection rule."""
  config = module.get_config()
  m = config.model
  assert (m.decoder_style, m.convnext_stem, m.task_token_id) == ('conette', 'conette', -1)
  assert (m.decoder_layers, m.decoder_heads, m.decoder_ff_dim, m.dropout) == (6, 8, 2048, 0.2)
  repeatable = set(config.decode.repeatable_tokens)
  assert len(repeatable) == 179 and {'a', 'the', 'of', 'while'} <= repeatable
  assert 'dog' not in repeatable and '<eos>' not in repeatable
  # No validation loss in aac_jax: CIDEr-D instead of the baseline's val/loss (docstring).
  assert (config.train.best_metric, config.train.best_mode) == ('cider_d', 'max')
  assert 'val/loss' in module.__doc__ or 'val/loss' in clotho_convnext.__doc__
