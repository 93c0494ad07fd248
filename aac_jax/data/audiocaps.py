"""AudioCaps v1 from a local copy, as the TFDS dataset `audiocaps_aac`.

Expected layout of the directory given as `manual_dir`:

  {train,val,test}.csv   audiocap_id,youtube_id,start_time,caption
                         (the files of github.com/cdjkim/audiocaps `dataset/`)
  the audio, found by the first of `audio_patterns` that names a file:
    {split}/{youtube_id}_{start_time}.flac   (e.g. aac-datasets downloads)
    {split}/Y{youtube_id}.wav                (AudioSet-style names)
    Y{youtube_id}.wav                        (all clips in one folder)

Patterns are relative to `manual_dir` and may use `{split}` (train, val or
test), `{youtube_id}`, `{start_time}` (as written in the CSV) and
`{end_time}` (start + 10 s).

TFDS splits, named as the CSVs: `train` (one caption per clip), `val` and
`test` (five captions per clip, grouped by clip: youtube_id and start
time). The record id is the youtube_id (`{youtube_id}_{start_time}` where a
youtube_id has several start times in one split). Extras: `youtube_id`,
`start_time` (int32 seconds) and `audiocap_ids` (int64, one per caption).
Audio comes from YouTube, so every copy misses clips: each is reported.
A path that leads outside `manual_dir` (a youtube_id with `../`, a symlink
pointing out) is skipped unread (`outside_source_dir`); CSV lines that are
not UTF-8 are read as ISO-8859-1 with a warning naming the byte.
"""

import collections
import pathlib
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds

from aac_jax.data import audio_io, build_report, text_files
from aac_jax.data.text import normalize_caption

NAME = 'audiocaps_aac'
SPLITS = ('train', 'val', 'test')
DEFAULT_AUDIO_PATTERNS = (
  '{split}/{youtube_id}_{start_time}.flac',
  '{split}/Y{youtube_id}.wav',
  'Y{youtube_id}.wav',
)
CLIP_SECONDS = 10
_FIELDS = ('audiocap_id', 'youtube_id', 'start_time', 'caption')


def check_patterns(patterns: Sequence[str]) -> tuple[str, ...]:
  """Returns the patterns if each formats with the known fields; else raises ValueError."""
  if not patterns:
    raise ValueError('no audio file pattern given')
  for pattern in patterns:
    try:
      name = pattern.format(split='s', youtube_id='Y', start_time='0', end_time='10')
    except (KeyError, IndexError, ValueError) as error:
      raise ValueError(
        f'bad audio pattern {pattern!r} ({error!r}); fields: '
        '{split}, {youtube_id}, {start_time}, {end_time}'
      ) from error
    if 'Y' not in name:
      raise ValueError(f'audio pattern {pattern!r} does not use {{youtube_id}}')
    if pathlib.PurePath(name).is_absolute() or '..' in pathlib.PurePath(name).parts:
      raise ValueError(
        f'audio pattern {pattern!r} leads outside the source folder: patterns are relative '
        'to it (point --source_dir at a folder holding both the CSVs and the audio)'
      )
  return tuple(patterns)


def _row_problem(row: dict) -> tuple[str, str]:
  """Returns `(reason, detail)` of a malformed CSV row, `('', '')` for a good one."""
  bad = build_report.BAD_ROW
  if None in row:
    return bad, f'{len(row[None])} fields more than the header (unquoted comma?)'
  missing = [field for field in _FIELDS if row.get(field) is None]
  if missing == ['caption']:
    return build_report.MISSING_CAPTION_FIELD, 'no field caption (a short row)'
  if missing:
    return bad, f'no field {", ".join(missing)}'
  if not row['youtube_id'].strip():
    return bad, 'empty youtube_id'
  for field in ('audiocap_id', 'start_time'):
    if not row[field].strip().isdigit():
      return bad, f'{field} {row[field]!r} is not a whole number'
  return '', ''


