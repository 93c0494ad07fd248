"""Beam builds (`aac-build-dataset NAME --beam`) against the single-machine build.

The same source trees as the builder tests (Clotho layout with a missing, a
corrupt and a silent clip; a custom folder with a CSV manifest) are built
once on one machine and once on Beam's DirectRunner with 2 workers: the
record files must be the same bytes, and the one report merged from the
workers must equal the single-machine report (timings and dates aside).
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest
from test_datasets_clotho import write_clotho_tree
from test_datasets_common import read_split, skipped
from test_datasets_custom import write_csv_tree

from aac_jax.data import beam_build, build_cli, build_report

needs_beam = pytest.mark.skipif(
  importlib.util.find_spec('apache_beam') is None, reason="pip install 'aac_jax[beam]'"
)
REPO = pathlib.Path(__file__).resolve().parents[1]
# Decoding in 2 worker processes: serialisation happens there too (the
# multi_processing mode is what showed records differing in bytes before
# tfds_compat made them deterministic).
PROCESSES = 'direct_num_workers=2,direct_running_mode=multi_processing'
THREADS = 'direct_num_workers=2,direct_running_mode=multi_threading'


def _build(dataset: str, source: pathlib.Path, data_dir: pathlib.Path, beam_flags=None, **kw):
  options = build_report.BuildOptions(
    progress=False, beam=beam_flags is not None, beam_pipeline_options=beam_flags or ''
  )
  return build_cli.build(dataset, str(source), str(data_dir), options=options, **kw)


def _comparable_report(path: pathlib.Path) -> dict:
  report = json.loads(path.read_text())
  del report['created']
  for split in report['splits'].values():
    del split['seconds'], split['clips_per_second']
  return report


def _assert_same_build(single, beam) -> None:
  """Same record bytes per split file, same records read back, one equal report."""
  single_dir, beam_dir = pathlib.Path(single.data_path), pathlib.Path(beam.data_path)
  record_files = sorted(p.name for p in single_dir.glob('*.array_record-*'))
  assert record_files == sorted(p.name for p in beam_dir.glob('*.array_record-*'))
  for name in record_files:
    assert (single_dir / name).read_bytes() == (beam_dir / name).read_bytes(), name
  for split in single.report.splits:
    ours, theirs = read_split(single, split), read_split(beam, split)
    assert list(ours) == list(theirs)
    for clip_id, record in ours.items():
      assert record['audio'].tobytes() == theirs[clip_id]['audio'].tobytes()
      assert record['captions'] == theirs[clip_id]['captions']
  assert beam.report_path == beam_dir / build_report.REPORT_FILE
  assert _comparable_report(beam.report_path) == _comparable_report(single.report_path)
  assert not list(beam_dir.parent.glob('*.beam_outcomes'))  # Merged, then deleted.


@needs_beam
def test_clotho_tree_on_two_worker_threads(tmp_path):
  write_clotho_tree(tmp_path / 'source')
  single = _build('clotho', tmp_path / 'source', tmp_path / 'single')
  beam = _build('clotho', tmp_path / 'source', tmp_path / 'beam', THREADS)
  _assert_same_build(single, beam)
  reasons = {name: s.skipped_by_reason() for name, s in beam.report.splits.items()}
  # Decode skips come from the workers; missing files and rows from the listing.
  assert reasons['validation'] == {'unreadable': 1}
  assert reasons['evaluation'] == {'silent_audio': 1}
  assert reasons['development'] == {'duplicate_row': 1, 'missing_file': 1}


@needs_beam
def test_custom_folder_on_two_worker_processes(tmp_path):
  good = write_csv_tree(tmp_path / 'source')
  single = _build('custom', tmp_path / 'source', tmp_path / 'single')
  beam = _build('custom', tmp_path / 'source', tmp_path / 'beam', PROCESSES)
  _assert_same_build(single, beam)
  written = sum(s.clips_written for s in beam.report.splits.values())
  assert written == len(good)


@needs_beam
def test_strict_beam_build_fails_on_a_clip_a_worker_could_not_decode(tmp_path):
  source = tmp_path / 'source'
  write_clotho_tree(source)
  for split in ('development', 'evaluation'):  # Leave validation: one corrupt clip.
    (source / f'clotho_captions_{split}.csv').unlink()
  (source / 'clotho_metadata_test.csv').unlink()
  with pytest.raises(build_report.BuildError, match='decoding validation'):
    build_cli.build(
      'clotho',
      str(source),
      str(tmp_path / 'tfds'),
      options=build_report.BuildOptions(
        progress=False, strict=True, beam=True, beam_pipeline_options=THREADS
      ),
    )
  config_dir = tmp_path / 'tfds' / 'clotho_aac' / '16000hz'
  assert not (config_dir / '1.0.0').exists()
  report = build_report.load_report(config_dir / '1.0.0.failed.build_report.json')
  assert report['status'] == 'failed'
  assert list(skipped(report, 'validation').values()) == ['unreadable']  # From a worker.
  assert not list(config_dir.glob('*.beam_outcomes'))


def test_beam_without_apache_beam_names_the_extra(tmp_path):
  # `None` in sys.modules makes `import apache_beam` raise ModuleNotFoundError,
  # as when the package is not installed.
  shim = tmp_path / 'shim'
  shim.mkdir()
  (shim / 'sitecustomize.py').write_text("import sys\nsys.modules['apache_beam'] = None\n")
  write_csv_tree(tmp_path / 'source')
  data_dir = tmp_path / 'tfds'
  command = [sys.executable, str(REPO / 'tools' / 'build_dataset.py'), 'custom', '--beam']
  command += ['--source_dir', str(tmp_path / 'source'), '--data_dir', str(data_dir)]
  env = os.environ | {'PYTHONPATH': str(shim)}
  result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
  assert result.returncode == build_cli.USAGE_ERROR
  lines = [line for line in result.stderr.splitlines() if line.startswith('aac-build-dataset')]
  assert lines == [f'aac-build-dataset: {beam_build.INSTALL_HINT}'], result.stderr
  assert "pip install 'aac_jax[beam]'" in lines[0]
  assert 'Traceback' not in result.stderr
  assert not data_dir.exists()  # Refused before any work.
