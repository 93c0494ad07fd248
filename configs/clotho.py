"""Cross-entropy training on Clotho v2.1 (build the dataset first, see docs/datasets.md).

  python -m aac_jax.main --config configs/clotho.py --workdir workdirs/clotho

Variants (after ':'):
  model=base|small|large  base: the reference size (docs/training.md); small: a quicker
    ablation; large: about 1 B parameters (memory planning, tools/bench_memory.py).
  runlocal          a smoke-run size for a laptop.
"""

import ml_collections

from configs import base
from configs.config_args import parse_config_arg

MODEL_SIZES = {
  'base': dict(encoder_dim=256, encoder_layers=6, encoder_ff_dim=1024, decoder_layers=3),
  'small': dict(encoder_dim=144, encoder_layers=4, encoder_ff_dim=576, decoder_layers=2),
  # About 1.0 B parameters: for memory planning (tools/bench_memory.py compiles, never runs it).
  'large': dict(
    encoder_dim=1536, encoder_layers=12, encoder_ff_dim=6144, decoder_layers=10, heads=16
  ),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_config_arg(arg, {'model': 'base', 'runlocal': False})
  if args['model'] not in MODEL_SIZES:
    raise ValueError(f'model={args["model"]!r}: choose one of {sorted(MODEL_SIZES)}')
  config = base.get_base_config()
  config.dataset.name = 'clotho_aac'
  config.dataset.build_if_missing = False  # Built from the user's files: tools/build_dataset.py.
  config.dataset.train_split = 'development'
  config.dataset.validation_split = 'validation'
  config.dataset.test_split = 'evaluation'
  config.dataset.max_audio_seconds = 30.0  # Clotho clips are 15-30 s.
  config.dataset.max_caption_tokens = 24  # Clotho captions have 8-20 words.
  config.dataset.vocab_min_count = 2
  config.dataset.num_workers = 4
  size = MODEL_SIZES[args['model']]
  config.model.encoder_dim = size['encoder_dim']
  config.model.decoder_dim = size['encoder_dim']
  config.model.encoder_layers = size['encoder_layers']
  config.model.encoder_ff_dim = size['encoder_ff_dim']
  config.model.decoder_ff_dim = size['encoder_ff_dim']
  config.model.decoder_layers = size['decoder_layers']
  config.model.encoder_heads = config.model.decoder_heads = size.get('heads', 4)
  config.train.batch_size = 64
  config.train.num_steps = 15000
  config.train.eval_every = 1000
  config.eval.meteor = True
  if args['runlocal']:
    config.dataset.num_workers = 0
    config.model.encoder_layers = 1
    config.model.decoder_layers = 1
    config.train.batch_size = 8
    config.train.num_steps = 20
    config.train.eval_every = 20
    config.eval.max_examples = 32
  return config


def get_sweep(hyper):
  """Ablation: model size x learning rate (run with tools/sweep.py, see docs/ablations.md)."""
  return hyper.product(
    [
      hyper.sweep('config.optim.lr', [2e-4, 5e-4, 1e-3]),
      hyper.sweep('config.model.encoder_layers', [4, 6, 8]),
    ]
  )
