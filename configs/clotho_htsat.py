"""Clotho v2.1 with CLAP's HTS-AT audio tower as the encoder (as WavCaps' HTSAT-BART captioner).

  python tools/convert_checkpoint.py clap --input clap-htsat-unfused --output pretrained/clap
  aac-build-dataset clotho --source_dir ~/data/clotho --sample_rate 48000
  python -m aac_jax.main --config configs/clotho_htsat.py:encoder_init=pretrained/clap \\
      --workdir workdirs/clotho_htsat

Sources of the values: "CLAP" = `laion/clap-htsat-unfused`'s `config.json`
(`audio_config`, transformers' `ClapAudioConfig` defaults) and
`preprocessor_config.json` (48 kHz, 10 s, hop 480, 64 mels, 50-14,000 Hz),
which the run reads from `encoder_init` and checks against `model.htsat`;
"baseline" = the DCASE 2024 task 6 baseline's decoder and optimisation, as
configs/clotho_convnext.py sets them (its docstring names the files). The
encoder's frames are the tower's last stage unfolded to time and averaged
over frequency: 32 frames of 768 for "CLAP" (`aac_jax/models/htsat_encoder.py`).
CLAP sees 10 s: longer Clotho clips are cut at their start by its front end
(`frontend.clap_max_length_s`), shorter ones repeated.

Variants (after ':'):
  encoder_init=DIR  a CLAP folder (tools/convert_checkpoint.py clap; '' = random tower).
  freeze=all|none|N the tower's frozen Swin stages (default all: the encoder is CLAP's).
  embeddings=auto   train from stored frames (tools/extract_embeddings.py; needs freeze=all).
  runlocal          a smoke run: 16 kHz data, a tiny tower (the tests' random CLAP
                    folder, tests/clap_reference.py 'micro'), a tiny decoder, a few steps.
"""

import ml_collections

from configs import base, clotho_convnext
from configs.config_args import parse_config_arg

# tests/clap_reference.py's 'micro' audio_config (what :runlocal's encoder_init holds).
TINY_HTSAT = dict(
  num_mel_bins=16,
  spec_size=64,
  window_size=4,
  depths=(1, 1),
  num_heads=(2, 2),
  embed_dim=16,
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_config_arg(
    arg, {'encoder_init': '', 'freeze': 'all', 'embeddings': '', 'runlocal': False}
  )
  config = base.get_base_config()
  ds = config.dataset
  ds.name = 'clotho_aac'
  ds.builder_config = '48000hz'  # Built with --sample_rate 48000 ("CLAP": sampling_rate).
  ds.sample_rate = 48000  # "CLAP": sampling_rate 48000.
  ds.build_if_missing = False  # Built from the user's files (see README).
  ds.train_split, ds.validation_split, ds.test_split = 'development', 'validation', 'evaluation'
  ds.max_audio_seconds = 10.0  # "CLAP": max_length_s 10; more would be cut by its front end.
  ds.max_caption_tokens = 24
  ds.captions_per_clip = 1  # One caption per clip and step (mixup, stored embeddings).
  ds.vocab_min_count = 1
  ds.num_workers = 4
  ds.embeddings = args['embeddings']
  config.frontend.spec_augment = False  # The tower is frozen by default (fixed features).
  clotho_convnext.set_baseline_model(config, args['encoder_init'], str(args['freeze']))
  m = config.model
  m.encoder = 'htsat'  # "CLAP": HTS-AT tiny, 768-wide frames, projected to 256 ("baseline").
  m.convnext_stem = 'audioset'  # Unused by htsat.
  clotho_convnext.set_baseline_training(config, clotho_convnext.CLOTHO_DEV_CLIPS)
  config.eval.meteor = True
  if args['runlocal']:
    shrink_for_smoke_run(config)
  return config


def shrink_for_smoke_run(config: ml_collections.ConfigDict) -> None:
  """A few steps of a tiny tower and decoder on 1 s clips at 16 kHz."""
  clotho_convnext.shrink_for_smoke_run(config)
  ds = config.dataset
  ds.sample_rate, ds.builder_config = 16000, ''
  ds.max_audio_seconds = 1.0  # The tiny folder's max_length_s.
  config.model.htsat.update(TINY_HTSAT)
  config.decode.method = 'greedy'  # One cheap compilation for validation and test.
  base.score_with_decode(config)
