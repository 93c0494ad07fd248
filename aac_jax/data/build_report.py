"""What a real-data build did, and the TFDS builder base that records it.

Real copies of Clotho, AudioCaps or a user's own folder are messy. The
builders never crash on bad input and never drop it silently: each problem
is recorded, with the clip id and a reason, in a `BuildReport` that is
written as JSON next to the built dataset (`build_report.json`) and
summarised in the log. With `BuildOptions(strict=True)` any problem fails
the build instead (the report is still written, beside the version folder).

Skip reasons, per clip: `missing_file`, `outside_source_dir` (a name that
leads outside the source folder: `..`, an absolute path, a symlink pointing
out; never read), `not_a_regular_file` (fifo, device, folder; never
opened), `unreadable`, `truncated`, `empty_audio`, `silent_audio`,
`nan_samples`, `too_long` (over `BuildOptions.max_seconds`; see
`audio_io`), `no_captions` (a captioned split's clip left with no caption);
per row: `duplicate_row`, `bad_row`, `missing_caption_field` (a row of a
captioned split without the caption field at all); per caption:
`empty_caption` (empty after `normalize_caption`). Warnings (never fatal):
audio files no row refers to, missing metadata, a text file that is not
UTF-8 (file, byte offset and the encoding used), a manifest without caption
column, clips cut to the maximum duration, a split that could not be built.

`ReportingBuilder` holds what the Clotho, AudioCaps and custom-folder
builders share: the record schema of docs/CONTRACTS.md, one builder config
per sample rate, the user's directory as TFDS `manual_dir`, parallel
decoding, and the report. A subclass only lists each split's clips
(`_plan_splits`).
"""

import collections
import dataclasses
import datetime
import inspect
import json
import os
import pathlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from aac_jax import files
from aac_jax.data import audio_io, tfds_compat
from aac_jax.data.text import normalize_caption

tfds_compat.install()

DUPLICATE_ROW = 'duplicate_row'
BAD_ROW = 'bad_row'
MISSING_CAPTION_FIELD = 'missing_caption_field'
# Reasons that concern a list's row, not a clip (not counted as clips listed).
ROW_REASONS = frozenset({DUPLICATE_ROW, BAD_ROW, MISSING_CAPTION_FIELD})
NO_CAPTIONS = 'no_captions'
EMPTY_CAPTION = 'empty_caption'

REPORT_FILE = 'build_report.json'
DEFAULT_SAMPLE_RATE = 16000
# Longest clip stored by default: far beyond Clotho (30 s) and AudioCaps
# (10 s), short of the hour-long recordings that would fill memory.
DEFAULT_MAX_SECONDS = 600.0
LONG_CLIP_ACTIONS = ('skip', 'cut')
# Rates with a predefined builder config (`16000hz`, ...); others work too.
STANDARD_RATES = (16000, 22050, 32000, 44100, 48000)


class BuildError(RuntimeError):
  """A build that cannot go on: bad input in strict mode, or nothing to build."""


