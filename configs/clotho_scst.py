"""SCST on Clotho v2.1, started from a cross-entropy Clotho run.

  python -m aac_jax.main --config configs/clotho.py --workdir workdirs/clotho
  python -m aac_jax.scst.main --config configs/clotho_scst.py:init_from=workdirs/clotho \\
      --workdir workdirs/clotho_scst

Variants (after ':'):
  init_from=DIR     the cross-entropy workdir (its best checkpoint by validation).
  model=base|small  must match the CE run.
  baseline=NAME     'mean_others' (default) or 'greedy'.
  reward=NAME       'cider_d' (default), 'spider' (needs SPICE: Java and the
                    CoreNLP 3.6.0 jars, see docs/evaluation.md) or 'mix'.
  runlocal          a smoke-run size.
"""

import ml_collections

from configs import clotho
from configs.config_args import parse_config_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_config_arg(
    arg,
    {
      'model': 'base',
      'runlocal': False,
      'init_from': 'workdirs/clotho',
      'baseline': 'mean_others',
      'reward': 'cider_d',
    },
  )
  config = clotho.get_config(f'model={args["model"]}' + (',runlocal' if args['runlocal'] else ''))
  config.train.init_from = args['init_from']

  config.scst.enabled = True
  config.scst.num_samples = 5  # K sampled captions per clip.
  config.scst.baseline = args['baseline']  # 'greedy' or 'mean_others'.
  config.scst.normalize_advantage = False
  config.scst.reward = args['reward']  # 'cider_d', 'spider' or 'mix' (reward_weights).
  config.scst.reward_weights.cider_d = 1.0  # Used by reward='mix'.
  config.scst.reward_weights.spice = 0.0
  config.scst.temperature = 1.0
  config.scst.top_k = 0
  config.scst.top_p = 1.0
  config.scst.loss_normalizer = 'samples'  # 'samples' or 'tokens'.
  config.scst.pipeline = True  # Sample batch t + 1 while the host scores batch t.
  config.scst.eval_initial = True  # Score the CE parameters on the test split first.
  config.scst.spice_jars = ''  # CoreNLP 3.6.0 folder ('' = $AAC_SPICE_CORENLP_DIR).

  # Repetition counter-measure against SCST's known failure (repeated clauses
  # that game CIDEr-D): no repeated trigram in samples or greedy captions.
  config.decode.no_repeat_ngram_size = 3

  config.model.dropout = 0.0  # The updated policy is the sampled one.
  config.model.attention_dropout = 0.0
  config.frontend.spec_augment = False

  config.optim.lr = 2e-5
  config.optim.warmup_steps = 200
  config.optim.end_lr_ratio = 0.1
  config.optim.label_smoothing = 0.0

  config.train.batch_size = 32  # Clips per step; x num_samples captions.
  config.train.num_steps = 10000
  config.train.log_every = 50
  config.train.eval_every = 500
  config.train.checkpoint_every = 500

  if args['runlocal']:
    config.scst.num_samples = 3
    config.train.batch_size = 8
    config.train.num_steps = 10
    config.train.eval_every = 10
    config.train.checkpoint_every = 5
  return config
