"""The demo's SCST stage: fine-tune the cross-entropy demo model on CIDEr-D.

  python -m aac_jax.main --config configs/synthetic_demo.py --workdir workdirs/demo
  python -m aac_jax.scst.main --config configs/synthetic_demo_scst.py:init_from=workdirs/demo \\
      --workdir workdirs/demo_scst

From Python: `aac_jax.scst.run_scst(get_config('init_from=workdirs/demo'), workdir)`.

Variants (after ':'):
  init_from=DIR  the cross-entropy workdir to start from (its best
                 checkpoint; default workdirs/demo).
  runlocal       the smoke-test size of `synthetic_demo.py:runlocal`.
  data=NAME      synthetic builder config (must match the CE run).
  baseline=NAME  'mean_others' (default) or 'greedy'.
  fluency=MODE   reward x (1 - 0.9 x fluency error): 'hard' (SPIDEr-FL's
                 P(error) > 0.9), 'soft' (P(error)) or 'off' (default), with
                 the detector in fluency_dir (default workdirs/demo_fluency,
                 trained by python tools/train_fluency.py --config
                 configs/synthetic_demo.py --output workdirs/demo_fluency).
  repetition=P   reward x (1 - P x the caption's share of repeated 3-grams)
                 (default 0: off).
  ce=W           loss + W x the cross-entropy of one reference per clip
                 (default 0: off).
  kl=B           reward - B x (log p(sample) - log p_CE(sample)), p_CE the
                 init_from parameters (default 0: off).

Data, front end and model are the CE config's (the parameters must fit);
optimizer, steps and everything under `scst` are this stage's own.
"""

import ml_collections

from configs import synthetic_demo
from configs.config_args import parse_config_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_config_arg(
    arg,
    {
      'runlocal': False,
      'data': 'default',
      'init_from': 'workdirs/demo',
      'baseline': 'mean_others',
      'fluency': 'off',
      'fluency_dir': 'workdirs/demo_fluency',
      'repetition': '0',
      'ce': '0',
      'kl': '0',
    },
  )
  ce_arg = f'data={args["data"]}' + (',runlocal' if args['runlocal'] else '')
  config = synthetic_demo.get_config(ce_arg)
  config.train.init_from = args['init_from']

  config.scst.enabled = True
  config.scst.num_samples = 5  # K sampled captions per clip.
  config.scst.baseline = args['baseline']  # 'greedy' or 'mean_others'.
  config.scst.normalize_advantage = False  # Standardise advantages over the global batch.
  config.scst.reward = 'cider_d'  # 'cider_d', 'spider' (needs SPICE) or 'mix'.
  config.scst.temperature = 1.0  # Sampling temperature (log p stays the untempered model's).
  config.scst.top_k = 0  # 0 = off: plain multinomial sampling.
  config.scst.top_p = 1.0  # 1.0 = off.
  config.scst.loss_normalizer = 'samples'  # Divide the summed loss by 'samples' or 'tokens'.
  config.scst.pipeline = True  # Sample batch t + 1 while the host scores batch t.
  config.scst.eval_initial = True  # Score the CE parameters on the test split first.
  config.scst.spice_jars = ''  # CoreNLP 3.6.0 folder for SPICE ('' = $AAC_SPICE_CORENLP_DIR).
  config.scst.fluency = args['fluency']  # 'off', 'hard' or 'soft' (see the module docstring).
  if args['fluency'] != 'off':
    config.scst.fluency_dir = args['fluency_dir']
  config.scst.repetition_penalty = float(args['repetition'])
  config.scst.ce_weight = float(args['ce'])
  config.scst.kl_weight = float(args['kl'])

  # Dropout would make the updated policy differ from the sampled one.
  config.model.dropout = 0.0
  config.model.attention_dropout = 0.0
  config.frontend.spec_augment = False  # Unused: SCST samples from clean features.

  config.optim.lr = 1e-4  # A twentieth of the CE peak.
  config.optim.warmup_steps = 20
  config.optim.end_lr_ratio = 0.5
  config.optim.clip_norm = 1.0
  config.optim.label_smoothing = 0.0  # Unused by SCST.

  config.train.batch_size = 16  # Clips per step (x num_samples captions).
  config.train.num_steps = 150
  config.train.log_every = 25
  config.train.eval_every = 150
  config.train.checkpoint_every = 50

  if args['runlocal']:
    config.scst.num_samples = 3
    config.train.batch_size = 8
    config.train.num_steps = 4
    config.train.log_every = 1
    config.train.eval_every = 4
    config.train.checkpoint_every = 2
  return config
