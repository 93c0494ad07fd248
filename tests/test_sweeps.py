"""Ablation sweeps end to end: run, kill, resume, report, plot.

One sweep of 2 points x 2 seeds of the runlocal demo config (6 steps, 2 s
clips) runs once per module with `tools/sweep.py run --parallel=2`. Its two
points differ only in `train.num_sample_captions` (text logged to
TensorBoard), so they train identically: the paired bootstrap interval
between them must contain 0. One run is killed (SIGKILL) once it has saved
step 3; the sweep reports it with its log while the others finish, and the
rerun resumes it from its checkpoint and skips the finished ones.
"""

import json
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import time

import matplotlib.pyplot as plt
import numpy as np
import pytest

from aac_jax.data import pipeline
from aac_jax.data import tokenizer as tokenizer_lib
from aac_jax.sweeps import clip_scores, define, events, plots, report, results, runner

REPO = pathlib.Path(__file__).resolve().parents[1]
SWEEP_CONFIG = """
from configs import synthetic_demo


def get_config(arg=None):
  return synthetic_demo.get_config(arg)


def get_sweep(hyper):
  return hyper.sweep('config.train.num_sample_captions', [1, 2])
"""
KILLED = 'num_sample_captions=1,seed=0'
GROUPS = ('num_sample_captions=1', 'num_sample_captions=2')


def _env(root: pathlib.Path) -> dict[str, str]:
  """One CPU device, -O0 and a shared compilation cache: cheap compiles."""
  env = dict(os.environ)
  env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0'
  env['JAX_PLATFORMS'] = 'cpu'
  env['JAX_COMPILATION_CACHE_DIR'] = str(root / 'jax_cache')
  env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  return env


def _run_command(base: pathlib.Path) -> list[str]:
  return [
    sys.executable,
    'tools/sweep.py',
    'run',
    f'--config={base / "sweep_config.py"}:runlocal',
    f'--root={base / "sweep"}',
    '--seeds=2',
    '--parallel=2',
    f'--set=config.dataset.data_dir={base / "tfds"}',
    '--set=config.dataset.max_audio_seconds=2.0',
  ]


def _kill_when_saved(workdir: pathlib.Path, process: subprocess.Popen, step: int = 3) -> None:
  """SIGKILLs the training process of `workdir` once it saved `step`."""
  deadline = time.time() + 400
  while time.time() < deadline and process.poll() is None:
    pid = results.read_status(workdir).get('pid')
    if pid and step in results.saved_steps(workdir):
      os.kill(int(pid), signal.SIGKILL)
      return
    time.sleep(0.05)
  raise AssertionError(f'{workdir} never saved step {step}')


@pytest.fixture(scope='module')
def swept(tmp_path_factory):
  """Runs the sweep, kills one run, reruns; returns what each stage showed."""
  base = tmp_path_factory.mktemp('sweep_test')
  (base / 'sweep_config.py').write_text(SWEEP_CONFIG)
  command, env = _run_command(base), _env(base)
  with open(base / 'first.out', 'w') as out:
    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    _kill_when_saved(base / 'sweep' / KILLED, first)
    first.wait(timeout=600)
  sweep = define.load(base / 'sweep')
  states_after_kill = {p.name: results.point_state(sweep.workdir(p)) for p in sweep.points}
  second = subprocess.run(
    command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False
  )
  return {
    'base': base,
    'sweep': sweep,
    'first_code': first.returncode,
    'first_out': (base / 'first.out').read_text(),
    'states_after_kill': states_after_kill,
    'second': second,
  }


def test_failed_point_is_reported_and_the_others_finish(swept):
  assert swept['first_code'] == 1, swept['first_out'][-3000:]
  states = swept['states_after_kill']
  assert states[KILLED].state == 'failed'
  assert states[KILLED].detail == f'exit status {-signal.SIGKILL}'
  log = str(swept['sweep'].workdir(swept['sweep'].points[0]) / results.RUN_LOG)
  assert states[KILLED].log == log
  assert f'{KILLED}: FAILED' in swept['first_out'] and log in swept['first_out']
  assert sorted(s.state for n, s in states.items() if n != KILLED) == ['finished'] * 3


