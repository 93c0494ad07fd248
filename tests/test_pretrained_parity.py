"""Parity of the Flax ConvNeXt / CNN14 taggers with conette 0.3.2's PyTorch modules.

Random-init upstream model -> `torch.save({'model': state_dict})` (the
published layout) -> `tools/convert_checkpoint.py` -> Flax model, on random
audio of several lengths in one zero-padded batch. Upstream runs each clip
alone (its batched frames depend on the batch's padding; ours do not), so
every real frame of the padded batch must equal upstream's frames of that
clip.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aac_jax.audio.pann_frontend import pann_log_mel
from aac_jax.convert.cnn14 import FRONTEND as CNN14_FRONTEND
from aac_jax.convert.convnext import FRONTEND as CONVNEXT_FRONTEND
from aac_jax.models import pretrained_store
from aac_jax.models.cnn14 import Cnn14Tagger
from aac_jax.models.convnext import ConvNeXtTagger
from tests.torch_reference import import_reference, torch_module

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_RATE = 32000
# Clip lengths in samples: not multiples of the hop, with odd frame counts.
LENGTHS = (48_123, 70_001, 96_000)
RTOL = 1e-4


def _audio(seed: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
  rng = np.random.default_rng(seed)
  clips = [rng.uniform(-0.5, 0.5, n).astype(np.float32) for n in LENGTHS]
  width = max(LENGTHS) + 777  # trailing padding even on the longest clip
  waveform = np.zeros((len(clips), width), np.float32)
  paddings = np.ones((len(clips), width), np.float32)
  for i, clip in enumerate(clips):
    waveform[i, : len(clip)] = clip
    paddings[i, : len(clip)] = 0.0
  return waveform, paddings, clips


def _hook_logits(torch, layer, store_in: dict):
  layer.register_forward_hook(lambda _m, _i, out: store_in.__setitem__('logits', out.detach()))


def _randomize_batchnorms(torch, model) -> None:
  """Non-trivial running statistics, so that folding them is tested."""
  gen = torch.Generator().manual_seed(3)
  for module in model.modules():
    if isinstance(module, torch.nn.BatchNorm2d):
      n = module.num_features
      module.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
      module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
      module.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
      module.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)


def _convert(tmp_path, name: str, state_dict: dict) -> tuple[dict, dict]:
  torch = torch_module()
  path = os.path.join(tmp_path, f'{name}.pth')
  torch.save({'model': state_dict}, path)
  out = os.path.join(tmp_path, f'{name}_converted')
  cmd = [sys.executable, 'tools/convert_checkpoint.py', name, '--input', path, '--output', out]
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu')
  result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  return pretrained_store.load_converted(out)


def _reference_per_clip(torch, model, clips, logits_store):
  frames, logits, lens = [], [], []
  with torch.no_grad():
    for clip in clips:
      x = torch.from_numpy(clip)[None]
      out = model(x, torch.tensor([[len(clip)]]))
      frames.append(out['frame_embs'][0].numpy().T)  # [frames, dim]
      logits.append(logits_store['logits'][0].numpy())
      lens.append(int(out['frame_embs_lens'][0]))
  return frames, logits, lens


def _assert_close(actual, expected, what):
  scale = np.max(np.abs(expected))
  err = np.max(np.abs(actual - expected)) / scale
  assert err < RTOL, f'{what}: max error {err:.3g} of the largest magnitude {scale:.3g}'


def _check_against_reference(model, params, settings, frontend, ref_model, logits_store, seed):
  torch = torch_module()
  waveform, paddings, clips = _audio(seed)
  log_mel, mel_pads = pann_log_mel(jnp.asarray(waveform), jnp.asarray(paddings), frontend)
  frames, frame_pads, logits = jax.jit(
    lambda p, m, q: model.apply({'params': p}, m, q, method='tag')
  )(params, log_mel, mel_pads)
  ref_frames, ref_logits, _ = _reference_per_clip(torch, ref_model, clips, logits_store)
  for i, ref in enumerate(ref_frames):
    real = int(np.sum(np.asarray(frame_pads[i]) < 0.5))
    assert real == ref.shape[0], f'clip {i}: {real} real frames, upstream {ref.shape[0]}'
    _assert_close(np.asarray(frames[i, :real]), ref, f'{settings["encoder"]} frames, clip {i}')
    _assert_close(np.asarray(logits[i]), ref_logits[i], f'{settings["encoder"]} logits, clip {i}')


def test_convnext_parity(tmp_path):
  torch = torch_module()
  torch.manual_seed(0)
  convnext = import_reference('conette.nn.encoders.convnext')
  ref = convnext.convnext_tiny(
    use_speed_perturb=False, return_frame_outputs=True, drop_path_rate=0.0
  ).eval()
  # Layer scale at its 1e-6 init would hide every block; train-like values instead.
  with torch.no_grad():
    for name, p in ref.named_parameters():
      if name.endswith('scale_layer'):
        p.copy_(torch.rand(p.shape) * 0.5 + 0.1)
  _randomize_batchnorms(torch, ref)
  logits_store = {}
  _hook_logits(torch, ref.head_audioset, logits_store)
  # The published file names layer scales `gamma` (conette renames them on load).
  state = {k.replace('scale_layer', 'gamma'): v for k, v in ref.state_dict().items()}
  params, settings = _convert(tmp_path, 'convnext', state)
  assert settings['frontend']['n_mels'] == 224
  model = ConvNeXtTagger()
  _check_against_reference(model, params, settings, CONVNEXT_FRONTEND, ref, logits_store, 1)


def test_cnn14_parity(tmp_path):
  torch = torch_module()
  torch.manual_seed(0)
  cnn14 = import_reference('conette.nn.encoders.cnn14')
  ref = cnn14.Cnn14(return_frame_outputs=True).eval()
  _randomize_batchnorms(torch, ref)
  logits_store = {}
  _hook_logits(torch, ref.fc_audioset, logits_store)
  params, settings = _convert(tmp_path, 'cnn14', ref.state_dict())
  model = Cnn14Tagger()
  _check_against_reference(model, params, settings, CNN14_FRONTEND, ref, logits_store, 2)


@pytest.mark.parametrize('frontend', [CONVNEXT_FRONTEND, CNN14_FRONTEND], ids=['convnext', 'cnn14'])
def test_frontend_matches_torchlibrosa(frontend):
  torch = torch_module()
  stft = import_reference('torchlibrosa.stft')
  spec = stft.Spectrogram(
    n_fft=frontend.n_fft,
    hop_length=frontend.hop_length,
    win_length=frontend.n_fft,
    window='hann',
    center=True,
    pad_mode='reflect',
    freeze_parameters=True,
  )
  mel = stft.LogmelFilterBank(
    sr=frontend.sample_rate,
    n_fft=frontend.n_fft,
    n_mels=frontend.n_mels,
    fmin=frontend.fmin,
    fmax=frontend.fmax,
    ref=1.0,
    amin=frontend.amin,
    top_db=None,
    freeze_parameters=True,
  )
  waveform, paddings, clips = _audio(4)
  ours, pads = pann_log_mel(jnp.asarray(waveform), jnp.asarray(paddings), frontend)
  for i, clip in enumerate(clips):
    with torch.no_grad():
      ref = mel(spec(torch.from_numpy(clip)[None]))[0, 0].numpy()  # [frames, mels]
    real = int(np.sum(np.asarray(pads[i]) < 0.5))
    assert real == ref.shape[0]
    _assert_close(np.asarray(ours[i, :real]), ref, f'log-mel clip {i}')
