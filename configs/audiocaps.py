"""Cross-entropy training on AudioCaps v1 (build the dataset first, see docs/datasets.md).

  python -m aac_jax.main --config configs/audiocaps.py --workdir workdirs/audiocaps

Variants (after ':'): model=base|small, runlocal (see configs/clotho.py).
"""

import ml_collections

from configs import clotho
from configs.config_args import parse_config_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_config_arg(arg, {'model': 'base', 'runlocal': False})
  variant = f'model={args["model"]}' + (',runlocal' if args['runlocal'] else '')
  config = clotho.get_config(variant)
  config.dataset.name = 'audiocaps_aac'
  config.dataset.train_split = 'train'
  config.dataset.validation_split = 'val'
  config.dataset.test_split = 'test'
  config.dataset.max_audio_seconds = 10.0  # AudioCaps clips are 10 s.
  config.dataset.vocab_min_count = 3
  if not args['runlocal']:
    config.train.num_steps = 40000
  return config
