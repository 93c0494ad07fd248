"""The DCASE 2024 baseline recipe (frozen ConvNeXt-Tiny + decoder) on AudioCaps v1.

  aac-build-dataset audiocaps --source_dir ~/data/audiocaps --sample_rate 32000
  python -m aac_jax.main --config configs/audiocaps_convnext.py:encoder_init=pretrained/convnext_bl \\
      --workdir workdirs/audiocaps_convnext

The baseline was published for Clotho only; this applies its model,
decoding and optimizer (see configs/clotho_convnext.py for every value's
source, the encoder file to convert and the known differences) to
AudioCaps, whose own numbers are below.

Variants (after ':'): encoder_init=DIR, freeze=all|none|N, embeddings=auto, runlocal.
"""

import ml_collections

from configs import base, clotho_convnext
from configs.config_args import parse_config_arg

AUDIOCAPS_TRAIN_CLIPS = 49838  # AudioCaps v1 train.csv rows (one caption per clip).


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_config_arg(
    arg, {'encoder_init': '', 'freeze': 'all', 'embeddings': '', 'runlocal': False}
  )
  config = base.get_base_config()
  ds = config.dataset
  ds.name = 'audiocaps_aac'
  ds.builder_config = '32000hz'  # Built with --sample_rate 32000 (the ConvNeXt's rate).
  ds.sample_rate = 32000
  ds.build_if_missing = False
  ds.train_split, ds.validation_split, ds.test_split = 'train', 'val', 'test'
  ds.max_audio_seconds = 10.0  # AudioCaps clips are 10 s.
  ds.max_caption_tokens = 24
  ds.captions_per_clip = 1  # AudioCaps train has one caption per clip.
  ds.vocab_min_count = 1
  ds.num_workers = 4
  ds.embeddings = args['embeddings']  # 'auto': train from tools/extract_embeddings.py's frames.
  config.frontend.spec_augment = False
  clotho_convnext.set_baseline_model(config, args['encoder_init'], str(args['freeze']))
  clotho_convnext.set_baseline_training(config, AUDIOCAPS_TRAIN_CLIPS)
  config.eval.meteor = True
  if args['runlocal']:
    clotho_convnext.shrink_for_smoke_run(config)
  return config
