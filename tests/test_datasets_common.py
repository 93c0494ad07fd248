"""Helpers for the real-dataset builder tests, and tests of their shared parts.

The helpers write audio trees in the real layouts: short clips (well under a
second) at several sample rates, channel counts and formats, plus broken
files. `read_split` reads a built split back into `{id: record}` with text
decoded.
"""

import csv
import math
import pathlib

import numpy as np
import pytest
import soundfile as sf

from aac_jax.data import build_report, custom_folder

TARGET_RATE = 16000


def write_audio(
  path: pathlib.Path,
  seconds: float,
  rate: int,
  channels: int = 1,
  subtype: str | None = None,
  silent: bool = False,
  seed: int = 0,
) -> int:
  """Writes a tone plus noise (format from the extension); returns the frame count."""
  path.parent.mkdir(parents=True, exist_ok=True)
  frames = int(round(seconds * rate))
  rng = np.random.default_rng(seed)
  t = np.arange(frames) / rate
  audio = 0.3 * np.sin(2 * np.pi * 440 * t)[:, None] + 0.05 * rng.normal(size=(frames, channels))
  audio = np.zeros_like(audio) if silent else audio
  sf.write(path, audio.astype(np.float32), rate, subtype=subtype)
  return frames


def write_corrupt(path: pathlib.Path) -> None:
  """Writes bytes that no decoder reads as audio."""
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(b'RIFF\x24\x00\x00\x00WAVEjunk' + bytes(range(256)) * 4)


def write_csv(path: pathlib.Path, header: list[str], rows: list[list], encoding='utf-8') -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open('w', newline='', encoding=encoding) as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)


def read_csv(path: pathlib.Path) -> list[dict]:
  with path.open(newline='', encoding='utf-8') as f:
    return list(csv.DictReader(f))


def resampled_length(frames: int, rate: int, target: int = TARGET_RATE) -> int:
  return math.ceil(frames * target / rate)


def _text(value) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def read_split(builder, split: str) -> dict[str, dict]:
  """Returns `{id: record}` of a built split; text fields decoded to str."""
  records = {}
  source = builder.as_data_source(split)
  for i in range(len(source)):
    record = dict(source[i])
    record['id'] = _text(record['id'])
    record['captions'] = [_text(c) for c in record['captions']]
    records[record['id']] = record
  return records


def skipped(report: dict, split: str) -> dict[str, str]:
  """`{id: reason}` of the clips a report says were left out of `split`."""
  return {entry['id']: entry['reason'] for entry in report['splits'][split]['skipped']}


# --- Tests of the shared parts. ---


def test_make_config_predefined_and_custom():
  default = custom_folder.CustomAac.make_config()
  assert default.name == '16000hz' and default.sample_rate == 16000
  assert (
    custom_folder.CustomAac.make_config(44100) is custom_folder.CustomAac.builder_configs['44100hz']
  )
  custom = custom_folder.CustomAac.make_config(8000, 'birds')
  assert (custom.name, custom.sample_rate) == ('birds', 8000)
  with pytest.raises(ValueError, match='22050'):
    custom_folder.CustomAac.make_config(16000, '22050hz')


def test_keep_captions_reports_empty_after_normalisation():
  report = build_report.SplitReport('train')
  kept = build_report.keep_captions(report, 'a.wav', [' A dog barks. ', '...', None, '!?'])
  assert kept == ['A dog barks.']
  assert [(e['index'], e['reason']) for e in report.skipped_captions] == [
    (1, 'empty_caption'),
    (2, 'empty_caption'),
    (3, 'empty_caption'),
  ]


def test_plan_clip_missing_file_and_no_captions(tmp_path):
  report = build_report.SplitReport('train')
  assert build_report.plan_clip(report, 'x', None, ['a cat'], True, looked_for='/x.wav') is None
  assert build_report.plan_clip(report, 'y', tmp_path, ['', '.'], True) is None
  clip = build_report.plan_clip(report, 'z', tmp_path, ['', 'ignored'], False)
  assert clip is not None and clip.captions == []
  assert report.skipped_by_reason() == {'missing_file': 1, 'no_captions': 1}
  assert report.clips_listed == 3 and len(report.skipped_captions) == 2


def test_report_json_and_summary(tmp_path):
  report = build_report.BuildReport('d', '16000hz', '1.0.0', 16000, '/src', strict=False)
  split = report.split('train')
  split.clips_listed, split.clips_written, split.seconds = 3, 2, 0.5
  split.skip('b.wav', 'unreadable', 'bad header')
  split.skip('a.wav', 'duplicate_row', 'line 4 repeats line 2')
  split.clipped['a.wav'] = 7
  report.write(tmp_path / 'r.json')
  loaded = build_report.load_report(tmp_path / 'r.json')
  train = loaded['splits']['train']
  assert train['skipped_by_reason'] == {'duplicate_row': 1, 'unreadable': 1}
  assert (train['clips_skipped'], train['rows_skipped']) == (1, 1)
  assert train['clips_per_second'] == 6.0  # 2 written + 1 undecodable in 0.5 s.
  assert train['clipped_samples'] == 7 and loaded['sample_rate'] == 16000
  line = split.summary_line()
  assert '3 clips listed, 2 written (0 captions), 1 skipped (unreadable 1)' in line
  assert '1 rows skipped (duplicate_row 1)' in line and '6.0 clips/s' in line
