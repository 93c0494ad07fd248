"""Dataset folders written by someone else: nothing outside is read, nothing silently changed.

Every builder (custom folder, Clotho, AudioCaps) gets lists naming files
outside the source folder (`..`, absolute paths, symlinks pointing out), a
fifo, non-UTF-8 bytes and malformed rows. The tests check the report entry
for each, and that no file outside the source folder was opened: every
open at the boundary (`open`, `io.open`, `os.open`, soundfile, audioread) is
recorded while the builder runs.
"""

import builtins
import io
import json
import os
import pathlib

import pytest
import soundfile
import tensorflow_datasets as tfds
from test_datasets_common import read_split, write_audio

from aac_jax.data import audiocaps, build_report, clotho, custom_folder

OUTSIDE_DETAIL = '{name!r} leads outside the source folder {root}: not read'
SYMLINK_DETAIL = (
  '{name!r} resolves through a symlink to {target}, outside the source folder {root}: not read '
  '(--allow_outside_symlinks follows such links)'
)


@pytest.fixture
def opened(monkeypatch) -> list[str]:
  """Records the path of every file opened while the test runs."""
  import audioread

  paths = []
  real_open, real_os_open, real_audio_open = builtins.open, os.open, audioread.audio_open

  def record(file):
    if isinstance(file, str | bytes | os.PathLike):
      paths.append(os.path.abspath(os.fsdecode(file)))

  def recording_open(file, *args, **kwargs):
    record(file)
    return real_open(file, *args, **kwargs)

  def recording_os_open(path, *args, **kwargs):
    record(path)
    return real_os_open(path, *args, **kwargs)

  def recording_audio_open(path, *args, **kwargs):
    record(path)
    return real_audio_open(path, *args, **kwargs)

  class RecordingSoundFile(soundfile.SoundFile):
    def __init__(self, file, *args, **kwargs):
      record(file)
      super().__init__(file, *args, **kwargs)

  monkeypatch.setattr(builtins, 'open', recording_open)
  monkeypatch.setattr(io, 'open', recording_open)
  monkeypatch.setattr(os, 'open', recording_os_open)
  monkeypatch.setattr(audioread, 'audio_open', recording_audio_open)
  monkeypatch.setattr(soundfile, 'SoundFile', RecordingSoundFile)
  return paths


def _opened_inside(paths: list[str], folder: pathlib.Path) -> list[str]:
  """The recorded paths that are (or resolve to) files in `folder`."""
  real = os.path.realpath(folder)
  return [p for p in paths if os.path.realpath(p).startswith(real + os.sep)]


def _build(cls, source, data_dir, **kwargs):
  option_names = {'strict', 'max_seconds', 'long_clips', 'allow_outside_symlinks'}
  options = {k: kwargs.pop(k) for k in list(kwargs) if k in option_names}
  builder = cls(
    data_dir=str(data_dir),
    options=build_report.BuildOptions(progress=False, num_workers=0, **options),
    **kwargs,
  )
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(source)))
  return builder


def _entries(builder, split: str) -> dict[str, tuple[str, str]]:
  """`{id: (reason, detail)}` of what the report says was left out of `split`."""
  report = build_report.load_report(builder.report_path)
  return {e['id']: (e['reason'], e['detail']) for e in report['splits'][split]['skipped']}


