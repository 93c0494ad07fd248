"""WavCaps from a local copy, as the TFDS dataset `wavcaps_aac`.

Expected layout of the directory given as `manual_dir` (the metadata of
github.com/XinhaoMei/WavCaps `data/json_files/`, the audio of the
huggingface.co/datasets/cvssp/WavCaps `Zip_files/`, unpacked):

  json_files/AudioSet_SL/as_final.json
  json_files/BBC_Sound_Effects/bbc_final.json
  json_files/FreeSound/fsd_final.json
  json_files/SoundBible/sb_final.json
      {"num_captions_per_audio": 1, "data": [{"id": ..., "caption": ...,
      "audio": ..., "duration": ..., ...}, ...]} (a bare list of the same
      objects, as in early releases, works too)
  the audio of a source, in the first of these folders that exists:
    {source}_flac/    (e.g. AudioSet_SL_flac/)
    waveforms/{source}_flac/
    {source}/
    ZIP_FOLDER/{source}_flac/    (the path inside each zip, unpacked here;
        ZIP_FOLDER = mnt/fast/nobackup/scratch4weeks/xm00178/WavCaps/data/waveforms)
    Zip_files/{source}/ZIP_FOLDER/{source}_flac/    (unpacked beside its zip)
  one file per clip, `{id}.flac` (AudioSet_SL ids end in `.wav`: that
  extension is replaced, `Yb0RFKhbpFJA.wav` -> `Yb0RFKhbpFJA.flac`).

One TFDS split, `train` (WavCaps has no other), one caption per clip. The
record id is `{source}/{id}` (ids repeat across sources); extras `source`
(the folder name above) and `wavcaps_id` (the id as the JSON spells it).
A source whose JSON is absent is left out with a warning.

`exclude` names an overlap list in WavCaps's published format
(`json_files/blacklist/blacklist_exclude_*.json`: `{"AudioSet": [ids],
"FreeSound": [ids]}`; a key may also be a source name): the clips it lists
are left out of the build, counted in an `excluded_overlap` warning (they
are not bad input, so `--strict` builds go on). Hostile input as in the
other builders: ids leading outside `manual_dir` are skipped unread
(`outside_source_dir`), other ids with a folder in them, items that are not
objects and non-string fields are `bad_row`, an item without `caption` is
`missing_caption_field`, a repeated id within a source is `duplicate_row`;
a JSON file that is not UTF-8 is read as ISO-8859-1 with a warning.
"""

import json
import os
import pathlib

import tensorflow_datasets as tfds

from aac_jax.data import audio_io, build_report, text_files

NAME = 'wavcaps_aac'
SPLIT = 'train'
# Source folder -> its metadata file under json_files/<source>/.
SOURCES = {
  'AudioSet_SL': 'as_final.json',
  'BBC_Sound_Effects': 'bbc_final.json',
  'FreeSound': 'fsd_final.json',
  'SoundBible': 'sb_final.json',
}
# Where the audio of each of huggingface.co/datasets/cvssp/WavCaps's zips lands when unpacked.
ZIP_FOLDER = 'mnt/fast/nobackup/scratch4weeks/xm00178/WavCaps/data/waveforms'
# Keys of the published overlap lists -> the source they name.
EXCLUDE_KEYS = {'AudioSet': 'AudioSet_SL', 'FreeSound': 'FreeSound'} | {s: s for s in SOURCES}
_LISTED = 20


def audio_name(clip_id: str) -> str:
  """The FLAC file of a WavCaps id (`Y...wav` -> `Y....flac`, `2219` -> `2219.flac`)."""
  stem = clip_id[: -len('.wav')] if clip_id.lower().endswith('.wav') else clip_id
  return f'{stem}.flac'


def audio_folder(source_dir: pathlib.Path, source: str) -> pathlib.Path:
  """The first audio folder of `source` that exists (else the first candidate)."""
  candidates = [
    source_dir / f'{source}_flac',
    source_dir / 'waveforms' / f'{source}_flac',
    source_dir / source,
    source_dir / ZIP_FOLDER / f'{source}_flac',
    source_dir / 'Zip_files' / source / ZIP_FOLDER / f'{source}_flac',
  ]
  return next((folder for folder in candidates if folder.is_dir()), candidates[0])


def read_exclusions(path: str | os.PathLike) -> dict[str, set[str]]:
  """Reads an overlap list: `{source: {ids}}`.

  Raises:
    BuildError: the file is missing, not JSON, or not `{key: [id strings]}`
      with known keys (the message names the file and the fix).
  """
  path = pathlib.Path(path).expanduser()
  if not path.is_file():
    raise build_report.BuildError(f'overlap list {path} not found (--exclude)')
  try:
    entries = json.loads(text_files.read_text(path).text)
  except json.JSONDecodeError as error:
    raise build_report.BuildError(f'overlap list {path} is not JSON: {error}') from error
  form = 'an object of id lists, e.g. {"AudioSet": ["Y...wav"], "FreeSound": ["180913"]}'
  if not isinstance(entries, dict):
    raise build_report.BuildError(f'overlap list {path} must be {form}')
  exclusions = {}
  for key, ids in entries.items():
    if key not in EXCLUDE_KEYS:
      raise build_report.BuildError(
        f'overlap list {path}: unknown key {key!r} (known: {", ".join(EXCLUDE_KEYS)})'
      )
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
      raise build_report.BuildError(f'overlap list {path}: {key!r} must be a list of id strings')
    exclusions.setdefault(EXCLUDE_KEYS[key], set()).update(ids)
  return exclusions


