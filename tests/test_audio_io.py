"""Tests for aac_jax.data.audio_io: decoding, mixdown, resampling, int16, bad files."""

import math
import os
import unicodedata

import numpy as np
import pytest
import soundfile as sf
from test_datasets_common import write_audio, write_corrupt

from aac_jax.data import audio_io, text_files


@pytest.mark.parametrize(
  'name,rate,channels,subtype',
  [
    ('a.wav', 44100, 2, 'PCM_16'),
    ('b.wav', 8000, 1, 'FLOAT'),
    ('c.flac', 22050, 1, None),
    ('d.ogg', 48000, 2, None),
    ('e.mp3', 32000, 1, None),
    ('f.wav', 16000, 3, 'PCM_24'),
  ],
)
def test_formats_rates_channels(tmp_path, name, rate, channels, subtype):
  frames = write_audio(tmp_path / name, 0.37, rate, channels, subtype)
  clip = audio_io.load_clip(tmp_path / name, 16000)
  assert clip.audio.dtype == np.int16 and clip.audio.ndim == 1
  assert clip.audio.size == math.ceil(frames * 16000 / rate)
  assert (clip.source_rate, clip.source_channels) == (rate, channels)
  # A 0.3 tone plus a little noise: the peak survives every codec.
  assert 0.25 < np.abs(clip.audio).max() / 32768 < 0.5


def test_int16_wav_at_target_rate_is_exact(tmp_path):
  samples = np.random.default_rng(0).integers(-32768, 32768, size=1000).astype(np.int16)
  sf.write(tmp_path / 'x.wav', samples, 16000, subtype='PCM_16')
  clip = audio_io.load_clip(tmp_path / 'x.wav', 16000)
  np.testing.assert_array_equal(clip.audio, samples)
  assert clip.clipped == 0


def test_mono_mixdown_averages_channels(tmp_path):
  left = np.random.default_rng(1).uniform(-0.5, 0.5, size=800).astype(np.float32)
  stereo = np.stack([left, np.zeros_like(left)], axis=1)
  sf.write(tmp_path / 's.wav', stereo, 16000, subtype='FLOAT')
  clip = audio_io.load_clip(tmp_path / 's.wav', 16000)
  expected = np.round(left.astype(np.float64) / 2 * 32768).astype(np.int16)
  np.testing.assert_array_equal(clip.audio, expected)


def test_resample_length_and_content():
  t = np.arange(12345) / 44100
  tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
  for target in (8000, 16000, 22050):
    out = audio_io.resample(tone, 44100, target)
    # librosa's convention (`fix_length` to ceil), which soxr_hq output follows.
    assert out.shape == (math.ceil(12345 * target / 44100),)
    expected = 0.5 * np.sin(2 * np.pi * 440 * np.arange(out.size) / target)
    middle = slice(200, -200)  # Away from the filter's edge effects.
    np.testing.assert_allclose(out[middle], expected[middle], atol=2e-3)


def test_clipping_is_counted(tmp_path):
  audio = np.array([0.0, 0.5, 1.0, 1.5, -1.0, -1.2, 0.999], np.float32)
  sf.write(tmp_path / 'loud.wav', audio, 16000, subtype='FLOAT')
  clip = audio_io.load_clip(tmp_path / 'loud.wav', 16000)
  assert clip.clipped == 3  # 1.0 and 1.5 above 32767, -1.2 below -32768.
  assert clip.audio.tolist()[2:6] == [32767, 32767, -32768, -32768]


def _truncate(path, keep: float) -> None:
  data = path.read_bytes()
  path.write_bytes(data[: int(len(data) * keep)])


def test_bad_files_give_reasons(tmp_path):
  write_audio(tmp_path / 'cut.wav', 0.5, 16000)
  _truncate(tmp_path / 'cut.wav', 0.6)
  write_audio(tmp_path / 'cut.flac', 0.5, 16000)
  _truncate(tmp_path / 'cut.flac', 0.5)
  write_corrupt(tmp_path / 'junk.wav')
  write_audio(tmp_path / 'quiet.flac', 0.2, 22050, channels=2, silent=True)
  sf.write(tmp_path / 'empty.wav', np.zeros((0, 1), np.float32), 16000)
  nan = np.full(100, 0.1, np.float32)
  nan[50] = np.nan
  sf.write(tmp_path / 'nan.wav', nan, 16000, subtype='FLOAT')
  reasons = {
    name: audio_io.decode_file(str(tmp_path / name), 16000).reason
    for name in ('cut.wav', 'cut.flac', 'junk.wav', 'quiet.flac', 'empty.wav', 'nan.wav', 'no.wav')
  }
  assert reasons == {
    'cut.wav': 'truncated',
    'cut.flac': 'unreadable',
    'junk.wav': 'unreadable',
    'quiet.flac': 'silent_audio',
    'empty.wav': 'empty_audio',
    'nan.wav': 'nan_samples',
    'no.wav': 'missing_file',
  }
  assert audio_io.decode_file(str(tmp_path / 'junk.wav'), 16000).audio is None


