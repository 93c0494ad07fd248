"""The checkpoint converter refuses files of another model or shape with one clear message."""

import argparse
import os
import subprocess
import sys

import numpy as np
import pytest

from aac_jax.convert import registry
from aac_jax.convert.mapping import ConversionError
from aac_jax.models import pretrained_store
from tests.torch_reference import import_reference, torch_module
from tools import convert_checkpoint


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
  with pytest.raises(
    ValueError, match=r"known: \['clap', 'cnn14', 'conette', 'convnext', 'fense', 'llm'\]"
  ):
    registry.get_converter('resnet')


def _cli(*args: str) -> subprocess.CompletedProcess:
  """`tools/convert_checkpoint.py ARGS` run as a user runs it."""
  script = os.path.join(os.path.dirname(__file__), '..', 'tools', 'convert_checkpoint.py')
  return subprocess.run(
    [sys.executable, script, *args], capture_output=True, text=True, timeout=300, check=False
  )


def test_corrupt_download_is_one_line_and_exit_1(tmp_path):
  """An HTML error page saved as the .pth (`echo '<html>' > x.pth`): one line, exit 1."""
  path = tmp_path / 'x.pth'
  path.write_text('<html>\n')
  result = _cli('cnn14', '--input', str(path), '--output', str(tmp_path / 'out'))
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert str(path) in lines[0] and 'not a PyTorch checkpoint' in lines[0]
  assert "b'<html>" in lines[0] and 'download the file again' in lines[0]
  assert 'weights_only' not in result.stderr and 'Traceback' not in result.stderr
  assert not (tmp_path / 'out').exists()


def test_truncated_checkpoint_is_one_line(tmp_path, cnn14_state):
  """A download cut short: the zip archive torch.save wrote, missing its end."""
  path = _save(tmp_path, {'conv_block1.conv1.weight': cnn14_state['conv_block1.conv1.weight']})
  data = open(path, 'rb').read()
  with open(path, 'wb') as f:
    f.write(data[: len(data) // 2])
  with pytest.raises(ValueError, match='not a PyTorch checkpoint') as error:
    registry.convert_file('cnn14', path, os.path.join(tmp_path, 'out'))
  assert path in str(error.value) and '\n' not in str(error.value)


@pytest.mark.parametrize('model', ['cnn14', 'convnext'])
def test_non_tensor_objects_are_named_never_an_unsafe_load(tmp_path, capsys, model):
  """A training checkpoint with Python objects (argparse.Namespace): named, exit 1, one line."""
  torch = torch_module()
  path = os.path.join(tmp_path, 'train_state.pth')
  torch.save({'model': {'w': torch.zeros(2)}, 'args': argparse.Namespace(lr=1e-3)}, path)
  with pytest.raises(SystemExit) as stop:
    convert_checkpoint.main([model, '--input', path, '--output', os.path.join(tmp_path, 'o')])
  message = str(stop.value.code)
  assert message.startswith(f'convert_checkpoint {model}: error: {path} ')
  assert 'argparse.Namespace' in message and 'state_dict()' in message
  assert 'weights_only' not in message and '\n' not in message
  assert capsys.readouterr().out == ''


def test_fense_checker_with_objects_is_refused_unless_published(tmp_path):
  """Only the published FENSE checkers (by checksum) are fully unpickled."""
  torch = torch_module()
  path = tmp_path / 'echecker.ckpt'
  torch.save({'model_type': 'bert-base-uncased', 'args': argparse.Namespace(x=1)}, path)
  with pytest.raises(SystemExit) as stop:
    convert_checkpoint.main(
      ['fense', '--echecker', str(path), '--bert_dir', str(tmp_path), '--output', str(tmp_path)]
    )
  message = str(stop.value.code)
  assert str(path) in message and 'argparse.Namespace' in message
  assert 'weights_only' not in message


def test_fense_sbert_prints_wrote_once(tmp_path, capsys):
  """`convert_checkpoint.py fense --sbert` says `wrote OUT` once (it printed it twice)."""
  import fense_reference as fref

  vocab = fref.write_vocab(['a dog barks', 'rain falls on a roof'] * 20, tmp_path / 'vocab', 200)
  fref.save_sbert(vocab, tmp_path / 'sbert_bin', safetensors=False)
  out = tmp_path / 'sbert'
  assert (
    convert_checkpoint.main(['fense', '--sbert', str(tmp_path / 'sbert_bin'), '--output', str(out)])
    == 0
  )
  assert capsys.readouterr().out.splitlines() == [f'wrote {out}']


@pytest.mark.parametrize('after_stem_dim, stem', [([56], 'audioset'), ([252, 56], 'conette')])
def test_convnext_stem_is_read_from_the_file(tmp_path, after_stem_dim, stem):
  """The AudioSet file (18 x 4 stem) and the DCASE 2024 baseline's (CoNeTTE's 4 x 4 stem)."""
  torch_module().manual_seed(0)
  convnext = import_reference('conette.nn.encoders.convnext')
  ref = convnext.convnext_tiny(
    use_speed_perturb=False, drop_path_rate=0.0, after_stem_dim=after_stem_dim
  )
  path = _save(tmp_path, ref.state_dict())
  settings = registry.convert_file('convnext', path, os.path.join(tmp_path, 'out'))
  assert settings['architecture']['stem'] == stem
