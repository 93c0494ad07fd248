"""Ablation sweeps in three commands: run, report, plot.

  python tools/sweep.py run --config=configs/synthetic_demo.py --root=workdirs/ablation \\
      --seeds=2 --parallel=2 [--set=config.dataset.data_dir=DIR ...]
  python tools/sweep.py report --root=workdirs/ablation [--baseline=POINT]
  python tools/sweep.py plot --root=workdirs/ablation [--metric=event_f1]

run     trains every point of the config's `get_sweep` times --seeds in
        `<root>/<overrides>,seed=<s>`, --parallel at a time; rerunning skips
        finished points and resumes the others. --print prints one command
        per point instead (--launcher=local for SLURM arrays, see
        launch/slurm_array.sh; --launcher=tpu_pod for launch/tpu_pod.sh).
        Exit status 1 when a point failed (its log is named).
report  writes <root>/report.md and <root>/report.csv (and prints the
        Markdown).
plot    writes <root>/plots/*.png.
`aac-sweep` is the same command as a console script.
"""

import pathlib
import sys

from absl import app, flags

from aac_jax import config_path
from aac_jax.sweeps import define, runner

COMMANDS = ('run', 'report', 'plot')

_CONFIG = flags.DEFINE_string('config', None, 'run: config file with get_sweep, [:variant].')
_ROOT = flags.DEFINE_string('root', None, 'Folder holding one workdir per point.')
_SEEDS = flags.DEFINE_integer('seeds', 1, 'run: seeds per point (0 .. seeds-1).')
_PARALLEL = flags.DEFINE_integer('parallel', 1, 'run: points trained at the same time.')
_SET = flags.DEFINE_multi_string(
  'set', [], 'run: config.FIELD=VALUE given to every point (e.g. the data folder).'
)
_PRINT = flags.DEFINE_bool('print', False, 'run: print one command per point, run nothing.')
_LAUNCHER = flags.DEFINE_enum('launcher', 'local', runner.LAUNCHERS, 'run --print: command kind.')
_BASELINE = flags.DEFINE_string('baseline', None, 'report: point to compare with (default: first).')
_BOOTSTRAP = flags.DEFINE_integer('bootstrap', 1000, 'report: bootstrap resamples.')
_METRIC = flags.DEFINE_string('metric', None, 'plot: metric (default: train.best_metric).')
flags.mark_flag_as_required('root')


def _run() -> int:
  if not _CONFIG.value:
    raise app.UsageError('run needs --config=FILE[:variant] (a config defining get_sweep)')
  try:
    sweep = runner.make_sweep(
      _CONFIG.value, _ROOT.value, _SEEDS.value, [f'--{s}' for s in _SET.value]
    )
    configs = runner.check_points(sweep)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  define.save(sweep)
  if _PRINT.value:
    runner.print_commands(sweep, _LAUNCHER.value)
    return 0
  groups = len(sweep.groups())
  print(f'[sweep] {groups} points x {_SEEDS.value} seeds in {sweep.root}', flush=True)
  runner.prepare_datasets(configs)
  outcomes = runner.run_local(sweep, _PARALLEL.value, echo=lambda s: print(s, flush=True))
  text, ok = runner.summary(outcomes)
  print(text)
  return 0 if ok else 1


def _report() -> int:
  from aac_jax.sweeps import report

  try:
    rep = report.build(define.load(_ROOT.value), _BASELINE.value, _BOOTSTRAP.value)
  except (ValueError, FileNotFoundError) as e:
    raise app.UsageError(str(e)) from e
  markdown = report.to_markdown(rep)
  (rep.sweep.root / 'report.md').write_text(markdown)
  (rep.sweep.root / 'report.csv').write_text(report.to_csv(rep))
  print(markdown)
  print(f'Wrote {rep.sweep.root / "report.md"} and {rep.sweep.root / "report.csv"}')
  return 0


def _plot() -> int:
  from aac_jax.sweeps import plots, report, results

  try:
    sweep = define.load(_ROOT.value)
  except FileNotFoundError as e:
    raise app.UsageError(str(e)) from e
  rep = report.build(sweep, num_samples=0)
  metric = _METRIC.value
  if metric is None:
    configs = [results.read_config(sweep.workdir(p)) for p in sweep.points]
    metric = next((c.train.best_metric for c in configs if c is not None), 'cider_d')
  for path in plots.plot_all(rep, metric, pathlib.Path(_ROOT.value) / 'plots'):
    print(f'Wrote {path}')
  return 0


def main(argv: list[str]) -> int:
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f'give one command: {" | ".join(COMMANDS)} (got {argv[1:]})')
  return {'run': _run, 'report': _report, 'plot': _plot}[argv[1]]()


def run() -> None:
  """Console script `aac-sweep`."""
  config_path.add_config_root_to_path(sys.argv)
  app.run(main, flags_parser=config_path.parse_flags)
