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

Every path must stay inside the directory: `..` leading out, absolute
paths elsewhere and symlinks pointing out are skipped unread
(`outside_source_dir`; `BuildOptions.allow_outside_symlinks` follows
links). Lines that are not UTF-8 are read as ISO-8859-1 with a warning
naming the byte. A manifest without any caption column builds caption-less
splits, with a warning; in a split with captions, a row without the
caption field (a short CSV row, a JSON object without "caption") is
skipped as `missing_caption_field`.

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
import os
import pathlib
import re
from typing import NamedTuple

from aac_jax.data import audio_io, build_report, text_files

NAME = 'custom_aac'
DEFAULT_MANIFESTS = ('manifest.csv', 'manifest.jsonl')
DEFAULT_SPLIT = 'train'
_SPLIT_NAME = re.compile(r'\w+')
# At most this many names are listed in a warning.
_LISTED_NAMES = 20


class Row(NamedTuple):
  """One manifest row: where it is, what it names, or what is wrong with it.

  `captions` is None where the row has no caption field at all.
  """

  line: int
  split: str
  file: str
  captions: list[str] | None
  problem: str = ''


class Manifest(NamedTuple):
  """A read manifest.

  Attributes:
    rows: its rows, in order.
    has_captions: whether it has a caption column (CSV) or key (JSONL).
    encoding_warning: '' when the file is UTF-8.
  """

  rows: list[Row]
  has_captions: bool
  encoding_warning: str


def _clean_file(name: str) -> str:
  """The POSIX form of a manifest path, without `./`."""
  name = name.strip().replace('\\', '/')
  return str(pathlib.PurePosixPath(name)) if name else ''


def _csv_manifest(path: pathlib.Path) -> Manifest:
  table = text_files.read_csv_rows(path)
  caption_columns = [c for c in table.columns if c.startswith('caption')]
  parsed = []
  for line, row in table.rows:
    file = row.get('file') if 'file' in row else row.get('file_name')
    texts = [row.get(column) for column in caption_columns]
    split = (row.get('split') or '').strip() or DEFAULT_SPLIT
    captions = [text for text in texts if text and text.strip()]
    if caption_columns and all(text is None for text in texts):
      captions = None  # A short row: the caption fields are not there at all.
    problem = ''
    if None in row:
      problem = f'{len(row[None])} fields more than the header (unquoted comma?)'
    elif not (file or '').strip():
      problem = 'no file (the manifest needs a file or file_name column)'
    parsed.append(Row(line, split, _clean_file(file or ''), captions, problem))
  return Manifest(parsed, bool(caption_columns), table.warning)


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
  if 'captions' not in entry and 'caption' not in entry:
    return Row(line, split, _clean_file(file), None)
  if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
    return Row(line, split, file, [], 'captions are not strings')
  return Row(line, split, _clean_file(file), [c for c in captions if c.strip()])


def read_manifest(path: pathlib.Path) -> Manifest:
  """Reads a CSV or JSONL manifest (by extension; anything else is CSV)."""
  if path.suffix.lower() != '.jsonl':
    return _csv_manifest(path)
  text, warning = text_files.read_text(path)
  lines = text.splitlines()
  rows = [_json_row(n, text) for n, text in enumerate(lines, 1) if text.strip()]
  has_captions = any(row.captions is not None for row in rows if not row.problem)
  return Manifest(rows, has_captions, warning)


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
    path = self._manifest_path(source)
    manifest = read_manifest(path)
    self.warn_encoding(manifest.encoding_warning)
    if not manifest.has_captions:
      self.report.warn(
        'no_caption_column',
        f'{path.name} has no caption column (caption, caption_1, ...; JSONL "caption" or '
        '"captions"): every split is caption-less, for inference only',
      )
    groups = self._group_rows(manifest.rows)
    plans = {}
    finder = self.file_finder(source)
    for split, files in groups.items():
      report = self.report.split(split)
      captioned = any(captions for captions in files.values())
      plans[split] = []
      for file, captions in files.items():
        path, refused = None, None
        try:
          path = finder.find(source, file)
        except audio_io.AudioError as error:
          refused = error
        looked_for = str(source / file)
        clip = build_report.plan_clip(
          report, file, path, captions, captioned, {}, looked_for, refused
        )
        if clip is not None:
          plans[split].append(clip)
    self._warn_overlaps_and_unused(source, groups)
    return plans

  def _row_problem(self, row: Row, split: str, captioned_splits: set[str]) -> tuple[str, str]:
    """Returns `(reason, detail)` of a row left out, `('', '')` for a good one."""
    if row.problem:
      return build_report.BAD_ROW, row.problem
    if split != row.split:
      return build_report.BAD_ROW, f'bad split name {row.split!r}'
    if row.captions is None and split in captioned_splits:
      detail = f'no caption field (split {split} has captions: is the row short of fields?)'
      return build_report.MISSING_CAPTION_FIELD, detail
    return '', ''

  def _group_rows(self, rows: list[Row]) -> dict[str, dict[str, list[str]]]:
    """Returns `{split: {file: captions}}`; bad and repeated rows are reported.

    A malformed row's split column cannot be trusted (an unquoted comma
    shifts the fields): it is reported in its split only where good rows
    name that split too, else in `train` (or the first split named).
    """

    def split_of(row: Row) -> str:
      return row.split if _SPLIT_NAME.fullmatch(row.split) else DEFAULT_SPLIT

    good = [row for row in rows if not row.problem and _SPLIT_NAME.fullmatch(row.split)]
    known_splits = list(dict.fromkeys(split_of(row) for row in good))
    captioned_splits = {split_of(row) for row in good if row.captions}
    no_train = known_splits and DEFAULT_SPLIT not in known_splits
    fallback = known_splits[0] if no_train else DEFAULT_SPLIT
    groups = collections.defaultdict(dict)
    first_line = {}
    for row in rows:
      split = split_of(row)
      report = self.report.split(split if split in known_splits else fallback)
      report.rows += 1
      reason, detail = self._row_problem(row, split, captioned_splits)
      if reason:
        report.skip(row.file or f'line {row.line}', reason, f'line {row.line}: {detail}')
        continue
      captions = row.captions or []
      signature = (split, audio_io.nfc(row.file), tuple(c.strip() for c in captions))
      if signature in first_line:
        detail = f'line {row.line} repeats line {first_line[signature]}'
        report.skip(row.file, build_report.DUPLICATE_ROW, detail)
        continue
      first_line[signature] = row.line
      groups[split].setdefault(audio_io.nfc(row.file), []).extend(captions)
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
    listed = {audio_io.nfc(os.path.relpath(source / name, source)) for name in splits_of}
    unused = [name for name in unused if name not in listed]
    if unused:
      self.report.warn(
        'unreferenced_files', f'{len(unused)} audio files unlisted: {_listed(unused)}'
      )


def _listed(names: list[str]) -> str:
  return ', '.join(names[:_LISTED_NAMES]) + (' ...' if len(names) > _LISTED_NAMES else '')