def _item_problem(index: int, item) -> tuple[str, str]:
  """Returns `(reason, detail)` of a malformed JSON item, `('', '')` for a good one."""
  bad = build_report.BAD_ROW
  if not isinstance(item, dict):
    return bad, f'item {index} is not an object'
  clip_id = item.get('id')
  if not isinstance(clip_id, str):
    return bad, f'item {index}: "id" is {type(clip_id).__name__}, not a string'
  if problem := build_report.name_problem(clip_id):
    return bad, f'item {index}: {problem}'
  if 'caption' not in item:
    return build_report.MISSING_CAPTION_FIELD, f'item {index}: no "caption"'
  if not isinstance(item['caption'], str):
    return bad, f'item {index}: "caption" is not a string'
  return '', ''


class WavcapsAac(build_report.ReportingBuilder):
  """WavCaps captions (ChatGPT-rewritten descriptions) and FLAC audio, one split."""

  name = NAME
  DESCRIPTION = 'WavCaps: ~400 k weakly labelled clips from four sources, one caption each.'
  HOMEPAGE = 'https://github.com/XinhaoMei/WavCaps'
  CITATION = (
    '@article{mei2024wavcaps, title={WavCaps: A ChatGPT-Assisted Weakly-Labelled Audio '
    'Captioning Dataset for Audio-Language Multimodal Research}, author={Mei, Xinhao and '
    'others}, journal={IEEE/ACM TASLP}, year={2024}}'
  )
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    'Put json_files/ of https://github.com/XinhaoMei/WavCaps (data/json_files) in a folder '
    'and unpack the zips of https://huggingface.co/datasets/cvssp/WavCaps (Zip_files/) so '
    'that each source has a {source}_flac/ folder of {id}.flac files next to json_files/.'
  )

  def __init__(self, *, exclude: str = '', **kwargs):
    """Creates the builder.

    Args:
      exclude: an overlap list (WavCaps's blacklist JSON format) whose clips
        are left out; '' = none.
      **kwargs: `ReportingBuilder` arguments (data_dir, config, options).
    """
    self.exclude = exclude
    self._exclusions = read_exclusions(exclude) if exclude else {}  # Fails before any work.
    super().__init__(**kwargs)
    self._original_state['exclude'] = exclude

  def _extra_features(self) -> dict:
    return {'source': tfds.features.Text(), 'wavcaps_id': tfds.features.Text()}

  def _plan_splits(self, source_dir: pathlib.Path) -> dict[str, list[build_report.Clip]]:
    report = self.report.split(SPLIT)
    finder = self.file_finder(source_dir)
    clips = []
    for source, file_name in SOURCES.items():
      items = self._read_items(source_dir / 'json_files' / source / file_name, source)
      if items is not None:
        clips += self._plan_source(report, finder, source_dir, source, items)
    return {SPLIT: clips}

  def _read_items(self, path: pathlib.Path, source: str) -> list | None:
    """The `data` items of a source's JSON, None (with a warning) where unusable."""
    if not path.is_file():
      self.report.warn('source_not_found', f'{source}: no {path}; left out')
      return None
    decoded = text_files.read_text(path)
    self.warn_encoding(decoded.warning, SPLIT)
    try:
      entries = json.loads(decoded.text)
    except json.JSONDecodeError as error:
      self.report.warn('bad_metadata', f'{source}: {path} is not JSON ({error}); left out')
      return None
    items = entries.get('data') if isinstance(entries, dict) else entries
    if not isinstance(items, list):
      detail = f'{source}: {path} holds no "data" list; left out'
      self.report.warn('bad_metadata', detail)
      return None
    return items

  def _plan_source(
    self,
    report: build_report.SplitReport,
    finder: audio_io.FileFinder,
    source_dir: pathlib.Path,
    source: str,
    items: list,
  ) -> list[build_report.Clip]:
    folder = audio_folder(source_dir, source)
    excluded_ids = self._exclusions.get(source, set())
    first_item: dict[str, int] = {}
    excluded, clips = [], []
    for index, item in enumerate(items):
      report.rows += 1
      reason, detail = _item_problem(index, item)
      raw_id = item.get('id') if isinstance(item, dict) else None
      clip_id = f'{source}/{raw_id}' if isinstance(raw_id, str) else f'{source} item {index}'
      if reason:
        report.skip(clip_id, reason, detail)
        continue
      if raw_id in first_item:
        detail = f'item {index} repeats item {first_item[raw_id]}'
        report.skip(clip_id, build_report.DUPLICATE_ROW, detail)
        continue
      first_item[raw_id] = index
      if raw_id in excluded_ids:
        excluded.append(clip_id)
        continue
      clip = self._plan_clip(report, finder, folder, source, raw_id, item['caption'])
      if clip is not None:
        clips.append(clip)
    if excluded:
      listed = ', '.join(excluded[:_LISTED]) + (' ...' if len(excluded) > _LISTED else '')
      detail = f'{len(excluded)} {source} clips listed in {self.exclude}: {listed}'
      report.warn('excluded_overlap', detail)
    return clips

  @staticmethod
  def _plan_clip(report, finder, folder, source, raw_id, caption) -> build_report.Clip | None:
    name = audio_name(raw_id)
    path, refused = None, None
    try:
      path = finder.find(folder, name)
    except audio_io.AudioError as error:
      refused = error
    extras = {'source': source, 'wavcaps_id': raw_id}
    clip_id = f'{source}/{raw_id}'
    return build_report.plan_clip(
      report, clip_id, path, [caption], True, extras, str(folder / name), refused
    )
