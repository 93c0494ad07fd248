"""Random-weight `transformers.ClapModel` folders for the CLAP parity tests and benchmark.

`save_random_clap` writes what `laion/clap-htsat-*` folders hold (config,
`model.safetensors`, `preprocessor_config.json`), with a byte-level BPE
tokenizer trained on real captions (`train_tokenizer`); 'tiny' sizes keep
tests fast ('micro': a 2-stage audio tower, tests/test_htsat_encoder.py), 'base' are the published architecture's (`ClapConfig()`
defaults, the LAION 48 kHz / 10 s front end). Needs torch and transformers.
"""

import csv
import pathlib

import numpy as np
import torch
import transformers

TINY_RATE = 16_000
SPECIALS = ['<s>', '<pad>', '</s>', '<unk>', '<mask>']


def read_captions(path: pathlib.Path, n: int) -> list[str]:
  """`caption_1` of the first `n` clips of a Clotho caption CSV."""
  with open(path, newline='', encoding='utf-8') as f:
    return [row['caption_1'] for row in list(csv.DictReader(f))[:n]]


def render_clips(lengths: list[int], rate: int) -> list[np.ndarray]:
  """Rendered synthetic scenes (tones, noises, events) at `rate`, cut or tiled to `lengths`."""
  from aac_jax.data.synthetic import scenes

  rng = np.random.default_rng(3)
  out = []
  for n in lengths:
    wave = scenes.render_scene(scenes.sample_scene(rng), rng, rate).astype(np.float32) / 32768.0
    out.append(np.resize(wave, n))
  return out


def train_tokenizer(folder: pathlib.Path, captions: list[str], max_length: int):
  """A RoBERTa byte-level BPE tokenizer trained on `captions`, saved in `folder`."""
  from tokenizers import ByteLevelBPETokenizer

  bpe = ByteLevelBPETokenizer()
  bpe.train_from_iterator(captions, vocab_size=320, special_tokens=SPECIALS, show_progress=False)
  bpe.save_model(str(folder))
  tok = transformers.RobertaTokenizerFast(
    vocab=str(folder / 'vocab.json'),
    merges=str(folder / 'merges.txt'),
    model_max_length=max_length,
  )
  tok.save_pretrained(str(folder))
  return tok


def _configs(size: str, fusion: bool, vocab_size: int):
  fusion_fields = dict(enable_fusion=fusion, fusion_type='aff_2d' if fusion else None)
  truncation = 'fusion' if fusion else 'rand_trunc'
  if size == 'base':
    config = transformers.ClapConfig(
      text_config=dict(vocab_size=vocab_size), audio_config=fusion_fields
    )
    extractor = dict(frequency_min=50, frequency_max=14_000, truncation=truncation)
    return config, extractor
  # 'micro' (the HTS-AT encoder's tests): two stages of one block, a last grid of
  # 8 x 8 with 2 frequency rows per time piece (freq_ratio 4).
  stages = (
    dict(depths=[1, 1], num_attention_heads=[2, 2], hidden_size=32)
    if size == 'micro'
    else dict(depths=[2, 2, 2], num_attention_heads=[2, 2, 4], hidden_size=64)
  )
  config = transformers.ClapConfig(
    text_config=dict(
      vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
      intermediate_size=64, max_position_embeddings=42, layer_norm_eps=1e-5,
    ),
    audio_config=dict(
      num_mel_bins=16, spec_size=64, patch_size=4, patch_stride=[4, 4], window_size=4,
      patch_embeds_hidden_size=16, **stages, **fusion_fields,
    ),
    projection_dim=24,
  )  # fmt: skip
  extractor = dict(
    feature_size=16, sampling_rate=TINY_RATE, hop_length=160, max_length_s=1,
    fft_window_size=400, frequency_min=50, frequency_max=8000, truncation=truncation,
  )  # fmt: skip
  return config, extractor


def save_random_clap(folder: pathlib.Path, fusion: bool, vocab_size: int, size: str = 'tiny'):
  """Saves a random `ClapModel` and its feature extractor; returns both."""
  torch.manual_seed(1 + fusion)
  config, extractor_fields = _configs(size, fusion, vocab_size)
  model = transformers.ClapModel(config).eval()
  with torch.no_grad():  # Non-trivial biases, position tables, BatchNorm statistics.
    for name, p in model.named_parameters():
      if 'relative_position_bias_table' in name or name.endswith('bias'):
        p.normal_(0, 0.1)
    for name, b in model.named_buffers():
      if name.endswith('running_mean'):
        b.normal_(0, 0.5)
      elif name.endswith('running_var'):
        b.uniform_(0.5, 2.0)
    model.logit_scale_a.fill_(2.0)
    model.logit_scale_t.fill_(2.5)
  model.save_pretrained(str(folder))
  extractor = transformers.ClapFeatureExtractor(**extractor_fields)
  extractor.save_pretrained(str(folder))
  return model, extractor