@dataclasses.dataclass
class SplitReport:
  """What happened to one split.

  Attributes:
    name: TFDS split name.
    rows: data rows read from the split's list (CSV rows, manifest lines).
    clips_listed: distinct clips the rows name (duplicates not counted).
    clips_written: clips in the built split.
    captions_written: captions in the built split.
    audio_seconds: total duration written, at the target rate.
    seconds: wall time spent decoding and writing the split.
    skipped: `{'id', 'reason', 'detail'}` per clip left out.
    skipped_captions: `{'id', 'index', 'reason', 'caption'}` per caption left out.
    clipped: `{id: samples clipped to the int16 range}` (clips kept).
    source_formats: `{'44100 Hz, 2 ch': clips}` over the decoded clips.
    warnings: `{'kind', 'detail'}` per problem that left nothing out.
  """

  name: str
  rows: int = 0
  clips_listed: int = 0
  clips_written: int = 0
  captions_written: int = 0
  audio_seconds: float = 0.0
  seconds: float = 0.0
  skipped: list[dict] = dataclasses.field(default_factory=list)
  skipped_captions: list[dict] = dataclasses.field(default_factory=list)
  clipped: dict[str, int] = dataclasses.field(default_factory=dict)
  source_formats: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  warnings: list[dict] = dataclasses.field(default_factory=list)

  def skip(self, clip_id: str, reason: str, detail: str = '') -> None:
    """Records a clip left out."""
    self.skipped.append({'id': clip_id, 'reason': reason, 'detail': detail})

  def skip_caption(self, clip_id: str, index: int, reason: str, caption: str) -> None:
    """Records one caption left out (`index` counts from 0 within the clip)."""
    self.skipped_captions.append(
      {'id': clip_id, 'index': index, 'reason': reason, 'caption': caption}
    )

  def warn(self, kind: str, detail: str) -> None:
    """Records a problem that left nothing out."""
    self.warnings.append({'kind': kind, 'detail': detail})

  def skipped_by_reason(self) -> dict[str, int]:
    counts = collections.Counter(entry['reason'] for entry in self.skipped)
    return dict(sorted(counts.items()))

  def _count(self, row_level: bool) -> int:
    return sum((e['reason'] in ROW_REASONS) == row_level for e in self.skipped)

  def clips_per_second(self) -> float:
    """Clips decoded (kept or not) per second of build time."""
    decoded = self.clips_written + sum(1 for e in self.skipped if e['reason'] in _DECODE_REASONS)
    return decoded / self.seconds if self.seconds > 0 else 0.0

  def to_json(self) -> dict[str, Any]:
    summary = {
      'rows': self.rows,
      'clips_listed': self.clips_listed,
      'clips_written': self.clips_written,
      'clips_skipped': self._count(row_level=False),  # clips_listed - clips_written.
      'rows_skipped': self._count(row_level=True),  # Duplicate or malformed rows.
      'captions_written': self.captions_written,
      'captions_skipped': len(self.skipped_captions),
      'skipped_by_reason': self.skipped_by_reason(),
      'audio_hours': round(self.audio_seconds / 3600, 4),
      'clipped_samples': sum(self.clipped.values()),
      'seconds': round(self.seconds, 3),
      'clips_per_second': round(self.clips_per_second(), 2),
      'source_formats': dict(sorted(self.source_formats.items())),
    }
    details = {
      'skipped': self.skipped,
      'skipped_captions': self.skipped_captions,
      'clipped': self.clipped,
      'warnings': self.warnings,
    }
    return summary | details

  def summary_line(self) -> str:
    """One log line: counts, reasons, speed."""
    reasons = self.skipped_by_reason()
    clips = ', '.join(f'{k} {v}' for k, v in reasons.items() if k not in ROW_REASONS)
    rows = ', '.join(f'{k} {v}' for k, v in reasons.items() if k in ROW_REASONS)
    line = (
      f'{self.name}: {self.clips_listed} clips listed, {self.clips_written} written '
      f'({self.captions_written} captions), {self._count(row_level=False)} skipped'
    )
    line += f' ({clips})' if clips else ''
    line += f', {self._count(row_level=True)} rows skipped ({rows})' if rows else ''
    if self.skipped_captions:
      line += f', {len(self.skipped_captions)} captions dropped'
    if self.clipped:
      line += f', {sum(self.clipped.values())} samples clipped in {len(self.clipped)} clips'
    if self.warnings:
      line += f', {len(self.warnings)} warnings'
    return line + f'; {self.clips_per_second():.1f} clips/s'


_DECODE_REASONS = frozenset(
  {
    audio_io.UNREADABLE,
    audio_io.TRUNCATED,
    audio_io.EMPTY_AUDIO,
    audio_io.SILENT_AUDIO,
    audio_io.NAN_SAMPLES,
  }
)


