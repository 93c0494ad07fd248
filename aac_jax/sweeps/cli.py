"""Ablation sweeps in three commands: run, report, plot.

  python tools/sweep.py run --config=configs/synthetic_demo.py --root=workdirs/ablation \\
      --seeds=2 --parallel=2 [--set=config.dataset.data_dir=DIR ...]
  python tools/sweep.py report --root=workdirs/ablation [--baseline=POINT] [--metrics=a,b]
  python tools/sweep.py plot --root=workdirs/ablation [--metric=event_f1]

run     trains every point of the config's `get_sweep` times --seeds in
        `<root>/<overrides>,seed=<s>`, --parallel at a time; rerunning skips
        finished points and resumes the others. --print prints one command
        per point instead (--launcher=local for SLURM arrays, see
        launch/slurm_array.sh; --launcher=tpu_pod for launch/tpu_pod.sh).
        Exit status 1 when a point failed (its log is named). Ctrl-C
        (SIGINT to the runner and its trainers) or SIGTERM to the runner:
        every running point saves at its next step and stops, the runner
        prints "rerun the same command to resume" and exits 130.
report  writes <root>/report.md and <root>/report.csv (and prints the
        Markdown).
plot    writes <root>/plots/*.png.
`aac-sweep` is the same command as a console script.
"""

import sys

from absl import app, flags

from aac_jax import config_path
from aac_jax.sweeps import define, runner

COMMANDS = ('run', 'report', 'plot')
INTERRUPTED = 130  # Exit status of a run stopped by SIGINT or SIGTERM (128 + SIGINT).
RERUN = 'rerun the same command to resume (finished points are skipped)'

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
_METRICS = flags.DEFINE_list(
  'metrics', None, 'report: metrics to show, e.g. cider_d,fense (default: all the runs logged).'
)
_METRIC = flags.DEFINE_string('metric', None, 'plot: metric (default: train.best_metric).')
flags.mark_flag_as_required('root')


def _run() -> int:
  if not _CONFIG.value:
    raise app.UsageError('run needs --config=FILE[:variant] (a config defining get_sweep)')
  try:
    sweep = runner.make_sweep(
      _CONFIG.value, _ROOT.value, _SEEDS.value, [f'--{s}' for s in _SET.value]
    )
    if not _PRINT.value and '://' in str(sweep.root):
      raise ValueError(
        f'--root={sweep.root}: runs without --print train on this machine and need a local '
        '--root; print the commands (--print --launcher=tpu_pod) to train into a bucket'
      )
    define.check_recorded(sweep)  # First: a rerun with other flags stops here.
    configs = runner.check_points(sweep)
    define.save(sweep)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  if _PRINT.value:
    runner.print_commands(sweep, _LAUNCHER.value)
    return 0
  groups = len(sweep.groups())
  print(f'[sweep] {groups} points x {_SEEDS.value} seeds in {sweep.root}', flush=True)
  try:
    runner.prepare_datasets(configs)
    outcomes = runner.run_local(sweep, _PARALLEL.value, echo=lambda s: print(s, flush=True))
  except runner.Interrupted as e:
    print(runner.summary(e.outcomes)[0])
    print(f'[sweep] interrupted ({e.signal_name}): the running points saved and stopped; {RERUN}')
    return INTERRUPTED
  text, ok = runner.summary(outcomes)
  print(text)
  return 0 if ok else 1


def _report() -> int:
  from aac_jax.sweeps import report

  try:
    rep = report.build(define.load(_ROOT.value), _BASELINE.value, _BOOTSTRAP.value, _METRICS.value)
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
  for path in plots.plot_all(rep, metric, sweep.root / 'plots'):
    print(f'Wrote {path}')
  return 0


def main(argv: list[str]) -> int:
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f'give one command: {" | ".join(COMMANDS)} (got {argv[1:]})')
  try:
    return {'run': _run, 'report': _report, 'plot': _plot}[argv[1]]()
  except KeyboardInterrupt:  # Before any run started (run_local handles its own).
    print('[sweep] interrupted' + (f'; {RERUN}' if argv[1] == 'run' else ''))
    return INTERRUPTED


def run() -> None:
  """Console script `aac-sweep`."""
  config_path.add_config_root_to_path(sys.argv)
  app.run(main, flags_parser=config_path.parse_flags)
