"""Trains and evaluates a captioner.

  python -m aac_jax.main --config=configs/synthetic_demo.py --workdir=workdirs/demo
  python -m aac_jax.main --config=configs/clotho.py:model=small --workdir=DIR \\
      --config.optim.lr=3e-4 --config.train.batch_size=64

Rerunning with the same --workdir resumes from its latest checkpoint. On
SIGTERM or Ctrl-C (SIGINT) the run saves at the next step and exits 0 (a
second Ctrl-C stops at once, without that save). `aac-train` is the same
command as a console script. The console shows this package's log lines and
every warning; `train.log` in the workdir keeps the libraries' lines too
(`--verbosity=0` shows them on the console as well).

Several processes (one per host): `--multihost` where JAX discovers them
(TPU VMs, SLURM), else `--coordinator_address=HOST:PORT --num_processes=N
--process_id=I` on each (see `aac_jax.launch_flags`, launch/).

Exit status: 0 finished, stopped as planned or preempted (saved); 1 stopped
on an error logged in one line (NaN loss, an unwritable run file, no
readable checkpoint); 2 a bad flag, config field, variant or value, or bad
launch values (one line each, before any work).
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from aac_jax import config_path, launch_flags
from aac_jax.train import logs, trainer

config_flags.DEFINE_config_file('config', None, 'Experiment config file (configs/*.py[:variant]).')
flags.DEFINE_string('workdir', None, 'Folder for checkpoints, logs, vocabulary and predictions.')
flags.mark_flags_as_required(['config', 'workdir'])
FLAGS = flags.FLAGS


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logs.quiet_console()
  if status := launch_flags.initialize_from_flags():
    return status
  return trainer.run(FLAGS.config, FLAGS.workdir)


def run() -> None:
  """Console script `aac-train` (works from any folder: see `aac_jax.config_path`)."""
  config_path.add_config_root_to_path(sys.argv)
  app.run(main, flags_parser=config_path.parse_flags)


if __name__ == '__main__':
  run()
