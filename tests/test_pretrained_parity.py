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
import librosa
import numpy as np
import pytest
import soundfile as sf

from aac_jax.audio.pann_frontend import pann_log_mel
from aac_jax.convert.cnn14 import FRONTEND as CNN14_FRONTEND
from aac_jax.convert.convnext import FRONTEND as CONVNEXT_FRONTEND
from aac_jax.data import audio_io
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


def _torchlibrosa_log_mel(frontend):
  """torchlibrosa's `Spectrogram` + `LogmelFilterBank` as the taggers build them: clip -> dB."""
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

  def log_mel(clip: np.ndarray) -> np.ndarray:
    with torch.no_grad():
      return mel(spec(torch.from_numpy(clip)[None]))[0, 0].numpy()  # [frames, mels]

  return log_mel


@pytest.mark.parametrize('frontend', [CONVNEXT_FRONTEND, CNN14_FRONTEND], ids=['convnext', 'cnn14'])
def test_frontend_matches_torchlibrosa(frontend):
  torchlibrosa = _torchlibrosa_log_mel(frontend)
  waveform, paddings, clips = _audio(4)
  ours, pads = pann_log_mel(jnp.asarray(waveform), jnp.asarray(paddings), frontend)
  for i, clip in enumerate(clips):
    ref = torchlibrosa(clip)
    real = int(np.sum(np.asarray(pads[i]) < 0.5))
    assert real == ref.shape[0]
    _assert_close(np.asarray(ours[i, :real]), ref, f'log-mel clip {i}')


def _recording(kind: str, seconds: float = 6.0) -> np.ndarray:
  """A synthetic stand-in for a real recording (float64, 32 kHz, peak below 1).

  'speech': a voiced source (120 Hz +- 40 Hz, 30 harmonics, 3 Hz syllables)
  with breath noise, faded out to -100 dB, 1 s of digital silence, faded in.
  'hum': a loud 100 Hz hum over traffic-like noise low-passed at 3 kHz (so
  every band above it is the int16 noise floor, about -95 dB), faded out.
  """
  rng = np.random.default_rng(7)
  n = int(seconds * SAMPLE_RATE)
  t = np.arange(n) / SAMPLE_RATE
  if kind == 'speech':
    phase = 2 * np.pi * np.cumsum(120 + 40 * np.sin(2 * np.pi * 0.7 * t)) / SAMPLE_RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 31))
    signal = 0.3 * voice * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) ** 2
    signal += 0.02 * rng.standard_normal(n)
    envelope = np.ones(n)
    a, b, c = (int(x * SAMPLE_RATE) for x in (1.5, 3.0, 4.0))
    envelope[a:b] = 10 ** (np.linspace(0, -100, b - a) / 20)
    envelope[b:c] = 0.0
    envelope[c:] = 10 ** (np.linspace(-100, -10, n - c) / 20)
    return signal * envelope
  spectrum = np.fft.rfft(rng.standard_normal(n))
  spectrum[np.fft.rfftfreq(n, 1 / SAMPLE_RATE) > 3000] = 0.0
  noise = np.fft.irfft(spectrum, n)
  signal = 0.85 * np.sin(2 * np.pi * 100 * t) + 0.1 * noise / noise.std()
  fade = int(4.5 * SAMPLE_RATE)
  signal[fade:] *= 10 ** (np.linspace(0, -100, n - fade) / 20)
  return signal


def _float64_log_mel(clip: np.ndarray, frontend) -> np.ndarray:
  """The same log-mel in float64 with numpy and librosa (reflect pad, Hann, rfft, Slaney mel)."""
  half = frontend.n_fft // 2
  padded = np.pad(clip.astype(np.float64), half, mode='reflect')
  starts = frontend.hop_length * np.arange(1 + len(clip) // frontend.hop_length)
  frames = padded[starts[:, None] + np.arange(frontend.n_fft)[None, :]]
  window = librosa.filters.get_window('hann', frontend.n_fft, fftbins=True)
  spectrum = np.fft.rfft(frames * window, axis=-1)
  bank = librosa.filters.mel(
    sr=frontend.sample_rate,
    n_fft=frontend.n_fft,
    n_mels=frontend.n_mels,
    fmin=frontend.fmin,
    fmax=frontend.fmax,
    dtype=np.float64,
  )
  power = spectrum.real**2 + spectrum.imag**2
  return 10 * np.log10(np.maximum(power @ bank.T, frontend.amin))


@pytest.mark.parametrize('frontend', [CONVNEXT_FRONTEND, CNN14_FRONTEND], ids=['convnext', 'cnn14'])
def test_frontend_accurate_in_quiet_bins_of_recordings(tmp_path, frontend):
  """Quiet bins of int16 recordings with silence and fades, against float64 and torchlibrosa.

  No real recordings ship with the tests: `_recording` synthesises two
  (speech-like with a fade to -100 dB and digital silence; a loud hum over
  band-limited noise), written as int16 WAV with soundfile and read back with
  `audio_io.read_audio` as a user's file is. Error in dB-relative terms:
  `max |ours - ref| / max |ref|` over every real frame and mel bin (the
  largest |dB| is the -100 dB floor here, so 1e-4 is 0.01 dB). Against the
  float64 computation that must be below 1e-4 (float32 spectra were 0.26 dB
  off in the hum's quiet bands). torchlibrosa is itself a float32 DFT (up to
  0.2 dB off float64 in such bins), so against it each bin may differ by
  torchlibrosa's own distance from float64 plus that 1e-4.
  """
  clips = []
  for kind in ('speech', 'hum'):
    path = tmp_path / f'{kind}.wav'
    sf.write(path, _recording(kind), SAMPLE_RATE, subtype='PCM_16')
    samples, rate, _ = audio_io.read_audio(path)
    assert rate == SAMPLE_RATE
    clips.append(samples[:, 0])
  width = max(len(c) for c in clips) + 500
  waveform = np.zeros((len(clips), width), np.float32)
  paddings = np.ones((len(clips), width), np.float32)
  for i, clip in enumerate(clips):
    waveform[i, : len(clip)], paddings[i, : len(clip)] = clip, 0.0
  ours, _ = pann_log_mel(jnp.asarray(waveform), jnp.asarray(paddings), frontend)
  torchlibrosa = _torchlibrosa_log_mel(frontend)
  for i, clip in enumerate(clips):
    exact = _float64_log_mel(clip, frontend)
    mine = np.asarray(ours[i, : len(exact)], np.float64)
    theirs = torchlibrosa(clip).astype(np.float64)
    quiet = (exact < -85) & (exact > -99.9)  # Above the amin floor (-100 dB).
    assert quiet.sum() > 100 and (exact > 10).any(), 'the clip must have quiet and loud bins'
    scale = np.abs(exact).max()
    assert np.abs(mine - exact).max() / scale < 1e-4
    assert np.all(np.abs(mine - theirs) <= np.abs(theirs - exact) + 1e-4 * scale)
