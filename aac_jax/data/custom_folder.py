"""Your own audio and captions, as the TFDS dataset `custom_aac`.

The directory given as `manual_dir` holds audio files (in any sub-folders,
any format `audio_io` reads) and a manifest, `manifest.csv` or
`manifest.jsonl` unless another is named:

- CSV (UTF-8, header row): a `file` (or `file_name`) column with paths
  relative to the directory, caption columns (every column whose name
  starts with `caption`: `caption`, or `caption_1`, `caption_2`, ...), and an
  optional `split` column (default `train`).
- JSONL: one object per line, `{"file": "a/b.wav", "captions": ["...", ...]}`
  or `"caption": "..."`, optional `"split"`.

Rows naming the same file in the same split are merged (one caption per row
works, as in AudioCaps). Blank caption cells are simply absent; a caption
that is empty only after normalisation is reported. A split where no row
has a caption is caption-less (for inference); in a split with captions,
every clip needs one. The record id is the file path as written (POSIX
form, `./` removed, Unicode NFC). Give several datasets different config names
(`make_config(16000, name='birds')`) or different data_dirs.
"""

import collections
import json
import pathlib
import re
from typing import NamedTuple

from aac_jax.data import audio_io, build_report

NAME = 'custom_aac'
DEFAULT_MANIFESTS = ('manifest.csv', 'manifest.jsonl')
DEFAULT_SPLIT = 'train'
_SPLIT_NAME = re.compile(r'\w+')
# At most this many names are listed in a warning.
_LISTED_NAMES = 20


class Row(NamedTuple):
  """One manifest row: where it is, what it names, or what is wrong with it."""

  line: int
  split: str
  file: str
  captions: list[str]
  problem: str = ''


def _clean_file(name: str) -> str:
  """The POSIX form of a manifest path, without `./`."""
  name = name.strip().replace('\\', '/')
  return str(pathlib.PurePosixPath(name)) if name else ''


def _csv_rows(path: pathlib.Path) -> list[Row]:
  rows, _ = audio_io.read_csv_rows(path)
  parsed = []
  for line, row in rows:
    file = row.get('file') if 'file' in row else row.get('file_name')
    texts = [v for k, v in row.items() if isinstance(k, str) and k.startswith('caption')]
    split = (row.get('split') or '').strip() or DEFAULT_SPLIT
    captions = [text for text in texts if text and text.strip()]
    problem = ''
    if None in row:
      problem = f'{len(row[None])} fields more than the header (unquoted comma?)'
    elif not (file or '').strip():
      problem = 'no file (the manifest needs a file or file_name column)'
    parsed.append(Row(line, split, _clean_file(file or ''), captions, problem))
  return parsed


def _json_row(line: int, text: str) -> Row:
  try:
    entry = json.loads(text)
  except json.JSONDecodeError as error:
    return Row(line, DEFAULT_SPLIT, '', [], f'invalid JSON: {error}')
  if not isinstance(entry, dict):
    return Row(line, DEFAULT_SPLIT, '', [], 'not a JSON object')
  file = entry.get('file', entry.get('file_name'))
  split = entry.get('split') or DEFAULT_SPLIT
  captions = entry.get('captions', [])
  captions = [captions] if isinstance(captions, str) else captions
  if 'caption' in entry:
    captions = [*captions, entry['caption']] if isinstance(captions, list) else captions
  if not isinstance(file, str) or not file.strip():
    return Row(line, DEFAULT_SPLIT, '', [], 'no "file" string')
  if not isinstance(split, str):
    return Row(line, DEFAULT_SPLIT, file, [], '"split" is not a string')
  if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
    return Row(line, split, file, [], 'captions are not strings')
  return Row(line, split, _clean_file(file), [c for c in captions if c.strip()])


def read_manifest(path: pathlib.Path) -> list[Row]:
  """Reads a CSV or JSONL manifest (by extension; anything else is CSV)."""
  if path.suffix.lower() != '.jsonl':
    return _csv_rows(path)
  lines = path.read_text(encoding='utf-8-sig').splitlines()
  return [_json_row(n, text) for n, text in enumerate(lines, 1) if text.strip()]


