"""The checkpoint converter refuses files of another model or shape with one clear message."""

import os

import numpy as np
import pytest

from aac_jax.convert import registry
from aac_jax.convert.mapping import ConversionError
from aac_jax.models import pretrained_store
from tests.torch_reference import import_reference, torch_module


@pytest.fixture(scope='module')
def cnn14_state():
  torch_module().manual_seed(0)
  cnn14 = import_reference('conette.nn.encoders.cnn14')
  return cnn14.Cnn14().state_dict()


def _save(tmp_path, state, name='file.pth', wrap=True):
  torch = torch_module()
  path = os.path.join(tmp_path, name)
  torch.save({'model': state} if wrap else state, path)
  return path


def test_other_model_is_refused_naming_first_key_and_listing_all(tmp_path, cnn14_state):
  path = _save(tmp_path, cnn14_state)
  with pytest.raises(ConversionError) as error:
    registry.convert_file('convnext', path, os.path.join(tmp_path, 'out'))
  message = str(error.value)
  first_line = message.splitlines()[0]
  assert 'ConvNeXt' in first_line and "missing key 'bn0.weight'" not in first_line
  assert "missing key 'downsample_layers.0.0.weight'" in first_line
  assert "'conv_block1.conv1.weight'" in message  # unexpected keys listed
  assert "'head_audioset.bias'" in message  # missing keys listed
  assert not os.path.exists(os.path.join(tmp_path, 'out'))


def test_wrong_shape_is_refused_naming_key_and_shapes(tmp_path, cnn14_state):
  torch = torch_module()
  state = dict(cnn14_state)
  state['fc_audioset.weight'] = torch.zeros(10, 2048)
  state['fc_audioset.bias'] = torch.zeros(10)
  path = _save(tmp_path, state)
  with pytest.raises(
    ConversionError, match=r"'fc_audioset.weight' has shape \(10, 2048\), expected \(527, 2048\)"
  ):
    registry.convert_file('cnn14', path, os.path.join(tmp_path, 'out'))


def test_extra_key_is_listed(tmp_path, cnn14_state):
  torch = torch_module()
  state = dict(cnn14_state, **{'fc_extra.weight': torch.zeros(3)})
  path = _save(tmp_path, state)
  with pytest.raises(ConversionError, match=r"unexpected key 'fc_extra.weight'"):
    registry.convert_file('cnn14', path, os.path.join(tmp_path, 'out'))


def test_other_mel_settings_are_refused(tmp_path, cnn14_state):
  torch = torch_module()
  state = dict(cnn14_state)
  state['logmel_extractor.melW'] = state['logmel_extractor.melW'] * 1.5
  path = _save(tmp_path, state)
  with pytest.raises(ConversionError, match='logmel_extractor.melW'):
    registry.convert_file('cnn14', path, os.path.join(tmp_path, 'out'))
  del torch


def test_bare_state_dict_converts_and_batchnorm_is_folded(tmp_path, cnn14_state):
  path = _save(tmp_path, cnn14_state, wrap=False)
  out = os.path.join(tmp_path, 'out')
  settings = registry.convert_file('cnn14', path, out)
  params, loaded = pretrained_store.load_converted(out)
  assert loaded == settings and settings['encoder'] == 'cnn14'
  assert settings['frontend']['sample_rate'] == 32000 and settings['frontend']['n_mels'] == 64
  bn = {
    k: cnn14_state[f'conv_block2.bn1.{k}'].numpy()
    for k in ('weight', 'bias', 'running_mean', 'running_var')
  }
  scale = bn['weight'] / np.sqrt(bn['running_var'] + 1e-5)
  np.testing.assert_allclose(params['blocks_1']['bn1']['scale'], scale, rtol=1e-6)
  np.testing.assert_allclose(
    params['blocks_1']['bn1']['bias'], bn['bias'] - bn['running_mean'] * scale, rtol=1e-6, atol=1e-7
  )
  kernel = cnn14_state['conv_block1.conv1.weight'].numpy().transpose(2, 3, 1, 0)
  np.testing.assert_array_equal(params['blocks_0']['conv1']['kernel'], kernel)


def test_not_a_state_dict_is_refused(tmp_path):
  torch = torch_module()
  path = os.path.join(tmp_path, 'x.pth')
  torch.save({'model': [1, 2, 3]}, path)
  with pytest.raises(ValueError, match='no state dict of tensors'):
    registry.convert_file('cnn14', path, os.path.join(tmp_path, 'out'))


def test_unknown_converter_names_the_known_ones():
  with pytest.raises(ValueError, match=r"known: \['cnn14', 'conette', 'convnext', 'fense'\]"):
    registry.get_converter('resnet')
