"""Clotho v2.1 from a local copy, as the TFDS dataset `clotho_aac`.

Expected layout of the directory given as `manual_dir` (the Zenodo
archives, unpacked; `<split>/` directly under it works too):

  clotho_captions_{development,validation,evaluation}.csv
      file_name,caption_1,...,caption_5 (UTF-8; quoted fields)
  clotho_metadata_{development,validation,evaluation,test}.csv   (optional)
      file_name,keywords,sound_id,sound_link,start_end_samples,manufacturer,
      license (ISO-8859-1; keywords separated by ';')
  clotho_audio_files/{development,validation,evaluation,test}/*.wav

Splits `development`, `validation` and `evaluation` hold five captions per
clip; `test` (DCASE's caption-less set) holds none and is built from its
metadata CSV, or from its audio folder where that CSV is absent. The record
id is the file name exactly as the CSV spells it (spaces, even leading
ones, commas and non-ASCII characters kept; matched to the files on disk in
Unicode NFC form, and without surrounding spaces where the exact name is not
there). The
metadata is kept: `keywords` (list) and `sound_id`, `sound_link`,
`start_end_samples`, `manufacturer`, `license` (text, '' where unknown).

Names that lead outside `manual_dir` (`../x.wav`, `/abs/x.wav`, symlinks
pointing out) are skipped unread (`outside_source_dir`); CSV lines that are
not UTF-8 are read as ISO-8859-1 with a warning naming the byte.
"""

import pathlib

import tensorflow_datasets as tfds

from aac_jax.data import audio_io, build_report, text_files

NAME = 'clotho_aac'
SPLITS = ('development', 'validation', 'evaluation', 'test')
CAPTIONED_SPLITS = ('development', 'validation', 'evaluation')
NUM_CAPTIONS = 5
METADATA_FIELDS = ('sound_id', 'sound_link', 'start_end_samples', 'manufacturer', 'license')
# At most this many names are listed in an "unreferenced files" warning.
_LISTED_NAMES = 20


def _audio_folder(source: pathlib.Path, split: str) -> pathlib.Path:
  """Where a split's audio is: `clotho_audio_files/<split>`, else `<split>`."""
  for folder in (source / 'clotho_audio_files' / split, source / split):
    if folder.is_dir():
      return folder
  return source / 'clotho_audio_files' / split


def _metadata_extras(row: dict | None) -> dict:
  row = row or {}
  keywords = [k.strip() for k in (row.get('keywords') or '').split(';') if k.strip()]
  return {'keywords': keywords} | {f: (row.get(f) or '').strip() for f in METADATA_FIELDS}