def test_rerun_resumes_the_killed_point_and_skips_the_rest(swept):
  second = swept['second']
  assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
  assert second.stdout.count('finished, skipped') == 3
  assert f'{KILLED}: started' in second.stdout
  workdir = swept['sweep'].workdir(swept['sweep'].points[0])
  assert re.search(r'resumed from .* at step [36]\b', (workdir / 'train.log').read_text())
  for point in swept['sweep'].points:
    assert results.point_state(swept['sweep'].workdir(point)).state == 'finished'


def _logged_test_metrics(workdir: pathlib.Path) -> dict[str, float]:
  """The last `[step] test/...` line of train.log, parsed independently of the report."""
  log = (workdir / 'train.log').read_text().splitlines()
  lines = [line for line in log if '] test/' in line and 'test/cider_d=' in line]
  pairs = re.findall(r'test/(\w+)=([-+0-9.e]+)', lines[-1])
  return {name: float(value) for name, value in pairs}


@pytest.fixture(scope='module')
def built_report(swept):
  return report.build(swept['sweep'], num_samples=500)


def test_report_means_and_stds_match_the_runs_logs(swept, built_report):
  sweep = swept['sweep']
  for group, points in sweep.groups().items():
    logged = [_logged_test_metrics(sweep.workdir(p)) for p in points]
    assert set(logged[0]) >= {'cider_d', 'bleu_4', 'event_f1'}
    for name in logged[0]:
      values = [row[name] for row in logged]
      mean, std, n = built_report.stats[f'test/{name}'][group]
      assert n == 2
      # train.log prints 6 significant digits: allow that rounding (the std of
      # two close values amplifies it relative to the std itself).
      printed = 1e-6 * max(abs(v) for v in values) + 1e-9
      np.testing.assert_allclose(mean, np.mean(values), rtol=2e-5, atol=printed)
      np.testing.assert_allclose(std, np.std(values, ddof=1), rtol=2e-5, atol=2 * printed)
  assert {f'validation/{m}' for m in ('cider_d', 'event_f1')} <= set(built_report.stats)


def test_identical_points_give_an_interval_containing_zero(built_report):
  other = GROUPS[1]
  assert built_report.baseline == GROUPS[0]
  for name in ('test/cider_d', 'test/rouge_l', 'test/event_f1', 'validation/cider_d'):
    delta, low, high = built_report.deltas[name][other]
    assert low <= 0.0 <= high and low <= delta <= high
    means = [built_report.stats[name][g][0] for g in GROUPS]
    assert delta == pytest.approx(means[1] - means[0], abs=1e-6)  # Same as the table's.
  assert 'test/bleu_4' not in built_report.deltas  # Corpus-level: no clip interval.


def test_clip_statistics_reproduce_each_runs_corpus_scores(swept, built_report):
  """Per-clip stats from the predictions files sum back to the logged corpus scores."""
  reader = report.ClipStatsReader(swept['sweep'])
  for r in built_report.points:
    stats = reader.run_stats(r, 'test')
    for name in ('cider_d', 'rouge_l', 'event_f1', 'event_recall', 'count_accuracy'):
      s = stats[name]
      value = float(s.value(s.stats.sum(0), len(s.ids)))
      np.testing.assert_allclose(value, r.metrics[f'test/{name}'], rtol=1e-5, atol=1e-7)


def test_markdown_and_csv(swept, built_report):
  markdown = report.to_markdown(built_report)
  assert '## test' in markdown and '## validation' in markdown
  assert 'All points finished.' in markdown
  mean, std, _ = built_report.stats['test/cider_d'][GROUPS[0]]
  assert f'**{mean:.4f} ± {std:.4f}**' in markdown  # Tied points: both best.
  rows = report.to_csv(built_report).splitlines()
  assert rows[0].split(',') == list(report.CSV_COLUMNS)
  assert len(rows) == 1 + 2 * len(built_report.stats)


