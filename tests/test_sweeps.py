"""Ablation sweeps end to end: run, kill, resume, report, plot.

One sweep of 2 points x 2 seeds of the runlocal demo config (6 steps, 2 s
clips) runs once per module with `tools/sweep.py run --parallel=2`. Its two
points differ only in `train.num_sample_captions` (text logged to
TensorBoard), so they train identically: the paired bootstrap interval
between them must contain 0. One run is killed (SIGKILL) once it has saved
step 3; the sweep reports it with its log while the others finish, and the
rerun resumes it from its checkpoint and skips the finished ones.
"""

import dataclasses
import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import matplotlib.pyplot as plt
import numpy as np
import pytest
from etils import epath

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
      if report.DUPLICATE_OF.get(name) in logged[0]:
        assert f'test/{name}' not in built_report.stats  # vocab_size: Vocab again.
        continue
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
  ax = fig.axes[0]
  assert list(ax.get_xticks()) == [1.0, 2.0]  # An integer field: no fractional ticks.
  assert [t.get_text() for t in ax.get_xticklabels()] == ['1', '2']
  assert 'min..max over seeds' in ax.get_title()
  band = ax.collections[0].get_paths()[0].vertices
  for x, group in zip((1.0, 2.0), GROUPS, strict=True):
    seeds = [r.metrics['test/cider_d'] for r in built_report.points if r.point.group == group]
    np.testing.assert_allclose(sorted(set(band[band[:, 0] == x, 1])), [min(seeds), max(seeds)])
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
  workdir = pathlib.Path(swept['sweep'].workdir(swept['sweep'].points[1]))
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


def _logged(workdir: pathlib.Path, pattern: str) -> bool:
  log = workdir / 'train.log'
  return log.is_file() and re.search(pattern, log.read_text()) is not None


def _wait_until(condition, process: subprocess.Popen, what: str, timeout: float = 400) -> None:
  deadline = time.time() + timeout
  while not condition():
    if process.poll() is not None or time.time() > deadline:
      raise AssertionError(f'{what} never happened (runner exit status {process.poll()})')
    time.sleep(0.2)


def _preempted_step(workdir: pathlib.Path, signal_name: str) -> int:
  found = re.findall(
    rf'preempted: saved step (\d+) \({signal_name}\)', (workdir / 'train.log').read_text()
  )
  assert found, (workdir / 'train.log').read_text()[-3000:]
  return int(found[-1])


def _interrupted_run(base, command, workdirs, ready: str, send) -> tuple[int, str]:
  """Starts the sweep in its own process group, waits for `ready` in every train.log, `send`s."""
  out_path = base / f'interrupted_{time.monotonic_ns()}.out'
  with open(out_path, 'w') as out:
    proc = subprocess.Popen(
      command, cwd=REPO, env=_env(base), stdout=out, stderr=subprocess.STDOUT,
      start_new_session=True,  # Its own process group, as a terminal's foreground job.
    )  # fmt: skip
    try:
      _wait_until(lambda: all(_logged(w, ready) for w in workdirs), proc, f'{ready!r} logged')
      send(proc.pid)
      proc.wait(timeout=300)
    finally:
      if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
  return proc.returncode, out_path.read_text()


def test_interrupts_save_every_run_and_the_rerun_resumes(swept):
  """Ctrl-C (SIGINT to the whole process group), then SIGTERM to the runner alone."""
  base = swept['base']
  command = [
    f'--root={base / "long"}' if c.startswith('--root=') else c for c in _run_command(base)
  ]
  command[command.index('--seeds=2')] = '--seeds=1'
  command += ['--set=config.train.num_steps=100000', '--set=config.train.log_every=1']
  command += [f'--set=config.train.{k}=100000' for k in ('eval_every', 'checkpoint_every')]
  workdirs = [base / 'long' / f'{g},seed=0' for g in GROUPS]
  ctrl_c = lambda pid: os.killpg(pid, signal.SIGINT)  # noqa: E731
  first_run = _interrupted_run(base, command, workdirs, r'\[2\] train/', ctrl_c)
  first = {w: _preempted_step(w, 'SIGINT') for w in workdirs}
  assert {results.point_state(w).state for w in workdirs} == {'interrupted'}
  # The rerun resumes both; a few steps later SIGTERM goes to the runner only.
  ready = r'resumed from [\s\S]*\] train/'
  term = lambda pid: os.kill(pid, signal.SIGTERM)  # noqa: E731
  second_run = _interrupted_run(base, command, workdirs, ready, term)
  for (code, text), name in zip((first_run, second_run), ('SIGINT', 'SIGTERM'), strict=True):
    assert code == 130, text[-3000:]
    assert 'rerun the same command to resume' in text and 'Traceback' not in text, text[-3000:]
    assert f'interrupted ({name})' in text
  for workdir in workdirs:
    second = _preempted_step(workdir, 'SIGTERM')
    assert {first[workdir], second} <= set(results.saved_steps(workdir))
    assert second > first[workdir]
    assert _logged(workdir, rf'resumed from .* at step {first[workdir]}\b')
    state = results.point_state(workdir)
    assert state.state == 'interrupted' and f'saved step {second}' in state.detail
  markdown = report.to_markdown(report.build(define.load(base / 'long'), num_samples=0))
  assert markdown.count('| interrupted |') == 2 and 'failed' not in markdown


