"""Builds clotho_aac from a tree in the real Clotho v2.1 layout.

Caption rows are real (from the shared corpora); audio files are short and
written at several rates, channel counts and sample formats; some are
missing, one is corrupt, one silent, one row repeats, one caption is empty
after normalisation, one file name is non-ASCII (stored NFD on disk, as
macOS does) with a comma.
"""

import pathlib
import unicodedata

import pytest
import tensorflow_datasets as tfds
from corpora import corpora_dir
from test_datasets_common import (
  read_csv,
  read_split,
  resampled_length,
  skipped,
  write_audio,
  write_corrupt,
  write_csv,
)

from aac_jax.data import build_report, clotho

CAPTIONS = [f'caption_{i}' for i in range(1, 6)]
HEADER = ['file_name', *CAPTIONS]
META_HEADER = ['file_name', 'keywords', 'sound_id', 'sound_link', 'start_end_samples']
META_HEADER += ['manufacturer', 'license']
NON_ASCII = 'Café à la gare, ambiance.wav'
# (rate, channels, subtype) of the clips written per split, in row order;
# 'missing': no file, 'corrupt': junk bytes.
FORMATS = {
  'development': [
    (44100, 1, 'PCM_16'),
    (22050, 2, 'PCM_24'),
    (48000, 1, 'FLOAT'),
    'missing',
    (44100, 2, 'PCM_16'),
  ],
  'validation': [(32000, 2, 'PCM_16'), 'corrupt', (16000, 1, 'PCM_16')],
  'evaluation': [(44100, 2, 'PCM_16'), (8000, 1, 'PCM_16'), (44100, 1, 'PCM_16')],
}


def _real_rows(corpora: pathlib.Path, split: str) -> list[dict]:
  rows = read_csv(corpora / 'clotho' / f'clotho_captions_{split}.csv')
  chosen = rows[:3]
  if split == 'development':  # Plus real names with a comma, and a leading space.
    chosen.append(next(r for r in rows[3:] if ',' in r['file_name']))
    chosen.append(next(r for r in rows if r['file_name'].startswith(' ')))
    chosen[1] = chosen[1] | {'file_name': NON_ASCII}
    chosen[2] = chosen[2] | {'caption_3': ' ... '}
  return chosen


def _metadata_row(name: str, i: int) -> list:
  return [name, f'kw{i};train station; ambience', str(1000 + i), f'https://x/{i}', '', 'me', 'CC']


def write_clotho_tree(root: pathlib.Path) -> dict[str, dict]:
  """Writes the tree; returns `{split: {id: (frames, rate)}}` of the good clips."""
  corpora = corpora_dir()
  written = {}
  for split, formats in FORMATS.items():
    rows = _real_rows(corpora, split)
    csv_rows = [[r[k] for k in HEADER] for r in rows]
    csv_rows += [csv_rows[0]] if split == 'development' else []  # A repeated row.
    write_csv(root / f'clotho_captions_{split}.csv', HEADER, csv_rows)
    folder = root / 'clotho_audio_files' / split
    written[split] = {}
    for i, (row, fmt) in enumerate(zip(rows, formats, strict=True)):
      disk_name = unicodedata.normalize('NFD', row['file_name'])
      silent = split == 'evaluation' and i == 2
      if fmt == 'corrupt':
        write_corrupt(folder / disk_name)
      if fmt in ('corrupt', 'missing'):
        continue
      frames = write_audio(folder / disk_name, 0.3 + 0.1 * i, fmt[0], fmt[1], fmt[2], silent, i)
      if not silent:
        written[split][row['file_name']] = (frames, fmt[0])
  write_audio(root / 'clotho_audio_files' / 'validation' / 'stray.wav', 0.1, 16000)
  dev_names = [r['file_name'] for r in _real_rows(corpora, 'development')]
  meta = [_metadata_row(name, i) for i, name in enumerate(dev_names)]
  write_csv(root / 'clotho_metadata_development.csv', META_HEADER, meta, 'iso-8859-1')
  eval_names = [r['file_name'] for r in _real_rows(corpora, 'evaluation')]
  meta = [_metadata_row(name, i) for i, name in enumerate(eval_names[:2])]
  write_csv(root / 'clotho_metadata_evaluation.csv', META_HEADER, meta, 'iso-8859-1')
  test_names = ['Ünïcode test clip.wav', 'test (1), birds.wav', 'absent.wav']
  write_csv(
    root / 'clotho_metadata_test.csv', META_HEADER, [_metadata_row(n, 9) for n in test_names]
  )
  written['test'] = {}
  for name, rate, channels in [(test_names[0], 44100, 1), (test_names[1], 11025, 2)]:
    frames = write_audio(root / 'clotho_audio_files' / 'test' / name, 0.25, rate, channels)
    written['test'][name] = (frames, rate)
  return written


def _build(source: pathlib.Path, data_dir: pathlib.Path, **options) -> clotho.ClothoAac:
  builder = clotho.ClothoAac(
    data_dir=str(data_dir), options=build_report.BuildOptions(progress=False, **options)
  )
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(source)))
  return builder


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp('clotho')
  written = write_clotho_tree(root / 'source')
  builder = _build(root / 'source', root / 'tfds')
  return builder, written


