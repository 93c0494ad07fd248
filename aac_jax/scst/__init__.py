"""aac_jax.scst: self-critical sequence training after cross-entropy.

`run_scst(config, workdir)` runs the stage (see `aac_jax.scst.trainer`);
`configs/synthetic_demo_scst.py` and `configs/clotho_scst.py` configure it.
The pieces: `steps` (device: sampling, policy-gradient update), `rewards`
(host: CIDEr-D / SPICE reward, baselines), `data` (train clips with their
index, all references per clip).
"""

from aac_jax.scst.data import make_scst_train_iterator, read_train_references
from aac_jax.scst.rewards import CaptionReward, baseline_rewards, reward_weights, score_rollout
from aac_jax.scst.steps import (
  compute_advantages,
  make_sample_step,
  make_update_step,
  sample_step,
  scst_update_step,
)
from aac_jax.scst.trainer import ScstResult, format_comparison, run_scst

__all__ = [
  'CaptionReward',
  'ScstResult',
  'baseline_rewards',
  'compute_advantages',
  'format_comparison',
  'make_sample_step',
  'make_scst_train_iterator',
  'make_update_step',
  'read_train_references',
  'reward_weights',
  'run_scst',
  'sample_step',
  'score_rollout',
  'scst_update_step',
]