@dataclasses.dataclass
class BuildReport:
  """The whole build: identity, options and one `SplitReport` per split."""

  dataset: str
  config: str
  version: str
  sample_rate: int
  source_dir: str
  strict: bool
  splits: dict[str, SplitReport] = dataclasses.field(default_factory=dict)
  warnings: list[dict] = dataclasses.field(default_factory=list)
  status: str = 'running'

  def split(self, name: str) -> SplitReport:
    """Returns the report of split `name`, creating it on first use."""
    if name not in self.splits:
      self.splits[name] = SplitReport(name)
    return self.splits[name]

  def warn(self, kind: str, detail: str) -> None:
    """Records a build-level problem (e.g. a split that could not be built)."""
    self.warnings.append({'kind': kind, 'detail': detail})

  def summary_line(self) -> str:
    """One log line over all splits."""
    splits = self.splits.values()
    reasons = collections.Counter()
    for split in splits:
      reasons.update(split.skipped_by_reason())
    written = sum(s.clips_written for s in splits)
    listed = sum(s.clips_listed for s in splits)
    dropped = sum(len(s.skipped_captions) for s in splits)
    line = f'{self.status}: {written} of {listed} listed clips written in {len(self.splits)} splits'
    line += f', skipped: {dict(sorted(reasons.items()))}' if reasons else ', none skipped'
    return line + (f', {dropped} captions dropped' if dropped else '')

  def to_json(self) -> dict[str, Any]:
    header = {k: getattr(self, k) for k in ('dataset', 'config', 'version', 'sample_rate')}
    return header | {
      'source_dir': self.source_dir,
      'strict': self.strict,
      'status': self.status,
      'created': datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds'),
      'warnings': self.warnings,
      'splits': {name: split.to_json() for name, split in self.splits.items()},
    }

  def write(self, path: pathlib.Path) -> None:
    files.write_text(path, json.dumps(self.to_json(), indent=1, ensure_ascii=False) + '\n')


def load_report(path: str | os.PathLike) -> dict[str, Any]:
  """Reads a build report written by `BuildReport.write`."""
  return json.loads(pathlib.Path(path).read_text())


@dataclasses.dataclass
class Clip:
  """One clip a split lists: where its audio is and what goes with it."""

  id: str
  path: pathlib.Path
  captions: list[str]
  extras: dict[str, Any] = dataclasses.field(default_factory=dict)


def keep_captions(report: SplitReport, clip_id: str, raw: Sequence[str | None]) -> list[str]:
  """Returns the stripped captions that survive `normalize_caption`; reports the rest."""
  kept = []
  for index, text in enumerate(raw):
    text = (text or '').strip()
    if normalize_caption(text):
      kept.append(text)
    else:
      report.skip_caption(clip_id, index, EMPTY_CAPTION, text)
  return kept


def name_problem(name: str) -> str:
  """Why a listed file name is malformed ('' when it is fine).

  A bare name is fine; so is one leading out of the folder (`../x.wav`,
  `/abs/x.wav`): `audio_io.FileFinder` refuses it as `outside_source_dir`,
  unread. Any other name with a folder in it is malformed.
  """
  if not name.strip():
    return 'no file name'
  leads_out = name.startswith(('/', '\\')) or '..' in name.replace('\\', '/').split('/')
  if ('/' in name or '\\' in name) and not leads_out:
    return f'file name {name!r} is a path'
  return ''


def plan_clip(
  report: SplitReport,
  clip_id: str,
  path: pathlib.Path | None,
  raw_captions: Sequence[str | None],
  captioned: bool,
  extras: dict[str, Any] | None = None,
  looked_for: str = '',
  refused: audio_io.AudioError | None = None,
) -> Clip | None:
  """Applies the checks every builder shares to one listed clip.

  Args:
    report: the split's report (counts the clip; records a skip).
    clip_id: the clip's id, unique within the split.
    path: its audio file, None where it was not found.
    raw_captions: its captions as listed.
    captioned: whether the split has captions (a clip needs at least one).
    extras: dataset-specific features of the record.
    looked_for: where the file was looked for (for the report).
    refused: why `FileFinder` refused the file (outside the source folder,
      not a regular file), None where it did not.

  Returns:
    The clip, or None when it is left out.
  """
  report.clips_listed += 1
  if refused is not None:
    report.skip(clip_id, refused.reason, refused.detail)
    return None
  if path is None:
    report.skip(clip_id, audio_io.MISSING_FILE, f'not found: {looked_for}')
    return None
  captions = keep_captions(report, clip_id, raw_captions) if captioned else []
  if captioned and not captions:
    report.skip(clip_id, NO_CAPTIONS, 'every caption is empty after normalisation')
    return None
  return Clip(clip_id, path, captions, dict(extras or {}))