class CustomAac(build_report.ReportingBuilder):
  """Any folder of audio files with a caption manifest."""

  name = NAME
  DESCRIPTION = 'A user-supplied audio captioning dataset (folder + manifest).'
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    'Point manual_dir at a folder of audio files holding manifest.csv or '
    'manifest.jsonl (file, caption(s), optional split); see aac_jax/data/custom_folder.py.'
  )

  def __init__(self, *, manifest: str = '', **kwargs):
    """Creates the builder.

    Args:
      manifest: the manifest file, absolute or relative to the source
        directory; '' finds `manifest.csv` or `manifest.jsonl` there.
      **kwargs: `ReportingBuilder` arguments (data_dir, config, options).
    """
    self.manifest = manifest
    super().__init__(**kwargs)
    self._original_state['manifest'] = manifest

  def _manifest_path(self, source: pathlib.Path) -> pathlib.Path:
    if self.manifest:
      path = source / pathlib.Path(self.manifest).expanduser()
      if not path.is_file():
        raise build_report.BuildError(f'manifest {path} not found')
      return path
    found = [source / name for name in DEFAULT_MANIFESTS if (source / name).is_file()]
    if len(found) != 1:
      raise build_report.BuildError(
        f'{source} must hold exactly one of {DEFAULT_MANIFESTS} (found {len(found)}); '
        'or name the manifest'
      )
    return found[0]

  def _plan_splits(self, source: pathlib.Path) -> dict[str, list[build_report.Clip]]:
    groups = self._group_rows(read_manifest(self._manifest_path(source)))
    plans = {}
    finder = audio_io.FileFinder()
    for split, files in groups.items():
      report = self.report.split(split)
      captioned = any(captions for captions in files.values())
      plans[split] = []
      for file, captions in files.items():
        path = finder.find(source, file)
        looked_for = str(source / file)
        clip = build_report.plan_clip(report, file, path, captions, captioned, {}, looked_for)
        if clip is not None:
          plans[split].append(clip)
    self._warn_overlaps_and_unused(source, groups)
    return plans

  def _group_rows(self, rows: list[Row]) -> dict[str, dict[str, list[str]]]:
    """Returns `{split: {file: captions}}`; bad and repeated rows are reported."""
    groups = collections.defaultdict(dict)
    first_line = {}
    for row in rows:
      split = row.split if _SPLIT_NAME.fullmatch(row.split) else DEFAULT_SPLIT
      report = self.report.split(split)
      report.rows += 1
      problem = row.problem or ('' if split == row.split else f'bad split name {row.split!r}')
      if problem:
        report.skip(
          row.file or f'line {row.line}', build_report.BAD_ROW, f'line {row.line}: {problem}'
        )
        continue
      signature = (split, audio_io.nfc(row.file), tuple(c.strip() for c in row.captions))
      if signature in first_line:
        detail = f'line {row.line} repeats line {first_line[signature]}'
        report.skip(row.file, build_report.DUPLICATE_ROW, detail)
        continue
      first_line[signature] = row.line
      groups[split].setdefault(audio_io.nfc(row.file), []).extend(row.captions)
    return groups

  def _warn_overlaps_and_unused(self, source: pathlib.Path, groups: dict) -> None:
    splits_of = collections.defaultdict(list)
    for split, files in groups.items():
      for file in files:
        splits_of[audio_io.nfc(file)].append(split)
    shared = sorted(f for f, splits in splits_of.items() if len(splits) > 1)
    if shared:
      self.report.warn('file_in_several_splits', f'{len(shared)} files: {_listed(shared)}')
    unused = sorted(
      audio_io.nfc(p.relative_to(source).as_posix())
      for p in source.rglob('*')
      if p.suffix.lower() in audio_io.AUDIO_EXTENSIONS and p.is_file()
    )
    unused = [name for name in unused if name not in splits_of]
    if unused:
      self.report.warn(
        'unreferenced_files', f'{len(unused)} audio files unlisted: {_listed(unused)}'
      )


def _listed(names: list[str]) -> str:
  return ', '.join(names[:_LISTED_NAMES]) + (' ...' if len(names) > _LISTED_NAMES else '')