class ClothoAac(build_report.ReportingBuilder):
  """Clotho v2.1 captions, audio and metadata from a local copy."""

  name = NAME
  DESCRIPTION = 'Clotho v2.1 audio captioning dataset (15-30 s Freesound clips).'
  HOMEPAGE = 'https://zenodo.org/records/4783391'
  CITATION = (
    '@inproceedings{drossos2020clotho, title={Clotho: an Audio Captioning Dataset}, '
    'author={Drossos, Konstantinos and Lipping, Samuel and Virtanen, Tuomas}, '
    'booktitle={ICASSP}, year={2020}}'
  )
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    'Download Clotho v2.1 from https://zenodo.org/records/4783391 (and, if wanted, '
    "the caption-less DCASE test set's clotho_audio_test.7z and "
    'clotho_metadata_test.csv from its own record): unpack the audio archives into '
    'clotho_audio_files/{development,validation,evaluation,test}/ and put the '
    'clotho_captions_*.csv and clotho_metadata_*.csv files next to that folder.'
  )

  def _extra_features(self) -> dict:
    text = tfds.features.Text
    return {'keywords': tfds.features.Sequence(text())} | {f: text() for f in METADATA_FIELDS}

  def _plan_splits(self, source: pathlib.Path) -> dict[str, list[build_report.Clip]]:
    plans = {}
    for split in SPLITS:
      rows = self._split_rows(source, split)
      if rows is not None:
        plans[split] = self._plan_split(source, split, rows)
    return plans

  def _split_rows(self, source: pathlib.Path, split: str) -> list[tuple[int, dict]] | None:
    """Returns `(line, row)` pairs listing the split's clips, None if it is absent."""
    captions_csv = source / f'clotho_captions_{split}.csv'
    metadata_csv = source / f'clotho_metadata_{split}.csv'
    folder = _audio_folder(source, split)
    if split in CAPTIONED_SPLITS and captions_csv.is_file():
      table = text_files.read_csv_rows(captions_csv)
      self.warn_encoding(table.warning, split)
      return table.rows
    if split not in CAPTIONED_SPLITS and metadata_csv.is_file():
      return text_files.read_csv_rows(metadata_csv).rows  # Its warning: `_read_metadata`.
    if split not in CAPTIONED_SPLITS and folder.is_dir():
      return [(0, {'file_name': p.name}) for p in audio_io.audio_files(folder)]
    wanted = captions_csv.name if split in CAPTIONED_SPLITS else f'{metadata_csv.name} or {folder}'
    self.report.warn('split_not_found', f'{split}: no {wanted}; not built')
    return None

  def _read_metadata(self, source: pathlib.Path, split: str) -> dict[str, dict] | None:
    """Returns `{nfc(file_name): row}` of the split's metadata CSV, None if absent."""
    path = source / f'clotho_metadata_{split}.csv'
    if not path.is_file():
      self.report.split(split).warn('no_metadata', f'no {path.name}: metadata left empty')
      return None
    table = text_files.read_csv_rows(path)
    self.warn_encoding(table.warning, split)
    return {audio_io.nfc((row.get('file_name') or '').strip()): row for _, row in table.rows}

  def _plan_split(
    self, source: pathlib.Path, split: str, rows: list[tuple[int, dict]]
  ) -> list[build_report.Clip]:
    report = self.report.split(split)
    captioned = split in CAPTIONED_SPLITS
    metadata = self._read_metadata(source, split)
    folder = _audio_folder(source, split)
    finder = self.file_finder(source)
    first_line: dict[str, int] = {}
    found: set[str] = set()
    clips = []
    for line, row in rows:
      report.rows += 1
      name = row.get('file_name') or ''  # Verbatim: real names can start with a space.
      reason, problem = self._row_problem(name, row, captioned)
      if reason:
        report.skip(name or f'line {line}', reason, f'line {line}: {problem}')
        continue
      key = audio_io.nfc(name.strip())
      if key in first_line:
        detail = f'line {line} repeats line {first_line[key]}'
        report.skip(name, build_report.DUPLICATE_ROW, detail)
        continue
      first_line[key] = line
      if metadata is not None and key not in metadata:
        report.warn('missing_metadata', f'{name}: not in clotho_metadata_{split}.csv')
      captions = [row.get(f'caption_{i}') for i in range(1, NUM_CAPTIONS + 1)]
      extras = _metadata_extras((metadata or {}).get(key))
      path, refused = None, None
      try:
        path = finder.find(folder, name)
      except audio_io.AudioError as error:
        refused = error
      if path is not None:
        found.add(audio_io.nfc(path.name))
      clip = build_report.plan_clip(
        report, name, path, captions, captioned, extras, str(folder / name), refused
      )
      if clip is not None:
        clips.append(clip)
    self._warn_unreferenced(report, finder, folder, found)
    return clips

  @staticmethod
  def _row_problem(name: str, row: dict, captioned: bool) -> tuple[str, str]:
    """Returns `(reason, detail)` of a malformed row, `('', '')` for a good one.

    A name leading out of the folder is not a row problem: `FileFinder`
    refuses it as `outside_source_dir`.
    """
    bad = build_report.BAD_ROW
    if problem := build_report.name_problem(name):
      return bad, problem
    if None in row:
      return bad, f'{len(row[None])} fields more than the header (unquoted comma?)'
    needed = [f'caption_{i}' for i in range(1, NUM_CAPTIONS + 1)] if captioned else []
    missing = [field for field in needed if row.get(field) is None]
    if missing:
      return build_report.MISSING_CAPTION_FIELD, f'no field {", ".join(missing)} (a short row)'
    return '', ''

  @staticmethod
  def _warn_unreferenced(
    report: build_report.SplitReport,
    finder: audio_io.FileFinder,
    folder: pathlib.Path,
    referenced: set[str],
  ) -> None:
    unused = sorted(
      name
      for name, path in finder.listing(folder).items()
      if name not in referenced and path.suffix.lower() in audio_io.AUDIO_EXTENSIONS
    )
    if unused:
      listed = ', '.join(unused[:_LISTED_NAMES]) + (' ...' if len(unused) > _LISTED_NAMES else '')
      report.warn('unreferenced_files', f'{len(unused)} audio files in {folder} unlisted: {listed}')