def test_rerun_with_other_flags_stops_and_keeps_the_record(swept):
  base = swept['base']
  record = base / 'sweep' / define.SWEEP_FILE
  before = (record.read_bytes(), record.stat().st_mtime_ns)
  same = subprocess.run(
    [*_run_command(base), '--print'], cwd=REPO, env=_env(base), capture_output=True, text=True,
    timeout=300, check=False,
  )  # fmt: skip
  assert same.returncode == 0, same.stderr[-3000:]
  assert same.stdout.count('aac_jax.main') == 4
  command = [c for c in _run_command(base) if 'max_audio_seconds' not in c]
  command += ['--set=config.dataset.max_audio_seconds=3.0', '--seeds=2', '--print']
  other = subprocess.run(
    command, cwd=REPO, env=_env(base), capture_output=True, text=True, timeout=300, check=False
  )
  assert other.returncode != 0
  message = other.stdout + other.stderr
  assert 'records another sweep' in message and 'aac_jax.main' not in other.stdout
  assert "'--config.dataset.max_audio_seconds=2.0'" in message, message[-2000:]
  assert "'--config.dataset.max_audio_seconds=3.0'" in message
  assert (record.read_bytes(), record.stat().st_mtime_ns) == before  # Not rewritten.


def test_more_seeds_extend_the_record_other_points_do_not(tmp_path):
  points = define.expand(define.sweep('config.optim.lr', [0.1, 0.2]), seeds=1)
  sweep = define.Sweep(epath.Path(tmp_path), 'c.py', ('--config.x=1',), tuple(points))
  define.save(sweep)
  more = define.expand(define.sweep('config.optim.lr', [0.1, 0.2]), seeds=2)
  define.save(dataclasses.replace(sweep, points=tuple(more)))
  assert len(define.load(tmp_path).points) == 4
  other = define.expand(define.sweep('config.optim.lr', [0.3]), seeds=2)
  with pytest.raises(define.SweepMismatch, match=r'point lr=0\.1,seed=0 is not in the sweep'):
    define.save(dataclasses.replace(sweep, points=tuple(other)))
  with pytest.raises(define.SweepMismatch, match='--config was c.py, now d.py'):
    define.check_recorded(dataclasses.replace(sweep, config='d.py', points=tuple(more)))


class _Bucket:
  """epath's mock backend with gs://bucket/... kept in a local folder.

  Every path the sweep code hands to the file system must still start with
  gs:// (a `gs:/bucket` from os.path or pathlib would fail here).
  """

  def __init__(self, folder: pathlib.Path):
    self.folder = folder
    self.seen: list[str] = []

  def local(self, path) -> str:
    path = os.fspath(path)
    self.seen.append(path)
    assert path.startswith('gs://bucket/') or not path.startswith('gs:'), path
    return str(self.folder / path[len('gs://') :]) if path.startswith('gs://') else path

  def remote(self, path: str) -> str:
    prefix = str(self.folder) + '/'
    return 'gs://' + path[len(prefix) :] if path.startswith(prefix) else path

  def mocks(self) -> dict:
    one = lambda fn, p, *a, **k: fn(self.local(p), *a, **k)  # noqa: E731
    two = lambda fn, p, q, *a, **k: fn(self.local(p), self.local(q), *a, **k)  # noqa: E731
    return dict(
      open=one, exists=one, isdir=one, listdir=one, makedirs=one, mkdir=one, remove=one,
      rmtree=one, stat=one, walk=one, rename=two, replace=two, copy=two,
      glob=lambda fn, p: [self.remote(x) for x in fn(self.local(p))],
    )  # fmt: skip