def test_report_command_writes_both_files(swept):
  base = swept['base']
  proc = subprocess.run(
    [sys.executable, 'tools/sweep.py', 'report', f'--root={base / "sweep"}', '--bootstrap=200'],
    cwd=REPO,
    env=_env(base),
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (base / 'sweep' / 'report.md').read_text() in proc.stdout
  assert (base / 'sweep' / 'report.csv').is_file()


def _is_png(path: pathlib.Path) -> bool:
  return path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and plt.imread(path).ndim == 3


def test_learning_curves_one_line_per_point(swept, tmp_path):
  fig = plots.learning_curves(swept['sweep'], 'cider_d')
  loss_ax, metric_ax = fig.axes
  assert len(loss_ax.get_lines()) == 2 and len(metric_ax.get_lines()) == 2
  assert len(loss_ax.collections) == 2  # One seed band per point.
  steps = loss_ax.get_lines()[0].get_xdata()
  np.testing.assert_array_equal(steps, [1, 2, 4, 6])
  assert _is_png(plots.save(fig, tmp_path / 'curves.png'))


def test_metric_vs_swept_value(swept, built_report, tmp_path):
  field = 'config.train.num_sample_captions'
  assert swept['sweep'].swept_fields() == [field]
  fig = plots.metric_vs_value(built_report, field, 'test/cider_d')
  (line,) = fig.axes[0].get_lines()
  np.testing.assert_array_equal(line.get_xdata(), [1.0, 2.0])
  expected = [built_report.stats['test/cider_d'][g][0] for g in GROUPS]
  np.testing.assert_allclose(line.get_ydata(), expected)
  assert _is_png(plots.save(fig, tmp_path / 'value.png'))
  paths = plots.plot_all(built_report, 'event_f1', tmp_path / 'all')
  assert sorted(p.name for p in paths) == [
    'learning_curves.png',
    'test_event_f1_vs_num_sample_captions.png',
    'validation_event_f1_vs_num_sample_captions.png',
  ]
  assert all(_is_png(p) for p in paths)


def test_seed_sets_init_and_data_order(swept):
  """Seeds change the run (step-1 loss); equal seeds of identical points agree exactly."""
  sweep = swept['sweep']
  loss = {p.name: events.read_scalars(sweep.workdir(p))['train/loss'][0][1] for p in sweep.points}
  assert loss['num_sample_captions=1,seed=0'] != loss['num_sample_captions=1,seed=1']
  assert loss['num_sample_captions=1,seed=1'] == loss['num_sample_captions=2,seed=1']
  point = sweep.points[1]
  config = runner.resolve_config(sweep.config, runner.point_flags(sweep, point))
  assert config.seed == 1 and config.dataset.seed == 1
  tok = tokenizer_lib.Tokenizer.load(sweep.workdir(point) / tokenizer_lib.VOCAB_FILENAME)
  first = {}
  for seed in (0, 1):
    config.dataset.seed = seed
    first[seed] = next(pipeline.make_train_iterator(config.dataset, tok, 8))['targets']
  assert not np.array_equal(first[0], first[1])


def test_expand_and_print_commands(tmp_path):
  points = define.expand(define.sweep('config.optim.lr', [0.1, 0.2]), seeds=2)
  assert [p.name for p in points] == [
    'lr=0.1,seed=0',
    'lr=0.1,seed=1',
    'lr=0.2,seed=0',
    'lr=0.2,seed=1',
  ]
  assert points[1].flags() == [
    '--config.dataset.seed=1',
    '--config.optim.lr=0.1',
    '--config.seed=1',
  ]
  with pytest.raises(ValueError, match='leave seeds to --seeds'):
    define.expand(define.sweep('config.seed', [0, 1]), seeds=1)
  with pytest.raises(ValueError, match='share the folder name'):
    define.expand([{'config.a.x': 1}, {'config.b.x': 1}], seeds=1)
  sweep = define.Sweep(tmp_path, 'configs/synthetic_demo.py', ('--config.x=1',), tuple(points))
  lines = []
  runner.print_commands(sweep, 'local', lines.append)
  assert len(lines) == 4
  words = shlex.split(lines[3])
  assert words[:4] == ['python', '-m', 'aac_jax.main', '--config=configs/synthetic_demo.py']
  assert f'--workdir={tmp_path / "lr=0.2,seed=1"}' in words and '--config.seed=1' in words
  lines.clear()
  runner.print_commands(sweep, 'tpu_pod', lines.append)
  assert lines[0].endswith('bash launch/tpu_pod.sh train') and 'EXTRA_FLAGS=' in lines[0]


def test_states_of_unstarted_and_foreign_runs(tmp_path):
  assert results.point_state(tmp_path / 'nothing').state == 'pending'
  (tmp_path / 'elsewhere').mkdir()
  (tmp_path / 'elsewhere' / 'config.json').write_text(
    json.dumps({'train': {'num_steps': 10}, 'eval': {}, 'dataset': {'test_split': 'test'}})
  )
  assert results.point_state(tmp_path / 'elsewhere').state == 'incomplete'


def test_paired_bootstrap_matches_normal_theory():
  rng = np.random.default_rng(1)
  n = 2000
  ids = tuple(str(i) for i in range(n))
  base_scores = rng.normal(size=n)
  other_scores = base_scores + 0.3 + rng.normal(size=n)
  base = clip_scores.ClipStats(ids, base_scores[:, None], clip_scores._mean_value)
  other = clip_scores.ClipStats(ids[::-1], other_scores[::-1, None], clip_scores._mean_value)
  delta, low, high = clip_scores.paired_bootstrap([base], [other], num_samples=2000)
  diff = other_scores - base_scores
  half = 1.96 * diff.std(ddof=1) / np.sqrt(n)
  assert delta == pytest.approx(diff.mean())
  assert low == pytest.approx(diff.mean() - half, abs=0.01)
  assert high == pytest.approx(diff.mean() + half, abs=0.01)


def test_event_reader_stops_at_a_cut_record(swept, tmp_path):
  workdir = swept['sweep'].workdir(swept['sweep'].points[1])
  source = max(workdir.glob(events.EVENT_FILE_GLOB), key=lambda p: p.stat().st_size)
  whole = len(list(events.read_records(source)))
  cut = tmp_path / source.name
  cut.write_bytes(source.read_bytes()[:-3])
  assert len(list(events.read_records(cut))) == whole - 1


def test_a_bad_field_stops_before_training():
  with pytest.raises(ValueError, match='Did you mean "lr" instead of "lrr"'):
    runner.resolve_config('configs/synthetic_demo.py', ['--config.optim.lrr=1'])
  with pytest.raises(ValueError, match='could not convert'):
    runner.resolve_config('configs/synthetic_demo.py', ['--config.optim.lr=abc'])


def test_paired_bootstrap_averages_seeds_of_ratio_metrics():
  """With a ratio-of-sums metric, the difference is that of the mean per-seed scores."""
  rng = np.random.default_rng(2)
  ids = tuple(str(i) for i in range(50))

  def ratio(sums, n):
    del n
    return sums[..., 0] / sums[..., 1]

  def run():
    hits = rng.integers(0, 3, size=50)
    return clip_scores.ClipStats(ids, np.stack([hits, hits + rng.integers(0, 3, 50)], 1), ratio)

  base, other = [run(), run()], [run(), run(), run()]
  delta, low, high = clip_scores.paired_bootstrap(base, other, num_samples=300)
  score = [float(ratio(r.stats.sum(0), 50)) for r in base + other]
  assert delta == pytest.approx(np.mean(score[2:]) - np.mean(score[:2]))
  assert low < delta < high
