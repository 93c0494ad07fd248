"""Tests for `aac-build-dataset` (aac_jax/data/build_cli.py) and tools/build_dataset.py."""

import pathlib
import re
import subprocess
import sys

from test_datasets_custom import write_csv_tree

from aac_jax.data import build_cli, build_report

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_build_then_reuse_then_strict_failure(tmp_path, capsys):
  write_csv_tree(tmp_path / 'src')
  argv = ['custom', '--source_dir', str(tmp_path / 'src'), '--data_dir', str(tmp_path / 'tfds')]
  argv += ['--no_progress', '--sample_rate', '8000']
  assert build_cli.run(argv) == 0
  report_path = tmp_path / 'tfds' / 'custom_aac' / '8000hz' / '1.0.0' / 'build_report.json'
  assert f'report: {report_path}' in capsys.readouterr().out
  assert build_report.load_report(report_path)['splits']['train']['clips_written'] == 3

  assert build_cli.run(argv) == 0
  assert 'reused' in capsys.readouterr().out

  own_report = tmp_path / 'strict.json'
  assert build_cli.run([*argv, '--strict', '--overwrite', '--report', str(own_report)]) == 1
  err = capsys.readouterr().err
  assert 'strict build' in err and str(own_report) in err
  assert build_report.load_report(own_report)['status'] == 'failed'


def test_missing_source_dir_fails_cleanly(tmp_path, capsys):
  argv = ['clotho', '--source_dir', str(tmp_path / 'nowhere'), '--data_dir', str(tmp_path)]
  assert build_cli.run(argv) == 1
  assert 'build failed' in capsys.readouterr().err


def test_bench_prints_clips_per_second(capsys):
  assert build_cli.run(['bench', '--clips', '12', '--seconds', '0.2', '--no_progress']) == 0
  out = capsys.readouterr().out
  assert re.search(r'12 of 12 clips written .* [0-9.]+ clips/s decode\+write', out), out


def test_tools_script_runs():
  result = subprocess.run(
    [sys.executable, str(REPO / 'tools' / 'build_dataset.py'), 'audiocaps', '--help'],
    capture_output=True,
    text=True,
    check=True,
  )
  assert '--audio_pattern' in result.stdout


def test_nul_byte_in_a_caption_csv_fails_the_build_with_one_line(tmp_path, capsys):
  write_csv_tree(tmp_path / 'src')
  manifest = tmp_path / 'src' / 'manifest.csv'
  data = manifest.read_bytes()
  at = data.index(b'\n', data.index(b'\n') + 1) - 3  # Inside the first row's last caption.
  manifest.write_bytes(data[:at] + b'\0' + data[at:])
  argv = ['custom', '--source_dir', str(tmp_path / 'src'), '--data_dir', str(tmp_path / 'tfds')]
  assert build_cli.run([*argv, '--no_progress', '--sample_rate', '8000']) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert err[0] == (
    f'aac-build-dataset: build failed: {manifest}: NUL byte at byte {at} (line 2): not a UTF-8 '
    'text file (damaged, binary, or UTF-16); save it as UTF-8 text without NUL bytes'
  ), err
  assert not list((tmp_path / 'tfds').rglob('*.array_record*'))
