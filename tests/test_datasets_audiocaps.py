"""Builds audiocaps_aac from a tree in the real AudioCaps v1 layout.

Caption rows are real (from the shared corpora). Audio is named in each of
the default layouts (`{split}/{youtube_id}_{start_time}.flac`,
`{split}/Y{youtube_id}.wav`, `Y{youtube_id}.wav`) at several rates and
channel counts; one clip is missing (as in every real copy), one corrupt,
one silent; one row repeats, one is malformed, and one youtube_id has two
start times (a made-up row) so its ids carry the start time.
"""

import collections
import pathlib

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

from aac_jax.data import audiocaps, build_report

HEADER = ['audiocap_id', 'youtube_id', 'start_time', 'caption']


def _clips(split: str, count: int) -> list[list[dict]]:
  """The rows of the first `count` clips of a real CSV, grouped by youtube_id."""
  groups = collections.OrderedDict()
  for row in read_csv(corpora_dir() / 'audiocaps' / f'{split}.csv'):
    if row['youtube_id'] in groups or len(groups) < count:
      groups.setdefault(row['youtube_id'], []).append(row)
  return list(groups.values())


def _flac(root, split, row) -> pathlib.Path:
  return root / split / f'{row["youtube_id"]}_{row["start_time"]}.flac'


def write_audiocaps_tree(root: pathlib.Path) -> dict[str, dict]:
  """Writes the tree; returns `{split: {id: (frames, rate, [rows])}}` of good clips."""
  train = [group[0] for group in _clips('train', 6)]
  twin = train[1] | {'audiocap_id': '999001', 'start_time': str(int(train[1]['start_time']) + 30)}
  twin['caption'] = train[5]['caption']
  bad = {'audiocap_id': '999002', 'youtube_id': 'zzzzzzzzzzz', 'start_time': 'abc', 'caption': 'x'}
  rows = [*train, twin, train[0], bad]  # train[0] repeats.
  write_csv(root / 'train.csv', HEADER, [[r[k] for k in HEADER] for r in rows])
  good = {'train': {}, 'val': {}, 'test': {}}

  def put(split, clip_id, path, group, rate, channels=1, subtype=None):
    frames = write_audio(path, 0.4, rate, channels, subtype, seed=len(good[split]))
    good[split][clip_id] = (frames, rate, group)

  put('train', train[0]['youtube_id'], _flac(root, 'train', train[0]), [train[0]], 44100, 2)
  for row in (train[1], twin):
    clip_id = f'{row["youtube_id"]}_{row["start_time"]}'
    put('train', clip_id, _flac(root, 'train', row), [row], 32000)
  wav = root / 'train' / f'Y{train[2]["youtube_id"]}.wav'
  put('train', train[2]['youtube_id'], wav, [train[2]], 48000, 1, 'PCM_16')
  # train[3]: no audio, as for every copy downloaded from YouTube.
  put(
    'train', train[4]['youtube_id'], root / f'Y{train[4]["youtube_id"]}.wav', [train[4]], 22050, 2
  )
  put('train', train[5]['youtube_id'], _flac(root, 'train', train[5]), [train[5]], 16000)

  val, test = _clips('val', 3), _clips('test', 2)
  for split, groups in (('val', val), ('test', test)):
    rows = [row for group in groups for row in group]
    write_csv(root / f'{split}.csv', HEADER, [[r[k] for k in HEADER] for r in rows])
  put('val', val[0][0]['youtube_id'], _flac(root, 'val', val[0][0]), val[0], 16000)
  write_corrupt(_flac(root, 'val', val[1][0]))
  put(
    'val', val[2][0]['youtube_id'], root / 'val' / f'Y{val[2][0]["youtube_id"]}.wav', val[2], 8000
  )
  put('test', test[0][0]['youtube_id'], _flac(root, 'test', test[0][0]), test[0], 44100, 2)
  write_audio(_flac(root, 'test', test[1][0]), 0.3, 44100, silent=True)
  return good


def _build(source, data_dir, **kwargs) -> audiocaps.AudiocapsAac:
  builder = audiocaps.AudiocapsAac(
    data_dir=str(data_dir), options=build_report.BuildOptions(progress=False), **kwargs
  )
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(source)))
  return builder


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp('audiocaps')
  good = write_audiocaps_tree(root / 'source')
  return _build(root / 'source', root / 'tfds'), good


