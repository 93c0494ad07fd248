"""Builds custom_aac from a folder of mixed audio files and a CSV or JSONL manifest.

Captions are real Clotho captions (from the shared corpora); audio is mp3,
ogg, flac and wav at several rates and channel counts, in sub-folders.
"""

import json

import pytest
import tensorflow_datasets as tfds
from corpora import corpora_dir
from test_datasets_common import read_csv, read_split, resampled_length, skipped, write_audio

from aac_jax.data import build_report, custom_folder


def _captions(count: int) -> list[list[str]]:
  rows = read_csv(corpora_dir() / 'clotho' / 'clotho_captions_evaluation.csv')[:count]
  return [[row[f'caption_{i}'] for i in range(1, 6)] for row in rows]


def _build(source, data_dir, config=None, **kwargs) -> custom_folder.CustomAac:
  builder = custom_folder.CustomAac(
    data_dir=str(data_dir),
    config=config,
    options=build_report.BuildOptions(progress=False),
    **kwargs,
  )
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(source)))
  return builder


def write_csv_tree(source) -> dict[str, tuple[int, int]]:
  """Writes audio and manifest.csv; returns `{file: (frames, rate)}` of good clips."""
  caps = _captions(4)
  good = {}
  for file, rate, channels in [
    ('sounds/birds/a b.mp3', 44100, 2),
    ('sounds/c.ogg', 48000, 1),
    ('d.flac', 22050, 1),
    ('unlabelled/x.wav', 16000, 2),
    ('unlabelled/y.wav', 8000, 1),
  ]:
    good[file] = (write_audio(source / file, 0.3, rate, channels, seed=len(good)), rate)
  write_audio(source / 'g.wav', 0.2, 16000)
  write_audio(source / 'stray.flac', 0.2, 16000)
  lines = [
    ['file', 'caption_1', 'caption_2', 'split'],
    ['sounds/birds/a b.mp3', caps[0][0], caps[0][1], 'train'],
    ['./sounds/c.ogg', caps[1][0], caps[1][1], ''],  # No split: train.
    ['d.flac', caps[2][0], '', 'train'],  # A blank cell is no caption.
    ['e.wav', caps[3][0], caps[3][1], 'train'],  # Missing file.
    ['g.wav', '...', '!!', 'train'],  # Empty after normalisation.
    ['sounds/birds/a b.mp3', caps[0][0], caps[0][1], 'train'],  # Repeated row.
    ['d.flac', caps[3][2], '', 'my-split'],  # Not a split name.
    ['unlabelled/x.wav', '', '', 'test'],
    ['unlabelled/y.wav', '', '', 'test'],
  ]
  text = '\n'.join(','.join(json.dumps(cell) for cell in line) for line in lines)
  (source / 'manifest.csv').write_text(text + '\n')
  return good


def test_csv_manifest(tmp_path):
  good = write_csv_tree(tmp_path / 'src')
  config = custom_folder.CustomAac.make_config(22050, 'birds')
  builder = _build(tmp_path / 'src', tmp_path / 'tfds', config)
  caps = _captions(4)
  assert str(builder.data_path).endswith('custom_aac/birds/1.0.0')
  assert builder.info.metadata['sample_rate'] == 22050
  train = read_split(builder, 'train')
  assert {k: v['captions'] for k, v in train.items()} == {
    'sounds/birds/a b.mp3': caps[0][:2],
    'sounds/c.ogg': caps[1][:2],
    'd.flac': caps[2][:1],
  }
  test = read_split(builder, 'test')
  assert {k: v['captions'] for k, v in test.items()} == {
    'unlabelled/x.wav': [],
    'unlabelled/y.wav': [],
  }
  for file, record in {**train, **test}.items():
    frames, rate = good[file]
    assert record['audio'].shape == (resampled_length(frames, rate, 22050),)
  report = build_report.load_report(builder.report_path)
  assert skipped(report, 'train') == {
    'e.wav': 'missing_file',
    'g.wav': 'no_captions',
    'sounds/birds/a b.mp3': 'duplicate_row',
    'd.flac': 'bad_row',
  }
  assert len(report['splits']['train']['skipped_captions']) == 2
  assert [w['kind'] for w in report['warnings']] == ['unreferenced_files']
  assert 'stray.flac' in report['warnings'][0]['detail']
  # Reading back needs only the name and config.
  source = tfds.data_source('custom_aac/birds', split='test', data_dir=str(tmp_path / 'tfds'))
  assert len(source) == 2


def test_jsonl_manifest_merges_rows(tmp_path):
  caps = _captions(2)
  write_audio(tmp_path / 'src' / 'a.wav', 0.2, 44100, 2)
  write_audio(tmp_path / 'src' / 'clips' / 'b.flac', 0.2, 16000)
  lines = [
    json.dumps({'file': 'a.wav', 'caption': caps[0][0]}),
    json.dumps({'file': 'a.wav', 'caption': caps[0][1]}),
    '',
    json.dumps({'file': 'clips/b.flac', 'captions': caps[1][:3], 'split': 'validation'}),
    '{"file": "a.wav", "caption": ',
    json.dumps({'file': 3, 'caption': 'a dog'}),
  ]
  (tmp_path / 'src' / 'my.jsonl').write_text('\n'.join(lines) + '\n')
  builder = _build(tmp_path / 'src', tmp_path / 'tfds', manifest='my.jsonl')
  assert read_split(builder, 'train')['a.wav']['captions'] == caps[0][:2]
  assert read_split(builder, 'validation')['clips/b.flac']['captions'] == caps[1][:3]
  report = builder.report.to_json()
  bad = report['splits']['train']['skipped']
  assert [(e['reason'], e['detail'].split(':')[0]) for e in bad] == [
    ('bad_row', 'line 5'),
    ('bad_row', 'line 6'),
  ]


def test_no_manifest_is_a_clear_error(tmp_path):
  write_audio(tmp_path / 'src' / 'a.wav', 0.1, 16000)
  with pytest.raises(build_report.BuildError, match='manifest'):
    _build(tmp_path / 'src', tmp_path / 'tfds')