def _outside_tree(tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
  """`(source, outside)`: a source folder and, next to it, files it must not read."""
  source, outside = tmp_path / 'src', tmp_path / 'outside'
  write_audio(outside / 'secret.wav', 0.3, 16000, seed=1)
  write_audio(outside / 'dir' / 'x.wav', 0.3, 16000, seed=2)
  write_audio(source / 'good.wav', 0.3, 16000)
  write_audio(source / 'good2.wav', 0.3, 16000, seed=3)
  (source / 'link.wav').symlink_to(outside / 'secret.wav')
  (source / 'linkdir').symlink_to(outside / 'dir', target_is_directory=True)
  (source / 'inside_link.wav').symlink_to(source / 'good.wav')
  os.mkfifo(source / 'pipe.wav')
  return source, outside


def _write_manifest(source: pathlib.Path, outside: pathlib.Path) -> None:
  files = [
    'good.wav',
    str(source / 'good2.wav'),  # Absolute, but inside: fine.
    'inside_link.wav',  # A symlink inside the folder: fine.
    '../outside/secret.wav',
    str(outside / 'secret.wav'),
    'sub/../../outside/secret.wav',
    '../../../../etc/passwd',
    'link.wav',
    'linkdir/x.wav',
    'pipe.wav',
  ]
  rows = ['file,caption'] + [f'{json.dumps(f)},a sound number {i}' for i, f in enumerate(files)]
  (source / 'manifest.csv').write_text('\n'.join(rows) + '\n')


def test_custom_folder_reads_nothing_outside(tmp_path, opened):
  source, outside = _outside_tree(tmp_path)
  _write_manifest(source, outside)
  opened.clear()  # Only what the builder opens counts, not the files written above.
  builder = _build(custom_folder.CustomAac, source, tmp_path / 'tfds')
  assert set(read_split(builder, 'train')) == {
    'good.wav',
    str(source / 'good2.wav'),
    'inside_link.wav',
  }
  entries = _entries(builder, 'train')
  lexical = [
    '../outside/secret.wav',
    str(outside / 'secret.wav'),
    'sub/../../outside/secret.wav',
    '../../../../etc/passwd',
  ]
  for name in lexical:
    assert entries[name] == (
      'outside_source_dir',
      OUTSIDE_DETAIL.format(name=name, root=source),
    )
  assert entries['link.wav'] == (
    'outside_source_dir',
    SYMLINK_DETAIL.format(name='link.wav', target=outside / 'secret.wav', root=source),
  )
  assert entries['linkdir/x.wav'] == (
    'outside_source_dir',
    SYMLINK_DETAIL.format(name='linkdir/x.wav', target=outside / 'dir' / 'x.wav', root=source),
  )
  assert entries['pipe.wav'] == (
    'not_a_regular_file',
    'a fifo (named pipe), not a regular file: not read',
  )
  assert len(entries) == 7
  report = build_report.load_report(builder.report_path)
  assert report['splits']['train']['warnings'] == [
    {
      'kind': 'mostly_outside',
      'detail': f'6 of 10 clips lead outside {source}: an audio folder linked from elsewhere? '
      '--allow_outside_symlinks follows symlinks',
    }
  ]
  assert not _opened_inside(opened, outside)
  assert not [p for p in opened if p.startswith('/etc/')]
  assert str(source / 'good.wav') in opened  # The recorder sees the audio opened.
  assert str(source / 'pipe.wav') not in opened


def test_strict_build_fails_on_a_path_outside(tmp_path, opened):
  source, outside = _outside_tree(tmp_path)
  _write_manifest(source, outside)
  opened.clear()
  with pytest.raises(build_report.BuildError, match="'outside_source_dir': 6"):
    _build(custom_folder.CustomAac, source, tmp_path / 'tfds', strict=True)
  assert not _opened_inside(opened, outside)


def test_outside_symlinks_followed_only_when_allowed(tmp_path, opened):
  source, outside = _outside_tree(tmp_path)
  _write_manifest(source, outside)
  opened.clear()
  builder = _build(custom_folder.CustomAac, source, tmp_path / 'tfds', allow_outside_symlinks=True)
  assert {'link.wav', 'linkdir/x.wav'} <= set(read_split(builder, 'train'))
  entries = _entries(builder, 'train')
  assert entries['../outside/secret.wav'][0] == 'outside_source_dir'  # `..` never.
  assert _opened_inside(opened, outside) == [
    str(source / 'link.wav'),
    str(source / 'linkdir/x.wav'),
  ]


def _latin1_check(warning: str, name: str, data: bytes, lines: str) -> None:
  offset = data.index(b'\xe9')  # The one Latin-1 byte: every other 'é' is UTF-8.
  line = data.count(b'\n', 0, offset) + 1
  assert warning == (
    f'{name}: not valid UTF-8 at byte {offset} (line {line}, byte 0xe9); {lines} read as '
    'iso-8859-1 (lines ' + str(line) + '), the others as UTF-8. Save the file as UTF-8 to be '
    'sure of its text.'
  )


def test_clotho_paths_outside_and_latin1_byte(tmp_path, opened):
  source, outside = tmp_path / 'clotho', tmp_path / 'outside'
  write_audio(outside / 'secret.wav', 0.3, 16000, seed=1)
  folder = source / 'clotho_audio_files' / 'development'
  write_audio(folder / 'été.wav', 0.3, 16000)
  write_audio(folder / 'b.wav', 0.3, 16000, seed=2)
  (folder / 'link.wav').symlink_to(outside / 'secret.wav')
  five = lambda text: ','.join([text] * 5)  # noqa: E731
  data = (
    'file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n'
    f'été.wav,{five("a bell rings in the café")}\n'.encode()
    + b'b.wav,'
    + b'a cup in a caf\xe9,' * 4
    + b'a cup\n'
    + f'../../../outside/secret.wav,{five("x")}\n'.encode()
    + f'{outside / "secret.wav"},{five("x")}\n'.encode()
    + f'link.wav,{five("x")}\n'.encode()
    + b'short.wav,one caption\n'
  )
  (source / 'clotho_captions_development.csv').write_bytes(data)
  opened.clear()
  builder = _build(clotho.ClothoAac, source, tmp_path / 'tfds')
  records = read_split(builder, 'development')
  assert records['été.wav']['captions'] == ['a bell rings in the café'] * 5
  assert records['b.wav']['captions'] == ['a cup in a café'] * 4 + ['a cup']
  entries = _entries(builder, 'development')
  dev = folder
  for name in ['../../../outside/secret.wav', str(outside / 'secret.wav')]:
    assert entries[name] == ('outside_source_dir', OUTSIDE_DETAIL.format(name=name, root=source))
  assert entries['link.wav'] == (
    'outside_source_dir',
    SYMLINK_DETAIL.format(name='link.wav', target=outside / 'secret.wav', root=source),
  )
  assert entries['short.wav'] == (
    'missing_caption_field',
    'line 7: no field caption_2, caption_3, caption_4, caption_5 (a short row)',
  )
  report = build_report.load_report(builder.report_path)
  warnings = {w['kind']: w['detail'] for w in report['splits']['development']['warnings']}
  path = source / 'clotho_captions_development.csv'
  _latin1_check(warnings['encoding'], str(path), data, '1 of 7 lines')
  assert not _opened_inside(opened, outside)
  assert str(dev / 'été.wav') in opened


def test_audiocaps_paths_outside_and_latin1_byte(tmp_path, opened):
  source, outside = tmp_path / 'audiocaps', tmp_path / 'outside'
  write_audio(outside / 'secret_30.flac', 0.3, 16000, seed=1)
  write_audio(source / 'train' / 'good_30.flac', 0.3, 16000)
  (source / 'train' / 'lnk_30.flac').symlink_to(outside / 'secret_30.flac')
  data = (
    b'audiocap_id,youtube_id,start_time,caption\n'
    + '1,good,30,a bell rings in the café\n'.encode()
    + b'2,good,30,a cup in a caf\xe9\n'
    + b'3,../../outside/secret,30,a secret\n'
    + b'4,lnk,30,a link\n'
    + b'5,good,30\n'
  )
  (source / 'train.csv').write_bytes(data)
  opened.clear()
  builder = _build(audiocaps.AudiocapsAac, source, tmp_path / 'tfds')
  records = read_split(builder, 'train')
  assert records['good']['captions'] == ['a bell rings in the café', 'a cup in a café']
  entries = _entries(builder, 'train')
  name = 'train/../../outside/secret_30.flac'
  assert entries['../../outside/secret'] == (
    'outside_source_dir',
    OUTSIDE_DETAIL.format(name=name, root=source),
  )
  assert entries['lnk'] == (
    'outside_source_dir',
    SYMLINK_DETAIL.format(name='train/lnk_30.flac', target=outside / 'secret_30.flac', root=source),
  )
  assert entries['good'] == ('missing_caption_field', 'line 6: no field caption (a short row)')
  report = build_report.load_report(builder.report_path)
  warnings = {w['kind']: w['detail'] for w in report['splits']['train']['warnings']}
  _latin1_check(warnings['encoding'], str(source / 'train.csv'), data, '1 of 6 lines')
  assert not _opened_inside(opened, outside)


def test_audio_pattern_leading_outside_is_refused():
  for pattern in ['../audio/{youtube_id}.wav', '/mnt/audio/{youtube_id}.wav']:
    with pytest.raises(ValueError, match='leads outside the source folder'):
      audiocaps.check_patterns([pattern])


def test_custom_csv_latin1_byte_and_bad_rows(tmp_path, opened):
  source = tmp_path / 'src'
  write_audio(source / 'été.wav', 0.3, 16000)
  write_audio(source / 'b.wav', 0.3, 16000, seed=1)
  write_audio(source / 'long.wav', 2.0, 16000, seed=2)
  write_audio(source / 't.wav', 0.3, 16000, seed=3)
  data = (
    b'file,caption,split\n'
    + 'été.wav,a bell rings in the café,train\n'.encode()
    + b'b.wav,a cup in a caf\xe9,train\n'
    + b'b.wav,a dog,barks,loudly\n'  # Extra fields: no split "barks" or "loudly".
    + b'b.wav\n'  # No caption field at all.
    + b'long.wav,a long clip,train\n'
    + b't.wav,,test\n'
  )
  (source / 'manifest.csv').write_bytes(data)
  opened.clear()
  builder = _build(custom_folder.CustomAac, source, tmp_path / 'tfds', max_seconds=1.0)
  records = read_split(builder, 'train')
  assert records['été.wav']['captions'] == ['a bell rings in the café']
  assert records['b.wav']['captions'] == ['a cup in a café']
  report = build_report.load_report(builder.report_path)
  assert set(report['splits']) == {'train', 'test'}  # No phantom split.
  skipped = report['splits']['train']['skipped']
  assert skipped[:2] == [
    {
      'id': 'b.wav',
      'reason': 'bad_row',
      'detail': 'line 4: 1 fields more than the header (unquoted comma?)',
    },
    {
      'id': 'b.wav',
      'reason': 'missing_caption_field',
      'detail': 'line 5: no caption field (split train has captions: is the row short of fields?)',
    },
  ]
  entries = _entries(builder, 'train')
  assert entries['long.wav'] == (
    'too_long',
    '2.0 s, longer than the maximum 1 s (raise it with --max_seconds, or keep the first part '
    'with --long_clips cut)',
  )
  warning = report['warnings'][0]
  assert warning['kind'] == 'encoding'
  _latin1_check(warning['detail'], str(source / 'manifest.csv'), data, '1 of 7 lines')
  assert str(source / 'long.wav') in opened  # Opened for its header only: never decoded whole.


def test_long_clips_cut(tmp_path):
  source = tmp_path / 'src'
  write_audio(source / 'long.wav', 2.0, 16000)
  (source / 'manifest.csv').write_text('file,caption\nlong.wav,a long clip\n')
  builder = _build(
    custom_folder.CustomAac, source, tmp_path / 'tfds', max_seconds=0.5, long_clips='cut'
  )
  assert read_split(builder, 'train')['long.wav']['audio'].shape == (8000,)
  report = build_report.load_report(builder.report_path)
  assert report['splits']['train']['warnings'] == [
    {'kind': 'cut', 'detail': 'long.wav: kept the first 0.5 s of 2.0 s (--long_clips cut)'}
  ]


def test_custom_jsonl_latin1_byte_and_missing_caption(tmp_path):
  source = tmp_path / 'src'
  write_audio(source / 'été.wav', 0.3, 16000)
  write_audio(source / 'b.wav', 0.3, 16000, seed=1)
  write_audio(source / 'c.wav', 0.3, 16000, seed=2)
  data = (
    json.dumps(
      {'file': 'été.wav', 'caption': 'a bell rings in the café'}, ensure_ascii=False
    ).encode()
    + b'\n{"file": "b.wav", "captions": ["a cup in a caf\xe9"]}\n'
    + b'{"file": "c.wav"}\n'
  )
  (source / 'manifest.jsonl').write_bytes(data)
  builder = _build(custom_folder.CustomAac, source, tmp_path / 'tfds')
  records = read_split(builder, 'train')
  assert records['été.wav']['captions'] == ['a bell rings in the café']
  assert records['b.wav']['captions'] == ['a cup in a café']
  assert _entries(builder, 'train') == {
    'c.wav': (
      'missing_caption_field',
      'line 3: no caption field (split train has captions: is the row short of fields?)',
    )
  }
  report = build_report.load_report(builder.report_path)
  _latin1_check(
    report['warnings'][0]['detail'], str(source / 'manifest.jsonl'), data, '1 of 3 lines'
  )


def test_manifest_without_caption_column_warns(tmp_path):
  source = tmp_path / 'src'
  write_audio(source / 'a.wav', 0.3, 16000)
  (source / 'manifest.csv').write_text('file,split\na.wav,train\n')
  builder = _build(custom_folder.CustomAac, source, tmp_path / 'tfds')
  assert read_split(builder, 'train')['a.wav']['captions'] == []
  report = build_report.load_report(builder.report_path)
  assert report['warnings'] == [
    {
      'kind': 'no_caption_column',
      'detail': 'manifest.csv has no caption column (caption, caption_1, ...; JSONL "caption" '
      'or "captions"): every split is caption-less, for inference only',
    }
  ]
