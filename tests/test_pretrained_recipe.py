"""The ConvNeXt recipe's smoke variant end to end, from a converted random checkpoint.

Random-init conette ConvNeXt-Tiny -> `torch.save({'model': ...})` ->
converter -> `configs/clotho_convnext.py:runlocal` on `toy_aac` built at
32 kHz: a frozen run (tagger bit-identical after the steps, then
validation and test evaluation), an unfrozen run (tagger changed), then
SCST, `aac-caption` and export, each from the frozen run's workdir.
Real runs and files, no mocks.
"""

import os

import jax
import numpy as np
import pytest
import soundfile as sf
import toy_dataset

from aac_jax import caption_cli, export, inference, scst
from aac_jax.convert import registry
from aac_jax.models import pretrained_store
from aac_jax.train import trainer
from configs import clotho_convnext, clotho_scst
from tests.torch_reference import import_reference, torch_module

SAMPLE_RATE = 32000


def _point_at_toy(config, data_dir, name):
  ds = config.dataset
  ds.name, ds.builder_config, ds.data_dir = name, '', str(data_dir)
  ds.train_split, ds.validation_split, ds.test_split = 'train', 'validation', 'test'


def build_toy_32k(root) -> str:
  """`toy_aac` at 32 kHz with 1.5-2 s clips (the ConvNeXt needs >= 1.25 s); its name."""
  return toy_dataset.build_toy_dataset(
    str(root / 'tfds'),
    splits={'train': 16, 'validation': 8, 'test': 8},
    min_seconds=1.5,
    max_seconds=2.0,
    sample_rate=SAMPLE_RATE,
  )


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  """Toy data at 32 kHz and a converted random ConvNeXt; a shared compilation cache."""
  root = tmp_path_factory.mktemp('recipe')
  jax.config.update('jax_compilation_cache_dir', str(root / 'jax_cache'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  name = build_toy_32k(root)
  return root, name, make_converted_convnext(root)


def make_converted_convnext(root) -> str:
  """A random ConvNeXt-Tiny of the baseline's kind saved as the published file, converted.

  The DCASE 2024 baseline's encoder: conette's `convnext_tiny` with CoNeTTE's
  stem (`after_stem_dim=[252, 56]`, like `convnext_tiny_465mAP_BL_AC_70kit.pth`);
  the converter reads the stem from the file. Returns the folder.
  """
  torch = torch_module()
  torch.manual_seed(0)
  convnext = import_reference('conette.nn.encoders.convnext')
  ref = convnext.convnext_tiny(
    use_speed_perturb=False, drop_path_rate=0.0, after_stem_dim=[252, 56]
  )
  path = str(root / 'convnext_tiny_random.pth')
  torch.save({'model': ref.state_dict()}, path)
  converted = str(root / 'convnext')
  registry.convert_file('convnext', path, converted)
  return converted


def _recipe(setup, freeze='all'):
  root, name, converted = setup
  config = clotho_convnext.get_config(f'runlocal,encoder_init={converted},freeze={freeze}')
  _point_at_toy(config, root / 'tfds', name)
  return config


def _tagger_leaves(params):
  return pretrained_store.flatten(jax.tree.map(np.asarray, params['encoder']['tagger']))


@pytest.fixture(scope='module')
def frozen_run(setup):
  root = setup[0]
  workdir = root / 'frozen'
  result = trainer.train_and_evaluate(_recipe(setup, 'all'), str(workdir))
  assert result.reason == 'finished'
  return workdir


def test_frozen_tagger_is_bit_identical_and_evaluated(frozen_run, setup):
  _, _, converted = setup
  loaded = inference.load_model(frozen_run)
  assert loaded.step == 3 and loaded.config.frontend.kind == 'pann'
  source, _ = pretrained_store.load_converted(converted)
  source = pretrained_store.flatten(source)
  for key, value in _tagger_leaves(loaded.params).items():
    assert np.array_equal(value, source[key]), key
  assert (frozen_run / 'predictions' / 'validation_step3.json').exists()
  assert (frozen_run / 'predictions' / 'test_step3.json').exists()


def test_unfrozen_tagger_trains(setup):
  root, _, converted = setup
  config = _recipe(setup, 'none')
  config.train.num_steps = config.train.eval_every = config.train.checkpoint_every = 2
  config.eval.test_at_end = False
  workdir = root / 'unfrozen'
  trainer.train_and_evaluate(config, str(workdir))
  loaded = inference.load_model(workdir)
  source = pretrained_store.flatten(pretrained_store.load_converted(converted)[0])
  changed = [
    k for k, v in _tagger_leaves(loaded.params).items() if not np.array_equal(v, source[k])
  ]
  assert any(k.startswith('stages_0_0') for k in changed) and len(changed) > 100


def test_scst_caption_and_export_from_the_run(frozen_run, setup, tmp_path):
  config = _recipe(setup, 'all')
  scst_cfg = clotho_scst.get_config(f'runlocal,init_from={frozen_run}')
  config.scst = scst_cfg.scst
  config.train.init_from = str(frozen_run)
  config.train.num_steps = config.train.eval_every = config.train.checkpoint_every = 2
  config.scst.num_samples = 2
  config.scst.eval_initial = False
  scst.run_scst(config, str(tmp_path / 'scst'))
  assert list((tmp_path / 'scst' / 'checkpoints').iterdir())

  rng = np.random.default_rng(0)
  clip = tmp_path / 'clip.wav'
  sf.write(clip, 0.3 * rng.standard_normal(int(1.8 * 44100)).astype(np.float32), 44100)
  out = tmp_path / 'captions.json'
  assert caption_cli.main([str(clip), '--run', str(frozen_run), '--output', str(out)]) == 0
  assert out.exists() and 'clip.wav' in out.read_text()

  exported = tmp_path / 'export'
  assert export.main(['--workdir', str(frozen_run), '--output', str(exported)]) == 0
  assert os.path.getsize(exported / export.EXPORT_FILENAME) > 1e6