@pytest.mark.parametrize('worker_type,num_workers', [('thread', 2), ('process', 2), ('thread', 0)])
def test_clip_decoder_keeps_order(tmp_path, worker_type, num_workers):
  files = []
  for i, rate in enumerate([8000, 44100, 22050, 16000, 48000]):
    write_audio(tmp_path / f'{i}.wav', 0.1 + 0.05 * i, rate, seed=i)
    files.append((f'k{i}', tmp_path / f'{i}.wav'))
  files.insert(2, ('gone', tmp_path / 'gone.wav'))
  decoder = audio_io.ClipDecoder(16000, num_workers, progress=False, worker_type=worker_type)
  try:
    results = list(decoder.decode(files))
  finally:
    decoder.close()
  assert [key for key, _ in results] == [key for key, _ in files]
  assert results[2][1].reason == 'missing_file'
  for (key, path), (_, decoded) in zip(files, results, strict=True):
    if key != 'gone':
      np.testing.assert_array_equal(decoded.audio, audio_io.load_clip(path, 16000).audio)


def test_read_csv_rows_quoting_bom_and_latin1(tmp_path):
  text = 'file_name,caption_1\n"a, b.wav","one, two"\n"c.wav","multi\nline"\n\n'
  (tmp_path / 'u.csv').write_bytes(b'\xef\xbb\xbf' + text.encode('utf-8'))
  table = text_files.read_csv_rows(tmp_path / 'u.csv')
  assert table.warning == '' and table.columns == ['file_name', 'caption_1']
  assert [(line, r['file_name'], r['caption_1']) for line, r in table.rows] == [
    (2, 'a, b.wav', 'one, two'),
    (4, 'c.wav', 'multi\nline'),
  ]
  (tmp_path / 'l.csv').write_bytes('file_name,keywords\nCafé.wav,a;b\n'.encode('iso-8859-1'))
  table = text_files.read_csv_rows(tmp_path / 'l.csv')
  assert table.rows[0][1]['file_name'] == 'Café.wav'
  assert 'at byte 22 (line 2, byte 0xe9)' in table.warning and 'iso-8859-1' in table.warning


def test_file_finder_matches_nfd_names(tmp_path):
  nfd = unicodedata.normalize('NFD', 'Café crème.wav')
  (tmp_path / nfd).write_bytes(b'x')
  finder = audio_io.FileFinder(tmp_path)
  assert finder.find(tmp_path, unicodedata.normalize('NFC', 'Café crème.wav')) == tmp_path / nfd
  assert finder.find(tmp_path, 'other.wav') is None


def test_file_finder_refuses_paths_outside_the_root(tmp_path):
  root, outside = tmp_path / 'root', tmp_path / 'outside'
  (root / 'sub').mkdir(parents=True)
  outside.mkdir()
  (outside / 's.wav').write_bytes(b'x')
  (root / 'a.wav').write_bytes(b'x')
  (root / 'out.wav').symlink_to(outside / 's.wav')
  (root / 'in.wav').symlink_to(root / 'a.wav')
  os.mkfifo(root / 'p.wav')
  finder = audio_io.FileFinder(root)
  assert finder.find(root / 'sub', '../a.wav') == root / 'sub' / '../a.wav'
  assert finder.find(root, 'in.wav') == root / 'in.wav'
  for name in ['../outside/s.wav', str(outside / 's.wav'), 'sub/../../outside/s.wav', 'out.wav']:
    with pytest.raises(audio_io.AudioError) as error:
      finder.find(root, name)
    assert error.value.reason == audio_io.OUTSIDE_SOURCE_DIR and repr(name) in error.value.detail
  with pytest.raises(audio_io.AudioError, match='fifo') as error:
    finder.find(root, 'p.wav')
  assert error.value.reason == audio_io.NOT_A_REGULAR_FILE
  assert audio_io.FileFinder(root, allow_outside_symlinks=True).find(root, 'out.wav') == (
    root / 'out.wav'
  )


def test_devices_and_fifos_are_never_opened(tmp_path):
  os.mkfifo(tmp_path / 'pipe.wav')  # Opening it for reading would block: it must not be.
  for path, kind in [(tmp_path / 'pipe.wav', 'fifo'), ('/dev/zero', 'character device')]:
    decoded = audio_io.decode_file(str(path), 16000)
    assert decoded.reason == audio_io.NOT_A_REGULAR_FILE and kind in decoded.detail
  assert audio_io.decode_file(str(tmp_path), 16000).reason == audio_io.NOT_A_REGULAR_FILE


def test_length_limit_skips_or_cuts(tmp_path):
  write_audio(tmp_path / 'l.wav', 3.0, 8000)
  skip = audio_io.decode_file(str(tmp_path / 'l.wav'), 16000, audio_io.LengthLimit(1.0))
  assert skip.reason == audio_io.TOO_LONG and skip.detail.startswith('3.0 s, longer than')
  cut = audio_io.decode_file(str(tmp_path / 'l.wav'), 16000, audio_io.LengthLimit(1.0, cut=True))
  whole = audio_io.load_clip(tmp_path / 'l.wav', 16000).audio
  assert cut.cut_from_seconds == 3.0 and cut.audio.shape == (16000,)
  # The first second, resampled on its own: equal away from the cut's edge.
  np.testing.assert_allclose(cut.audio[:15000], whole[:15000], atol=2)
  with pytest.raises(ValueError, match='positive'):
    audio_io.LengthLimit(0)


def test_decode_bytes_falls_back_per_line():
  data = 'a,café\n'.encode() + b'b,caf\xe9\n' + '\ufeffc,été\n'.encode()
  text, warning = text_files.decode_bytes(b'\xef\xbb\xbf' + data, 'm.csv')
  assert text == 'a,café\nb,café\n\ufeffc,été\n'
  assert warning.startswith('m.csv: not valid UTF-8 at byte 16 (line 2, byte 0xe9); 1 of 3 lines')
  assert text_files.decode_bytes('\ufeffa,é\n'.encode(), 'x') == ('a,é\n', '')
