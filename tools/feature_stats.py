"""Measures the log-mel normalisation numbers of a config's training split.

  python tools/feature_stats.py --config configs/clotho.py [--num_clips 1000]

A mixture config (`dataset.mixture`) is measured over its entries as a run
measures it (`feature_stats.measure_mixture`) unless `--split` names one.

Runs with `frontend.feature_stats = 'measure'` (the default) do this
themselves when they start; this prints the numbers for a config that fixes
them instead (`--config.frontend.feature_stats=fixed`), e.g. to share them
across the points of a sweep. See `aac_jax/data/feature_stats.py`.
"""

import pathlib
import sys

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from aac_jax import config_path  # noqa: E402
from aac_jax.data import feature_stats, sources  # noqa: E402

config_flags.DEFINE_config_file('config', None, 'Training config file.', lock_config=False)
_NUM_CLIPS = flags.DEFINE_integer(
  'num_clips', feature_stats.DEFAULT_NUM_CLIPS, 'Training clips read (spread over the split).'
)
_SPLIT = flags.DEFINE_string(
  'split', '', "Split to measure ('' = what training reads: the train split, or the mixture)."
)
flags.mark_flags_as_required(['config'])


def main(argv):
  del argv
  config = flags.FLAGS.config
  dataset = config.dataset
  if dataset.mixture and not _SPLIT.value:
    stats = feature_stats.measure_mixture(dataset, config.frontend, _NUM_CLIPS.value)
    measured = f'the mixture {stats["clips_per_entry"]}'
  else:
    split = _SPLIT.value or dataset.train_split
    source = sources.open_source(dataset, split)
    stats = feature_stats.measure(source, dataset, config.frontend, _NUM_CLIPS.value)
    measured = f'{sources.dataset_name(dataset)}/{split}'
  print(
    f'{stats["num_clips"]} clips, {stats["num_frames"]} frames of {measured}: '
    f'mean {stats["mean"]:.4f}, std {stats["std"]:.4f}'
  )
  print(
    '--config.frontend.feature_stats=fixed '
    f'--config.frontend.feature_mean={stats["mean"]:.4f} '
    f'--config.frontend.feature_std={stats["std"]:.4f}'
  )


if __name__ == '__main__':
  app.run(main, flags_parser=config_path.parse_flags)
