"""Runs (or resumes) the SCST stage of a cross-entropy run.

  python -m aac_jax.scst.main --config configs/synthetic_demo_scst.py:init_from=workdirs/demo \\
      --workdir workdirs/demo_scst

Rerunning with the same --workdir resumes from its latest checkpoint; on
SIGTERM the run saves at the next step and exits 0.
"""

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from aac_jax import config_path
from aac_jax.scst import trainer
from aac_jax.train.trainer import NonFiniteLossError

config_flags.DEFINE_config_file('config', None, 'SCST config file (configs/*_scst.py[:variant]).')
flags.DEFINE_string('workdir', None, 'Folder of this SCST stage.')
flags.DEFINE_bool('multihost', False, 'Call jax.distributed.initialize() first (TPU pod slices).')
flags.mark_flags_as_required(['config', 'workdir'])
FLAGS = flags.FLAGS


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if FLAGS.multihost:
    jax.distributed.initialize()
  try:
    result = trainer.run_scst(FLAGS.config, FLAGS.workdir)
  except NonFiniteLossError as e:
    logging.error('SCST stopped: %s', e)
    return 1
  for line in trainer.format_comparison(result):
    print(line)
  return 0


def run() -> None:
  """Console script `aac-scst`."""
  config_path.add_config_root_to_path(sys.argv)
  app.run(main)


if __name__ == '__main__':
  run()
