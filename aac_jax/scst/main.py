"""Runs (or resumes) the SCST stage of a cross-entropy run.

  python -m aac_jax.scst.main --config configs/synthetic_demo_scst.py:init_from=workdirs/demo \\
      --workdir workdirs/demo_scst

Rerunning with the same --workdir resumes from its latest checkpoint; on
SIGTERM or Ctrl-C (SIGINT) the run saves at the next step and exits 0. Exit statuses and
logging as for `python -m aac_jax.main`.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from aac_jax import config_path, launch_flags
from aac_jax.scst import trainer
from aac_jax.train import logs
from aac_jax.train import trainer as train_trainer

config_flags.DEFINE_config_file('config', None, 'SCST config file (configs/*_scst.py[:variant]).')
flags.DEFINE_string('workdir', None, 'Folder of this SCST stage.')
flags.mark_flags_as_required(['config', 'workdir'])
FLAGS = flags.FLAGS


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logs.quiet_console()
  if status := launch_flags.initialize_from_flags():
    return status
  status, result = train_trainer.exit_status(lambda: trainer.run_scst(FLAGS.config, FLAGS.workdir))
  if status:
    return status
  for line in trainer.format_comparison(result):
    print(line)
  return 0


def run() -> None:
  """Console script `aac-scst`."""
  config_path.add_config_root_to_path(sys.argv)
  app.run(main, flags_parser=config_path.parse_flags)


if __name__ == '__main__':
  run()