def test_clip_and_caption_counts(built):
  builder, good = built
  splits = builder.info.splits
  assert {name: splits[name].num_examples for name in splits} == {'train': 6, 'val': 2, 'test': 1}
  report = build_report.load_report(builder.report_path)
  counts = {s: report['splits'][s]['captions_written'] for s in report['splits']}
  assert counts == {'train': 6, 'val': 10, 'test': 5}
  assert {s: report['splits'][s]['clips_listed'] for s in report['splits']} == {
    'train': 7,
    'val': 3,
    'test': 2,
  }


def test_records_match_csv_rows(built):
  builder, good = built
  for split, clips in good.items():
    records = read_split(builder, split)
    assert set(records) == set(clips)
    for clip_id, (frames, rate, rows) in clips.items():
      record = records[clip_id]
      assert record['captions'] == [row['caption'].strip() for row in rows]
      assert [int(i) for i in record['audiocap_ids']] == [int(row['audiocap_id']) for row in rows]
      assert record['youtube_id'].decode() == rows[0]['youtube_id']
      assert int(record['start_time']) == int(rows[0]['start_time'])
      assert record['audio'].shape == (resampled_length(frames, rate),)


def test_build_report(built):
  builder, _ = built
  train = [group[0] for group in _clips('train', 6)]
  val, test = _clips('val', 3), _clips('test', 2)
  report = build_report.load_report(builder.report_path)
  assert skipped(report, 'train') == {
    train[3]['youtube_id']: 'missing_file',
    train[0]['youtube_id']: 'duplicate_row',
    'zzzzzzzzzzz': 'bad_row',
  }
  missing = report['splits']['train']['skipped'][-1]
  assert missing['id'] == train[3]['youtube_id']
  assert f'train/{train[3]["youtube_id"]}_{train[3]["start_time"]}.flac' in missing['detail']
  assert skipped(report, 'val') == {val[1][0]['youtube_id']: 'unreadable'}
  assert skipped(report, 'test') == {test[1][0]['youtube_id']: 'silent_audio'}
  assert report['splits']['train']['rows'] == 9


def test_custom_pattern_and_missing_splits(tmp_path):
  val = _clips('val', 2)
  write_csv(tmp_path / 'src' / 'val.csv', HEADER, [[r[k] for k in HEADER] for g in val for r in g])
  row = val[0][0]
  name = f'clips/{row["youtube_id"]}-{row["start_time"]}-{int(row["start_time"]) + 10}.mp3'
  frames = write_audio(tmp_path / 'src' / name, 0.5, 44100, 2)
  pattern = 'clips/{youtube_id}-{start_time}-{end_time}.mp3'
  builder = _build(tmp_path / 'src', tmp_path / 'tfds', audio_patterns=[pattern])
  records = read_split(builder, 'val')
  assert list(records) == [row['youtube_id']]
  assert records[row['youtube_id']]['audio'].shape == (resampled_length(frames, 44100),)
  report = builder.report.to_json()
  assert [w['kind'] for w in report['warnings']] == ['split_not_found'] * 2
  assert skipped(report, 'val') == {val[1][0]['youtube_id']: 'missing_file'}


@pytest.mark.parametrize('pattern', ['{split}/{video}.wav', '{split}/fixed.wav', '{youtube_id'])
def test_bad_patterns_are_refused(pattern):
  with pytest.raises(ValueError, match='pattern'):
    audiocaps.check_patterns([pattern])


def test_wrong_layout_is_reported_not_crashed(tmp_path):
  val = _clips('val', 2)
  write_csv(tmp_path / 'src' / 'val.csv', HEADER, [[r[k] for k in HEADER] for g in val for r in g])
  for group in val:  # Named as no default pattern expects.
    write_audio(tmp_path / 'src' / 'audio' / f'{group[0]["youtube_id"]}.wav', 0.2, 16000)
  builder = audiocaps.AudiocapsAac(
    data_dir=str(tmp_path / 'tfds'), options=build_report.BuildOptions(progress=False)
  )
  with pytest.raises(build_report.BuildError, match='nothing to build'):
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / 'src'))
    )
  report = build_report.load_report(builder.report_path)
  assert builder.report_path.name == '1.0.0.failed.build_report.json'
  assert [w['kind'] for w in report['splits']['val']['warnings']] == ['mostly_missing']
  assert set(skipped(report, 'val').values()) == {'missing_file'}