class AudiocapsAac(build_report.ReportingBuilder):
  """AudioCaps v1 captions and the audio a user downloaded."""

  name = NAME
  DESCRIPTION = 'AudioCaps v1: captions for 10 s AudioSet (YouTube) clips.'
  HOMEPAGE = 'https://audiocaps.github.io'
  CITATION = (
    '@inproceedings{kim2019audiocaps, title={AudioCaps: Generating Captions for '
    'Audios in The Wild}, author={Kim, Chris Dongjoo and Kim, Byeongchang and '
    'Lee, Hyunmin and Kim, Gunhee}, booktitle={NAACL-HLT}, year={2019}}'
  )
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    'Put train.csv, val.csv and test.csv from https://github.com/cdjkim/audiocaps '
    '(dataset/) in a folder, and the audio you downloaded from YouTube under it, '
    'named as one of the audio patterns (default {split}/{youtube_id}_{start_time}.flac).'
  )

  def __init__(self, *, audio_patterns: Sequence[str] = DEFAULT_AUDIO_PATTERNS, **kwargs):
    """Creates the builder.

    Args:
      audio_patterns: where a clip's audio may be, relative to the source
        directory, tried in order (see the module docstring).
      **kwargs: `ReportingBuilder` arguments (data_dir, config, options).
    """
    self.audio_patterns = check_patterns(audio_patterns)
    super().__init__(**kwargs)
    self._original_state['audio_patterns'] = self.audio_patterns

  def _extra_features(self) -> dict:
    return {
      'youtube_id': tfds.features.Text(),
      'start_time': tfds.features.Tensor(shape=(), dtype=np.int32),
      'audiocap_ids': tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.int64)),
    }

  def _plan_splits(self, source: pathlib.Path) -> dict[str, list[build_report.Clip]]:
    plans = {}
    for split in SPLITS:
      path = source / f'{split}.csv'
      if not path.is_file():
        self.report.warn('split_not_found', f'{split}: no {path}; not built')
        continue
      table = text_files.read_csv_rows(path)
      report = self.report.split(split)
      self.warn_encoding(table.warning, split)
      groups = self._group_rows(report, table.rows)
      plans[split] = self._plan_clips(self.file_finder(source), split, report, groups)
    return plans

  @staticmethod
  def _group_rows(report: build_report.SplitReport, rows: list[tuple[int, dict]]) -> dict:
    """Returns `{(youtube_id, start_time): [(audiocap_id, caption), ...]}` in CSV order."""
    groups = collections.defaultdict(list)
    first_line: dict[int, int] = {}
    for line, row in rows:
      report.rows += 1
      reason, problem = _row_problem(row)
      clip_name = (row.get('youtube_id') or '').strip() or f'line {line}'
      if reason:
        report.skip(clip_name, reason, f'line {line}: {problem}')
        continue
      audiocap_id = int(row['audiocap_id'])
      if audiocap_id in first_line:
        detail = f'line {line}: audiocap_id {audiocap_id} repeats line {first_line[audiocap_id]}'
        report.skip(clip_name, build_report.DUPLICATE_ROW, detail)
        continue
      first_line[audiocap_id] = line
      key = (row['youtube_id'].strip(), row['start_time'].strip())
      groups[key].append((audiocap_id, row['caption']))
    return groups

  def _find_audio(self, finder: audio_io.FileFinder, split: str, youtube_id: str, start: str):
    """Returns `(path or None, where it was looked for)` for one clip.

    Raises:
      AudioError: a candidate leads outside the source folder, or is not a
        regular file.
    """
    fields = {'split': split, 'youtube_id': youtube_id, 'start_time': start}
    fields['end_time'] = str(int(start) + CLIP_SECONDS)
    names = [pattern.format(**fields) for pattern in self.audio_patterns]
    looked_for = ' | '.join(str(finder.root / name) for name in names)
    for name in names:
      found = finder.find_path(finder.root / name, name)
      if found is not None:
        return found, looked_for
    return None, looked_for

  def _plan_clips(
    self, finder: audio_io.FileFinder, split: str, report: build_report.SplitReport, groups: dict
  ) -> list[build_report.Clip]:
    starts_per_id = collections.Counter(youtube_id for youtube_id, _ in groups)
    clips = []
    for (youtube_id, start), annotations in groups.items():
      clip_id = youtube_id if starts_per_id[youtube_id] == 1 else f'{youtube_id}_{start}'
      path, looked_for, refused = None, '', None
      try:
        path, looked_for = self._find_audio(finder, split, youtube_id, start)
      except audio_io.AudioError as error:
        refused = error
      captions = [caption for _, caption in annotations]
      kept_ids = [aid for aid, caption in annotations if normalize_caption(caption)]
      extras = {'youtube_id': youtube_id, 'start_time': int(start), 'audiocap_ids': kept_ids}
      clip = build_report.plan_clip(
        report, clip_id, path, captions, True, extras, looked_for, refused
      )
      if clip is not None:
        clips.append(clip)
    return clips
