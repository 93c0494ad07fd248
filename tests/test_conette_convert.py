"""CoNeTTE end to end: a random published folder -> `convert_checkpoint.py conette` -> run folder.

The folder is built from conette 0.3.2's own modules (ConvNeXt-Tiny with
CoNeTTE's stem, the decoder) in the published format. The converted run must
caption random audio with the same tokens as conette's pipeline (encoder,
projection, `generate` with beam 3 and its repetition ban) for every task
token; `aac-caption`, export, fine-tuning and SCST must run from it.
"""

import functools
import json
import os
import subprocess
import sys

import conette_reference as cref
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf
import torch_reference
import toy_dataset

from aac_jax import caption_cli, decoding, export, inference, scst
from aac_jax.audio import frontend
from aac_jax.data import tokenizer as tokenizer_lib
from aac_jax.train import trainer
from configs import conette as conette_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_RATE = 32000
LENGTHS = (48_123, 70_001, 56_000)  # Samples: one zero-padded batch, each clip alone upstream.
FAST = {'xla_backend_optimization_level': 0}


def _reference_encoder(torch):
  """conette's ConvNeXt-Tiny as `CoNeTTEPreprocessor` builds it, with random layer scales."""
  convnext = torch_reference.import_reference('conette.nn.encoders.convnext')
  torch.manual_seed(1)
  encoder = convnext.convnext_tiny(
    pretrained=False,
    strict=False,
    drop_path_rate=0.0,
    after_stem_dim=[252, 56],
    use_speed_perturb=False,
    waveform_input=True,
    use_specaug=False,
    return_clip_outputs=True,
    return_frame_outputs=True,
  )
  with torch.no_grad():  # Blocks that matter (the init's 1e-6 layer scale makes them identities).
    for name, param in encoder.named_parameters():
      if name.endswith('scale_layer') or name.endswith('gamma'):
        param.copy_(0.3 * torch.randn_like(param))
  return encoder.eval()


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
  """The reference pieces and the converted run folder."""
  root = tmp_path_factory.mktemp('conette_e2e')
  jax.config.update('jax_compilation_cache_dir', str(root / 'jax_cache'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  torch = torch_reference.torch_module()
  encoder = _reference_encoder(torch)
  ref = cref.build_reference(frame_dim=768, eos_bias=3.0)
  folder = cref.write_published_folder(ref, root / 'hf', encoder_state=encoder.state_dict())
  run_dir = root / 'run'
  cmd = [sys.executable, 'tools/convert_checkpoint.py', 'conette']
  cmd += ['--input', str(folder), '--output', str(run_dir)]
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu')
  result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-3000:]
  return root, ref, encoder, run_dir


def _clips(seed: int) -> list[np.ndarray]:
  rng = np.random.default_rng(seed)
  return [rng.uniform(-0.5, 0.5, n).astype(np.float32) for n in LENGTHS]


def _reference_captions(torch, ref, encoder, clip, task_token) -> list[int]:
  """conette on one clip alone: encoder frames -> projection -> generate; tokens to EOS."""
  with torch.no_grad():
    wave = torch.from_numpy(clip)[None]
    out = encoder(wave, torch.tensor([[len(clip)]]))
  frames = out['frame_embs'].transpose(1, 2).numpy()  # [1, n, 768]
  pad = np.zeros(frames.shape[:2], bool)
  best, _ = cref.reference_generate(ref, frames, pad, task_token, project=True)
  row = best[0].tolist()
  return row[: row.index(2) + 1] if 2 in row else row


def _ours(row: np.ndarray) -> list[int]:
  """Our row cut like conette's: words and EOS (no EOS where the search hit its limit)."""
  words = row[: list(row).index(2)].tolist()
  return words + [2] if len(words) < 20 else words


def test_run_folder_holds_conette_settings(converted):
  _, ref, _, run_dir = converted
  config = json.loads((run_dir / 'config.json').read_text())
  assert config['model']['decoder_style'] == 'conette'
  assert config['model']['convnext_stem'] == 'conette'
  assert config['model']['task_token_id'] == ref.tokens.index('<bos_clotho>')
  assert config['decode']['method'] == 'conette_beam'
  assert (config['decode']['beam_size'], config['decode']['min_len']) == (3, 3)
  assert config['decode']['max_len'] == 21
  assert config['decode']['repeatable_tokens'] == list(cref.STOP_WORDS)
  assert config['eval']['decode'] == config['decode']  # Scored as CoNeTTE scores (issue 31).
  assert config['frontend']['kind'] == 'pann' and config['dataset']['sample_rate'] == SAMPLE_RATE
  vocab = (run_dir / 'vocab.txt').read_text().splitlines()
  assert vocab == ref.tokens


def test_same_captions_as_conette_for_each_task(converted):
  _, ref, encoder, run_dir = converted
  torch = torch_reference.torch_module()
  loaded = inference.load_model(run_dir)
  clips = _clips(seed=5)
  width = max(LENGTHS) + 999
  wave = np.zeros((len(clips), width), np.float32)
  pads = np.ones((len(clips), width), np.float32)
  for i, clip in enumerate(clips):
    wave[i, : len(clip)], pads[i, : len(clip)] = clip, 0.0

  def encode(params, wave, pads):
    feats, feat_pads = frontend.log_mel(wave, pads, loaded.config.frontend, SAMPLE_RATE)
    return loaded.model.apply({'params': params}, feats, feat_pads, method='encode')

  encoded, enc_pads = jax.jit(encode, compiler_options=FAST)(loaded.params, wave, pads)
  seen = set()
  for task in cref.TASKS:
    tasked = inference.with_task(loaded, task)
    settings, mask = inference.make_settings(tasked)
    run = functools.partial(
      decoding.decode_encoded, tasked.model, settings=settings, repeat_ban_mask=jnp.asarray(mask)
    )
    out = jax.jit(run, compiler_options=FAST)(loaded.params, encoded, enc_pads)
    task_token = ref.tokens.index(f'<bos_{task}>')
    expected = [_reference_captions(torch, ref, encoder, c, task_token) for c in clips]
    ours = [_ours(row) for row in np.asarray(out.tokens)]
    assert ours == expected, task
    seen.update(tuple(row) for row in ours)
  assert len(seen) > 3  # Tasks and clips gave different captions.


@pytest.fixture(scope='module')
def toy_data(converted):
  root = converted[0]
  name = toy_dataset.build_toy_dataset(
    str(root / 'tfds'),
    splits={'train': 16, 'validation': 8, 'test': 8},
    min_seconds=1.5,
    max_seconds=2.0,
    sample_rate=SAMPLE_RATE,
  )
  return root / 'tfds', name


def _finetune_config(run_dir, toy, stage: str = ''):
  config = conette_config.get_config(f'init_from={run_dir},runlocal{stage}')
  ds = config.dataset
  ds.name, ds.builder_config, ds.data_dir = toy[1], '', str(toy[0])
  ds.train_split, ds.validation_split, ds.test_split = 'train', 'validation', 'test'
  # Greedy validation: the beam is checked against CoNeTTE above; compiling it
  # again for each stage's validation only costs time here.
  config.eval.decode.method = 'greedy'
  return config


def test_caption_cli_export_finetune_and_scst(converted, toy_data, tmp_path):
  root, ref, encoder, run_dir = converted
  clip = tmp_path / 'clip.wav'
  samples = np.clip(np.round(_clips(seed=7)[0] * 32768), -32768, 32767).astype(np.int16)
  sf.write(clip, samples, SAMPLE_RATE, subtype='PCM_16')
  out = tmp_path / 'captions.json'
  argv = [str(clip), '--workdir', str(run_dir), '--task', 'audiocaps', '--output', str(out)]
  argv += ['--window', '2']  # Pad to 2 s, not the run's 30-s windows (test speed).
  assert caption_cli.main(argv) == 0
  (segment,) = json.loads(out.read_text())['files'][0]['segments']
  task = ref.tokens.index('<bos_audiocaps>')
  torch = torch_reference.torch_module()
  expected = _reference_captions(torch, ref, encoder, samples / np.float32(32768), task)
  assert segment['caption'] == tokenizer_lib.Tokenizer(ref.tokens).decode(expected)
  assert caption_cli.main([str(clip), '--workdir', str(run_dir), '--task', 'nope']) == 2

  exported = tmp_path / 'export'
  argv = ['--workdir', str(run_dir), '--output', str(exported), '--max_seconds', '2']
  assert export.main(argv) == 0  # Also checks the export's tokens against the live model.
  assert (exported / export.EXPORT_FILENAME).exists()

  finetuned = root / 'finetuned'
  result = trainer.train_and_evaluate(_finetune_config(run_dir, toy_data), str(finetuned))
  assert result.reason == 'finished'
  tuned = inference.load_model(finetuned)
  original = inference.load_model(run_dir)
  assert tuned.tokenizer.tokens == ref.tokens
  assert tuned.model.config.task_token_id == original.model.config.task_token_id
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), tuned.params, original.params)
  assert any(jax.tree.leaves(changed))

  scst.run_scst(_finetune_config(finetuned, toy_data, ',scst'), str(root / 'scst'))
  assert list((root / 'scst' / 'checkpoints').iterdir())
