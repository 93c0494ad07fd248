"""The demo: a small conformer captioner on the built-in synthetic benchmark.

  python -m aac_jax.main --config configs/synthetic_demo.py --workdir workdirs/demo

Variants (after ':'):
  runlocal   shrinks data, model and steps to a smoke run of well under a
             minute (used by the end-to-end test).
  short      300 steps, validation every 150: the runs of the example
             ablation (`get_sweep`).
  data=NAME  synthetic builder config: default (5000/500/500), small, tiny.

The example ablation (docs/ablations.md):

  python tools/sweep.py run --config=configs/synthetic_demo.py:short \
      --root=workdirs/ablation_captions --seeds=2 --parallel=2
"""

import ml_collections

from configs import base
from configs.config_args import parse_config_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_config_arg(arg, {'runlocal': False, 'short': False, 'data': 'default'})
  config = base.get_base_config()

  config.dataset.name = 'synthetic_aac'
  config.dataset.builder_config = args['data']
  config.dataset.data_dir = 'workdirs/tensorflow_datasets'
  config.dataset.max_audio_seconds = 10.0
  config.dataset.max_caption_tokens = 24
  # Every step decodes all 5 references of each clip against one encoding:
  # 5x the caption supervision for ~1.5x the step time. Validation event F1
  # after 800 steps of batch 16: 0.41 with one random reference, 0.70 with 5.
  config.dataset.captions_per_clip = 5

  # 20 ms hop: the synthetic events last 0.1 s or more, and half the frames
  # halve the cost of the front end and the subsampling convolutions.
  config.frontend.win_length = 512
  config.frontend.hop_length = 320
  # A few epochs of 5,000 clips underfit: SpecAugment and dropout only slowed
  # learning here (validation event F1 at 400 steps: 0.25 with, 0.36 without).
  config.frontend.spec_augment = False

  # Sized to learn the synthetic benchmark on 2 CPU cores in about 9 minutes
  # (1,200 steps): 10 s -> 500 frames -> 125 encoder frames (80 ms each).
  # Subsampling convs wider than 32 channels are very slow on XLA:CPU.
  config.model.subsampling = 4
  config.model.subsampling_channels = 16
  config.model.encoder_dim = 96
  config.model.encoder_layers = 2
  config.model.encoder_heads = 4
  config.model.encoder_ff_dim = 384
  config.model.conv_kernel_size = 15
  config.model.decoder_dim = 96
  config.model.decoder_layers = 2
  config.model.decoder_heads = 4
  config.model.decoder_ff_dim = 384
  config.model.dropout = 0.0
  config.model.attention_dropout = 0.0

  config.optim.lr = 2e-3
  config.optim.warmup_steps = 100
  config.optim.label_smoothing = 0.1

  # More, smaller updates learn faster per example here, and a batch of 16
  # runs more examples per second than 32 on 2 CPU cores.
  config.train.batch_size = 16
  config.train.num_steps = 1200
  config.train.log_every = 50
  config.train.eval_every = 600
  config.train.checkpoint_every = 300

  config.eval.batch_size = 64

  if args['short']:
    config.train.num_steps = 300
    config.train.log_every = 25
    config.train.eval_every = 150
    config.train.checkpoint_every = 150
  if args['runlocal']:
    _shrink_for_local_run(config)
  return config


def get_sweep(hyper):
  """Example ablation: one vs five references per clip and step.

  Run it with the `short` variant and 2 seeds (see the module docstring);
  docs/ablations.md shows its table and plots.
  """
  return hyper.sweep('config.dataset.captions_per_clip', [1, 5])


def _shrink_for_local_run(config: ml_collections.ConfigDict) -> None:
  """A smoke-test size: tiny data, tiny model, a handful of steps."""
  config.dataset.builder_config = 'tiny'
  config.dataset.max_audio_seconds = 4.0
  config.model.encoder_dim = 32
  config.model.encoder_layers = 1
  config.model.encoder_heads = 2
  config.model.encoder_ff_dim = 64
  config.model.decoder_dim = 32
  config.model.decoder_layers = 1
  config.model.decoder_heads = 2
  config.model.decoder_ff_dim = 64
  config.dataset.captions_per_clip = 2
  config.train.batch_size = 8
  config.train.num_steps = 6
  config.train.log_every = 2
  config.train.eval_every = 6
  config.train.checkpoint_every = 3
  config.eval.batch_size = 16
  config.eval.max_examples = 16