def test_gs_root_stays_a_bucket_path(swept, built_report, tmp_path, monkeypatch):
  from etils.epath import testing as epath_testing

  monkeypatch.chdir(tmp_path)  # Where a mangled 'gs:' folder would appear.
  bucket = _Bucket(tmp_path / 'store')
  root = 'gs://bucket/sweeps/x'
  local = swept['sweep']
  with epath_testing.mock_epath(**bucket.mocks()):
    sweep = runner.make_sweep(f'{local.config}', root, 2, list(local.extra_flags))
    assert str(sweep.root) == root and str(sweep.workdir(sweep.points[0])).startswith(root + '/')
    define.save(sweep)
    assert (tmp_path / 'store' / 'bucket' / 'sweeps' / 'x' / define.SWEEP_FILE).is_file()
    lines = []
    runner.print_commands(sweep, 'tpu_pod', lines.append)
    assert f'WORKDIR={shlex.quote(root + "/" + KILLED)}' in lines[0]
    for point in local.points:  # The trained runs, as a pod would have written them.
      shutil.copytree(local.workdir(point), bucket.local(sweep.workdir(point)))
    loaded = define.load(root)
    assert str(loaded.root) == root and loaded.points == sweep.points
    rep = report.build(loaded, num_samples=50)
    assert rep.stats == built_report.stats
    assert {r.state.state for r in rep.points} == {'finished'}
    paths = plots.plot_all(rep, 'cider_d', loaded.root / 'plots')
    assert all(str(p).startswith(root + '/plots/') for p in paths)
  assert _is_png(bucket.folder / 'bucket' / 'sweeps' / 'x' / 'plots' / 'learning_curves.png')
  assert any(s.startswith(root + '/') and 'events.out' in s for s in bucket.seen)
  assert not (tmp_path / 'gs:').exists()


def test_report_metric_directions_duplicates_and_choice(built_report):
  stats = {
    'test/cider_d': {'a': (0.5, 0.1, 2), 'b': (0.6, 0.1, 2)},
    'test/repeated_bigram_rate': {'a': (0.1, 0.0, 2), 'b': (0.3, 0.0, 2)},
    'test/fer': {'a': (0.2, 0.0, 2), 'b': (0.1, 0.0, 2)},
    'test/mean_length': {'a': (8.0, 0.0, 2), 'b': (12.0, 0.0, 2)},
    'test/vocab': {'a': (90.0, 0.0, 2), 'b': (95.0, 0.0, 2)},
    'test/vocab_size': {'a': (90.0, 0.0, 2), 'b': (95.0, 0.0, 2)},
  }
  best = report.best_groups(stats)
  assert best['test/cider_d'] == {'b'} and best['test/repeated_bigram_rate'] == {'a'}
  assert best['test/fer'] == {'b'} and best['test/mean_length'] == set()
  assert set(report.select_metrics(stats, None)) == set(stats) - {'test/vocab_size'}
  assert set(report.select_metrics(stats, ['cider_d', 'fer'])) == {'test/cider_d', 'test/fer'}
  with pytest.raises(ValueError, match=r"--metrics \['cidr'\] not logged"):
    report.select_metrics(stats, ['cidr'])
  markdown = report.to_markdown(built_report)
  assert 'seeds held fixed' in markdown
  # The two points train identically: every difference is exactly 0.
  assert '(degenerate)' in markdown and '[+0.0000, +0.0000]' not in markdown
  assert not {'test/vocab', 'test/vocab_size'} <= set(built_report.stats)
  chosen = report.build(built_report.sweep, num_samples=0, metrics=['cider_d'])
  assert set(chosen.stats) == {'test/cider_d', 'validation/cider_d'}


def test_learning_curves_align_a_resumed_runs_steps(tmp_path):
  import tensorboardX

  points = define.expand([{'config.train.x': 1}], seeds=2)
  sweep = define.Sweep(epath.Path(tmp_path), 'c.py', (), tuple(points))
  # Seed 1 resumed from step 4 and logged step 5, off the cadence of 2.
  logged = [{2: 1.0, 4: 0.8, 6: 0.6, 8: 0.4}, {2: 1.2, 4: 1.0, 5: 0.9, 6: 0.8, 8: 0.6}]
  for point, values in zip(points, logged, strict=True):
    writer = tensorboardX.SummaryWriter(str(sweep.workdir(point)))
    for step, value in values.items():
      writer.add_scalar('train/loss', value, step)
    writer.close()
  ax = plots.learning_curves(sweep, 'cider_d').axes[0]
  (line,) = ax.get_lines()
  np.testing.assert_array_equal(line.get_xdata(), [2, 4, 5, 6, 8])
  np.testing.assert_allclose(line.get_ydata()[2], (0.7 + 0.9) / 2)  # Seed 0 interpolated.
  band = ax.collections[0].get_paths()[0].vertices
  np.testing.assert_allclose(sorted(set(band[band[:, 0] == 5, 1])), [0.7, 0.9])
