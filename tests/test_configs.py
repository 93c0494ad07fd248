"""Config files load, variants parse, sweeps expand."""

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