def test_clip_and_caption_counts(built):
  builder, _ = built
  splits = builder.info.splits
  assert {name: splits[name].num_examples for name in splits} == {
    'development': 4,
    'validation': 2,
    'evaluation': 2,
    'test': 2,
  }
  report = build_report.load_report(builder.report_path)
  counts = {s: report['splits'][s]['captions_written'] for s in report['splits']}
  assert counts == {'development': 19, 'validation': 10, 'evaluation': 10, 'test': 0}


def test_captions_match_csv_rows(built):
  builder, written = built
  corpora = corpora_dir()
  for split in ('development', 'validation', 'evaluation'):
    records = read_split(builder, split)
    assert set(records) == set(written[split])
    for row in _real_rows(corpora, split):
      if row['file_name'] in records:
        expected = [row[c].strip() for c in CAPTIONS if row[c].strip() != '...']
        assert records[row['file_name']]['captions'] == expected
  assert all(not r['captions'] for r in read_split(builder, 'test').values())


def test_audio_is_resampled_mono_int16(built):
  builder, written = built
  assert builder.info.metadata['sample_rate'] == 16000
  for split, clips in written.items():
    records = read_split(builder, split)
    for name, (frames, rate) in clips.items():
      if name in records:
        audio = records[name]['audio']
        assert audio.dtype.name == 'int16' and audio.shape == (resampled_length(frames, rate),)


def test_metadata_kept(built):
  builder, _ = built
  record = read_split(builder, 'development')[NON_ASCII]
  assert [k.decode() for k in record['keywords']] == ['kw1', 'train station', 'ambience']
  assert record['sound_id'] == b'1001' and record['license'] == b'CC'
  test_record = read_split(builder, 'test')['test (1), birds.wav']
  assert test_record['sound_id'] == b'1009'


def test_build_report(built):
  builder, _ = built
  dev_names = [r['file_name'] for r in _real_rows(corpora_dir(), 'development')]
  val_names = [r['file_name'] for r in _real_rows(corpora_dir(), 'validation')]
  eval_names = [r['file_name'] for r in _real_rows(corpora_dir(), 'evaluation')]
  report = build_report.load_report(builder.report_path)
  assert builder.report_path == pathlib.Path(builder.data_path) / 'build_report.json'
  assert report['status'] == 'complete' and report['sample_rate'] == 16000
  assert skipped(report, 'development') == {
    dev_names[3]: 'missing_file',
    dev_names[0]: 'duplicate_row',
  }
  assert skipped(report, 'validation') == {val_names[1]: 'unreadable'}
  assert skipped(report, 'evaluation') == {eval_names[2]: 'silent_audio'}
  assert skipped(report, 'test') == {'absent.wav': 'missing_file'}
  dropped = report['splits']['development']['skipped_captions']
  assert [(d['id'], d['index'], d['reason']) for d in dropped] == [
    (dev_names[2], 2, 'empty_caption')
  ]
  kinds = {s: [w['kind'] for w in report['splits'][s]['warnings']] for s in report['splits']}
  # The leading-space name matched file and metadata; the ISO-8859-1
  # metadata (as the real files are) is read with a warning naming the byte.
  assert kinds['development'] == ['encoding']
  warning = report['splits']['development']['warnings'][0]['detail']
  assert 'clotho_metadata_development.csv: not valid UTF-8 at byte' in warning
  assert 'read as iso-8859-1' in warning
  assert kinds['validation'] == ['no_metadata', 'unreferenced_files']
  assert 'stray.wav' in report['splits']['validation']['warnings'][1]['detail']
  assert kinds['evaluation'] == ['missing_metadata']
  formats = report['splits']['development']['source_formats']
  assert formats == {
    '22050 Hz, 2 ch': 1,
    '44100 Hz, 1 ch': 1,
    '44100 Hz, 2 ch': 1,
    '48000 Hz, 1 ch': 1,
  }
  assert report['splits']['development']['clips_per_second'] > 0


def test_strict_build_fails_with_report(tmp_path):
  write_clotho_tree(tmp_path / 'source')
  with pytest.raises(build_report.BuildError, match='missing_file'):
    _build(tmp_path / 'source', tmp_path / 'tfds', strict=True, num_workers=0)
  version_dir = tmp_path / 'tfds' / 'clotho_aac' / '16000hz' / '1.0.0'
  assert not version_dir.exists()
  report = build_report.load_report(version_dir.parent / '1.0.0.failed.build_report.json')
  assert report['status'] == 'failed' and report['strict']
  assert skipped(report, 'validation') == {}  # Failed before decoding anything.


def test_strict_build_fails_on_undecodable_audio(tmp_path):
  source = tmp_path / 'source'
  write_clotho_tree(source)
  for split in ('development', 'evaluation'):
    (source / f'clotho_captions_{split}.csv').unlink()
  (source / 'clotho_metadata_test.csv').unlink()
  (source / 'clotho_audio_files' / 'test').rename(tmp_path / 'elsewhere')
  with pytest.raises(build_report.BuildError, match='decoding validation'):
    _build(source, tmp_path / 'tfds', strict=True, num_workers=0)
