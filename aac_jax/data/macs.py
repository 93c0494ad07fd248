"""MACS from a local copy, as the TFDS dataset `macs_aac`.

Expected layout of the directory given as `manual_dir` (MACS from
zenodo.org/records/5114771, the audio of TAU Urban Acoustic Scenes 2019
development, zenodo.org/records/2589280, unpacked):

  MACS.yaml
      files:
      - filename: airport-lisbon-1000-40000-a.wav
        annotations:
        - annotator_id: 123
          sentence: adults talking and footsteps ...
          tags: [adults_talking, footsteps]
        ...
  the audio, in the first of these folders that holds a clip's file:
    TAU-urban-acoustic-scenes-2019-development/audio/
    audio/

One TFDS split, `train` (MACS has no other: 3,930 clips, 2 to 5 captions
each). The record id is the file name; extras `annotator_ids` (int64, one
per caption kept; -1 where not a whole number) and `scene` (the acoustic
scene, the file name up to its first `-`). The YAML is read with
`yaml.safe_load` (no object construction from the file); a file that is
not UTF-8 is read as ISO-8859-1 with a warning. Entries that are not
mappings or whose `filename` is missing or a path are `bad_row`, an entry
without `annotations` is `missing_caption_field`, a repeated file name is
`duplicate_row`, names leading outside `manual_dir` are skipped unread
(`outside_source_dir`), annotations without a sentence are
`empty_caption`.
"""

import pathlib

import numpy as np
import tensorflow_datasets as tfds
import yaml

from aac_jax.data import audio_io, build_report, text_files
from aac_jax.data.text import normalize_caption

NAME = 'macs_aac'
SPLIT = 'train'
ANNOTATIONS = 'MACS.yaml'
AUDIO_FOLDERS = ('TAU-urban-acoustic-scenes-2019-development/audio', 'audio')


def read_entries(path: pathlib.Path) -> tuple[list, str]:
  """Returns `(entries of `files`, encoding warning)`.

  Raises:
    BuildError: the file is missing, not YAML, or has no `files` list.
  """
  if not path.is_file():
    raise build_report.BuildError(f'no {path}: point --source_dir at the folder holding it')
  decoded = text_files.read_text(path)
  try:
    document = yaml.safe_load(decoded.text)
  except yaml.YAMLError as error:
    raise build_report.BuildError(f'{path} is not YAML: {error}') from error
  entries = document.get('files') if isinstance(document, dict) else None
  if not isinstance(entries, list):
    raise build_report.BuildError(f'{path} has no "files:" list (is it MACS.yaml?)')
  return entries, decoded.warning


def _annotator_id(annotation) -> int:
  value = annotation.get('annotator_id') if isinstance(annotation, dict) else None
  return int(value) if isinstance(value, int) or str(value).isdigit() else -1


def _entry_problem(index: int, entry) -> tuple[str, str]:
  """Returns `(reason, detail)` of a malformed entry, `('', '')` for a good one."""
  bad = build_report.BAD_ROW
  if not isinstance(entry, dict):
    return bad, f'entry {index} is not a mapping'
  name = entry.get('filename')
  if not isinstance(name, str):
    return bad, f'entry {index}: "filename" is {type(name).__name__}, not a string'
  if problem := build_report.name_problem(name):
    return bad, f'entry {index}: {problem}'
  if 'annotations' not in entry:
    return build_report.MISSING_CAPTION_FIELD, f'entry {index}: no "annotations"'
  if not isinstance(entry['annotations'], list):
    return bad, f'entry {index}: "annotations" is not a list'
  return '', ''


class MacsAac(build_report.ReportingBuilder):
  """MACS captions of TAU Urban Acoustic Scenes 2019 clips."""

  name = NAME
  DESCRIPTION = 'MACS: multi-annotator captions of 10 s TAU Urban Acoustic Scenes 2019 clips.'
  HOMEPAGE = 'https://zenodo.org/records/5114771'
  CITATION = (
    '@inproceedings{martinmorato2021macs, title={Diversity and Bias in Audio Captioning '
    "Datasets}, author={Mart\\'in-Morat\\'o, Irene and Mesaros, Annamaria}, "
    'booktitle={DCASE Workshop}, year={2021}}'
  )
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    'Put MACS.yaml from https://zenodo.org/records/5114771 in a folder and unpack the '
    'TAU Urban Acoustic Scenes 2019 development audio (https://zenodo.org/records/2589280) '
    'next to it, as TAU-urban-acoustic-scenes-2019-development/audio/.'
  )

  def _extra_features(self) -> dict:
    return {
      'annotator_ids': tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.int64)),
      'scene': tfds.features.Text(),
    }

  def _plan_splits(self, source: pathlib.Path) -> dict[str, list[build_report.Clip]]:
    entries, warning = read_entries(source / ANNOTATIONS)
    self.warn_encoding(warning, SPLIT)
    report = self.report.split(SPLIT)
    finder = self.file_finder(source)
    first_entry: dict[str, int] = {}
    clips = []
    for index, entry in enumerate(entries):
      report.rows += 1
      reason, detail = _entry_problem(index, entry)
      name = entry.get('filename') if isinstance(entry, dict) else None
      clip_id = name if isinstance(name, str) and name.strip() else f'entry {index}'
      if reason:
        report.skip(clip_id, reason, detail)
        continue
      key = audio_io.nfc(name.strip())
      if key in first_entry:
        report.skip(name, build_report.DUPLICATE_ROW, f'entry {index} repeats {first_entry[key]}')
        continue
      first_entry[key] = index
      clip = self._plan_clip(report, finder, source, name, entry['annotations'])
      if clip is not None:
        clips.append(clip)
    return {SPLIT: clips}

  @staticmethod
  def _plan_clip(report, finder, source, name, annotations) -> build_report.Clip | None:
    path, refused, looked_for = None, None, []
    try:
      for folder in AUDIO_FOLDERS:
        looked_for.append(str(source / folder / name))
        path = finder.find(source / folder, name)
        if path is not None:
          break
    except audio_io.AudioError as error:
      refused = error
    sentences = [a.get('sentence') if isinstance(a, dict) else None for a in annotations]
    sentences = [s if isinstance(s, str) else None for s in sentences]
    kept = [i for i, s in enumerate(sentences) if normalize_caption(s or '')]
    extras = {
      'annotator_ids': [_annotator_id(annotations[i]) for i in kept],
      'scene': name.strip().split('-')[0],
    }
    return build_report.plan_clip(
      report, name, path, sentences, True, extras, ' | '.join(looked_for), refused
    )