def make_example(clip: Clip, decoded: audio_io.Decoded) -> dict[str, Any]:
  """The record of a decoded clip (on one machine and on Beam workers alike)."""
  return {'id': clip.id, 'audio': decoded.audio, 'captions': clip.captions} | clip.extras


@dataclasses.dataclass(eq=False)
class AudioBuilderConfig(tfds.core.BuilderConfig):
  """A builder config: the sample rate the audio is stored at."""

  sample_rate: int = DEFAULT_SAMPLE_RATE


def rate_configs() -> list[AudioBuilderConfig]:
  """The predefined configs, `16000hz` (the default) first."""
  return [
    AudioBuilderConfig(name=f'{rate}hz', sample_rate=rate, description=f'Mono int16 at {rate} Hz.')
    for rate in STANDARD_RATES
  ]


@dataclasses.dataclass(frozen=True)
class BuildOptions:
  """How to build; none of these change what a good build contains.

  Attributes:
    strict: fail the build on any skipped clip or caption.
    num_workers: parallel decoders (0 = decode in the calling thread).
    worker_type: 'thread' (default) or 'process' (see `audio_io.ClipDecoder`).
    progress: show a progress bar while decoding.
    report_path: where to write the report ('' = next to the dataset).
    max_seconds: longest clip stored (seconds).
    long_clips: 'skip' longer files (reason `too_long`) or 'cut' them to
      their first `max_seconds` (with a warning).
    allow_outside_symlinks: follow symlinks that point outside the source
      folder (refused by default: reason `outside_source_dir`).
    beam: decode on Apache Beam (`beam_build`) instead of `num_workers`
      local decoders; the same records and report.
    beam_pipeline_options: Beam pipeline options in TFDS's form
      (`'runner=DataflowRunner,project=p'`; '' = DirectRunner defaults).
  """

  strict: bool = False
  num_workers: int = min(2, os.cpu_count() or 1)
  worker_type: str = 'thread'
  progress: bool = True
  report_path: str = ''
  max_seconds: float = DEFAULT_MAX_SECONDS
  long_clips: str = 'skip'
  allow_outside_symlinks: bool = False
  beam: bool = False
  beam_pipeline_options: str = ''

  def __post_init__(self):
    if self.long_clips not in LONG_CLIP_ACTIONS:
      raise ValueError(f'long_clips {self.long_clips!r} is not one of {LONG_CLIP_ACTIONS}')
    self.length_limit()  # Checks max_seconds.

  def length_limit(self) -> audio_io.LengthLimit:
    """The decoders' `LengthLimit`."""
    return audio_io.LengthLimit(self.max_seconds, cut=self.long_clips == 'cut')


def _features(extra: dict[str, Any]) -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict(
    {
      'id': tfds.features.Text(),
      # BYTES: the raw int16 buffer. The default (an int64 list per sample)
      # takes ~200 ms to serialise and 1.9 MB per 20 s clip, BYTES 0.5 ms and
      # 0.64 MB; readers get the same int16 array either way.
      'audio': tfds.features.Tensor(
        shape=(None,), dtype=np.int16, encoding=tfds.features.Encoding.BYTES
      ),
      'captions': tfds.features.Sequence(tfds.features.Text()),
      **extra,
    }
  )


class ReportingBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Builds a dataset from a local directory (TFDS `manual_dir`) and reports.

  Subclasses define `_plan_splits` (and `_extra_features` for extra record
  fields). Construct with a config from `make_config` (or a config name such
  as `'16000hz'`) and `options=BuildOptions(...)`, then call
  `download_and_prepare(download_config=tfds.download.DownloadConfig(
  manual_dir=source_dir))`. Afterwards `report` and `report_path` hold the
  report. Reading back needs no builder code: `tfds.data_source(
  'name/16000hz', split=..., data_dir=...)`.
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = rate_configs()
  MANUAL_DOWNLOAD_INSTRUCTIONS = 'Point manual_dir at your local copy of the dataset.'
  DESCRIPTION = ''
  HOMEPAGE = ''
  CITATION = ''

  def __init__(self, *, options: BuildOptions | None = None, **kwargs):
    """Creates the builder (TFDS keyword arguments: data_dir, config, ...)."""
    kwargs.setdefault('file_format', 'array_record')
    self.options = options or BuildOptions()
    self.report: BuildReport | None = None
    self.report_path: pathlib.Path | None = None
    self._decoder: audio_io.ClipDecoder | None = None
    self.beam_plans: dict[str, list[Clip]] = {}  # Beam builds: each split's clips.
    super().__init__(**kwargs)
    self._original_state['options'] = self.options  # Kept when pickled.

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """This module's file (TFDS's look-up needs the `importlib_resources` backport)."""
    return epath.Path(inspect.getfile(cls))

  @classmethod
  def make_config(cls, sample_rate: int = DEFAULT_SAMPLE_RATE, name: str = ''):
    """Returns the config for `sample_rate`: predefined if there is one.

    Args:
      sample_rate: Hz.
      name: config name; '' gives `'{sample_rate}hz'`.
    """
    name = name or f'{sample_rate}hz'
    predefined = cls.builder_configs.get(name)
    if predefined is None:
      return AudioBuilderConfig(name=name, sample_rate=sample_rate)
    if predefined.sample_rate != sample_rate:
      raise ValueError(f'config {name} is {predefined.sample_rate} Hz, not {sample_rate}')
    return predefined

  @property
  def sample_rate(self) -> int:
    return self.builder_config.sample_rate

  def _extra_features(self) -> dict[str, Any]:
    return {}

  def file_finder(self, source: pathlib.Path) -> audio_io.FileFinder:
    """The `FileFinder` confining every file the lists name to `source`."""
    return audio_io.FileFinder(source, self.options.allow_outside_symlinks)

  def warn_encoding(self, warning: str, split: str = '') -> None:
    """Records a `text_files` encoding warning ('' = none) of `split` ('' = the build)."""
    if warning:
      (self.report.split(split) if split else self.report).warn('encoding', warning)
      logging.warning('%s: %s', self.name, warning)

  def _plan_splits(self, source: pathlib.Path) -> dict[str, list[Clip]]:
    """Lists each split's clips, recording problems in `self.report`."""
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=self.DESCRIPTION,
      features=_features(self._extra_features()),
      homepage=self.HOMEPAGE,
      citation=self.CITATION,
      metadata=tfds.core.MetadataDict(sample_rate=self.sample_rate),
    )

  def _split_generators(self, dl_manager):
    source = pathlib.Path(os.fspath(dl_manager.manual_dir))
    self.report = BuildReport(
      dataset=self.name,
      config=self.builder_config.name,
      version=str(self.version),
      sample_rate=self.sample_rate,
      source_dir=str(source),
      strict=self.options.strict,
    )
    plans = self._plan_splits(source)
    self._warn_suspicious_splits(source)
    self._check_strict('listing the clips', list(self.report.splits.values()))
    for name in [name for name, clips in plans.items() if not clips]:
      self.report.warn('split_not_built', f'{name}: no clip with audio to build')
      del plans[name]
    if not plans:
      raise BuildError(f'nothing to build from {source}: {self.report.warnings}')
    if self.options.beam:
      from aac_jax.data import beam_build  # noqa: PLC0415 (the optional 'beam' extra)

      return beam_build.split_transforms(self, plans, make_example)
    return {name: self._generate_examples(name, clips) for name, clips in plans.items()}

  def _process_pipeline_result(self, pipeline_result) -> None:
    """After the Beam pipeline: records every worker's outcomes in the one report."""
    from aac_jax.data import beam_build  # noqa: PLC0415

    beam_build.merge_outcomes(self, BuildError)

  def _warn_suspicious_splits(self, source: pathlib.Path) -> None:
    """Warns where most clips of a split are missing or lead outside `source`."""
    for split in self.report.splits.values():
      reasons = split.skipped_by_reason()
      missing = reasons.get(audio_io.MISSING_FILE, 0)
      if missing > split.clips_listed / 2:
        detail = (
          f'{missing} of {split.clips_listed} clips not found: is the layout (or pattern) right?'
        )
        split.warn('mostly_missing', detail)
      outside = reasons.get(audio_io.OUTSIDE_SOURCE_DIR, 0)
      if outside > split.clips_listed / 2:
        detail = (
          f'{outside} of {split.clips_listed} clips lead outside {source}: an audio folder '
          'linked from elsewhere? --allow_outside_symlinks follows symlinks'
        )
        split.warn('mostly_outside', detail)

  def _check_strict(self, stage: str, splits: list[SplitReport]) -> None:
    if not self.options.strict:
      return
    bad = {s.name: s.skipped_by_reason() | {'captions': len(s.skipped_captions)} for s in splits}
    bad = {name: counts for name, counts in bad.items() if sum(counts.values())}
    if bad:
      raise BuildError(f'strict build: bad input found while {stage}: {bad}')

  def _generate_examples(self, split: str, clips: list[Clip]) -> Iterator[tuple[str, dict]]:
    report = self.report.split(split)
    if self._decoder is None:
      opts = self.options
      self._decoder = audio_io.ClipDecoder(
        self.sample_rate, opts.num_workers, opts.progress, opts.worker_type, opts.length_limit()
      )
    by_id = {clip.id: clip for clip in clips}
    files = [(clip.id, clip.path) for clip in clips]
    start = time.perf_counter()
    for clip_id, decoded in self._decoder.decode(files, f'{self.name} {split}'):
      samples = 0 if decoded.audio is None else decoded.audio.size
      if self.account(report, by_id[clip_id], decoded, samples):
        yield clip_id, make_example(by_id[clip_id], decoded)
    report.seconds = time.perf_counter() - start
    self.finish_split(split, report)

  def account(
    self, report: SplitReport, clip: Clip, decoded: audio_io.Decoded, samples: int
  ) -> bool:
    """Records one clip's decode outcome; returns whether it is written.

    Args:
      report: the split's report.
      clip: the clip.
      decoded: what decoding found (the audio itself is not read).
      samples: its length at the target rate (0 when skipped).
    """
    if decoded.reason:
      report.skip(clip.id, decoded.reason, decoded.detail)
      return False
    report.clips_written += 1
    report.captions_written += len(clip.captions)
    report.audio_seconds += samples / self.sample_rate
    report.source_formats[f'{decoded.source_rate} Hz, {decoded.source_channels} ch'] += 1
    if decoded.clipped:
      report.clipped[clip.id] = decoded.clipped
    if decoded.cut_from_seconds:
      detail = (
        f'{clip.id}: kept the first {self.options.max_seconds:g} s of '
        f'{decoded.cut_from_seconds:.1f} s (--long_clips cut)'
      )
      report.warn('cut', detail)
    return True

  def finish_split(self, split: str, report: SplitReport) -> None:
    """Logs a decoded split; fails a strict build with skips or a split with no clip."""
    logging.info('%s %s', self.name, report.summary_line())
    self._check_strict(f'decoding {split}', [report])
    if not report.clips_written:
      raise BuildError(f'{split}: no clip could be decoded: {report.skipped_by_reason()}')

  def download_and_prepare(self, **kwargs) -> None:
    """TFDS `download_and_prepare`, then writes the report (also on failure)."""
    self.report = self.report_path = None
    succeeded = False
    try:
      super().download_and_prepare(**kwargs)
      succeeded = True
    finally:
      if self._decoder is not None:
        self._decoder.close()
        self._decoder = None
      if self.report is not None:  # None: the dataset existed and was reused.
        self._write_report(succeeded)

  def _failed_report_path(self) -> pathlib.Path:
    return pathlib.Path(os.fspath(self.data_path)).parent / f'{self.version}.failed.{REPORT_FILE}'

  def _write_report(self, succeeded: bool) -> None:
    self.report.status = 'complete' if succeeded else 'failed'
    if self.options.report_path:
      path = pathlib.Path(self.options.report_path).expanduser()
    elif succeeded:
      path = pathlib.Path(os.fspath(self.data_path)) / REPORT_FILE
    else:  # The version folder is removed when a build fails.
      path = self._failed_report_path()
    self.report.write(path)
    self.report_path = path
    if succeeded and self._failed_report_path().exists():  # From an earlier attempt.
      self._failed_report_path().unlink()
    for warning in self.report.warnings:
      logging.warning('%s: %s', self.name, warning['detail'])
    logging.info('%s %s; report: %s', self.name, self.report.summary_line(), path)
