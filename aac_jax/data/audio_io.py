"""Reads the audio files of a real dataset into clean int16 clips.

Any file libsndfile reads (wav, flac, ogg, mp3, aiff, ...) is decoded with
soundfile; other formats fall back to audioread (as `librosa.load` does; it
needs ffmpeg or GStreamer). Every clip is mixed down to mono (mean of the
channels), resampled to the builder's rate with soxr (librosa's `soxr_hq`)
and stored as int16 (`round(x * 32768)`, the inverse of the pipeline's
`int16 / 32768`); samples beyond full scale are clipped and counted.

A file that cannot give a clean clip is never fatal: `decode_file` returns a
`Decoded` whose `reason` says why (missing, not a regular file, unreadable,
truncated, empty, silent, NaN samples, too long), and the builder reports
it. Only regular files are opened: a fifo or a device (`/dev/zero`) is
reported as such, never read. A `LengthLimit` skips (or cuts) files longer
than a maximum before decoding them whole.

Names read from a dataset's lists are looked up with `FileFinder`, which
refuses any path that leads outside the source folder (`..`, absolute
paths, symlinks pointing out, unless allowed) before touching it. `ClipDecoder` runs
`decode_file` over a whole split in worker threads (or processes), in order,
with a progress bar.
"""

import collections
import concurrent.futures
import dataclasses
import math
import multiprocessing
import os
import pathlib
import re
import stat
import unicodedata
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import soundfile as sf
import soxr
import tqdm
from absl import logging

# Reasons a clip is skipped (strings, as they appear in the build report).
MISSING_FILE = 'missing_file'
UNREADABLE = 'unreadable'
TRUNCATED = 'truncated'
EMPTY_AUDIO = 'empty_audio'
SILENT_AUDIO = 'silent_audio'
NAN_SAMPLES = 'nan_samples'
NOT_A_REGULAR_FILE = 'not_a_regular_file'
TOO_LONG = 'too_long'
OUTSIDE_SOURCE_DIR = 'outside_source_dir'

AUDIO_EXTENSIONS = frozenset(
  {'.wav', '.flac', '.ogg', '.oga', '.opus', '.mp3', '.aif', '.aiff', '.au', '.m4a'}
)

# A decoder may stop this share of the declared length short (mp3 lengths
# are estimates) before the file counts as truncated.
_TRUNCATION_TOLERANCE = 0.01
# libsndfile's log line for a WAV whose data chunk claims more than the file holds.
_WAV_SHORT_DATA = re.compile(r'^data\s*:\s*(\d+)\s*\(should be (\d+)\)', re.MULTILINE)
# Above this, `frames` is libsndfile's "unknown length" sentinel, not a length.
_UNKNOWN_FRAMES = 1 << 40


@dataclasses.dataclass(frozen=True)
class LengthLimit:
  """The longest clip to decode, and what to do with longer files.

  Attributes:
    max_seconds: the maximum duration in seconds.
    cut: keep the first `max_seconds` of a longer file; False skips it
      (reason `TOO_LONG`).
  """

  max_seconds: float
  cut: bool = False

  def __post_init__(self):
    if not self.max_seconds > 0:
      raise ValueError(f'max_seconds must be positive, got {self.max_seconds}')

  def frames(self, rate: int) -> int:
    """The most frames kept at `rate` Hz."""
    return max(1, int(self.max_seconds * rate))

  def too_long(self, seconds: float) -> 'AudioError':
    """The error for a file of `seconds` when `cut` is off."""
    return AudioError(
      TOO_LONG,
      f'{seconds:.1f} s, longer than the maximum {self.max_seconds:g} s (raise it with '
      '--max_seconds, or keep the first part with --long_clips cut)',
    )


class AudioError(Exception):
  """A file that gives no clean clip; `reason` is one of the constants above."""

  def __init__(self, reason: str, detail: str):
    super().__init__(reason, detail)
    self.reason = reason
    self.detail = detail


@dataclasses.dataclass(frozen=True)
class Decoded:
  """One decoded file, or the reason it gave no clip.

  Attributes:
    audio: int16 `[num_samples]` mono at the target rate (None when skipped).
    reason: '' for a good clip, else one of the skip reasons.
    detail: human-readable detail for the report.
    source_rate: the file's sample rate (0 when unknown).
    source_channels: the file's channel count (0 when unknown).
    clipped: samples clipped to the int16 range.
    cut_from_seconds: the file's duration when only its first part was kept
      (`LengthLimit.cut`), else 0.
  """

  audio: np.ndarray | None
  reason: str = ''
  detail: str = ''
  source_rate: int = 0
  source_channels: int = 0
  clipped: int = 0
  cut_from_seconds: float = 0.0


def _read_with_audioread(
  path: str, soundfile_error: Exception, limit: LengthLimit | None
) -> tuple[np.ndarray, int, float]:
  """Decodes a format libsndfile cannot open (librosa's fallback, without librosa).

  Returns:
    `(samples, rate, seconds)`: float32 `[frames, channels]`, the sample
    rate and the file's duration.
  """
  with warnings.catch_warnings():  # It imports aifc, audioop, sunau (deprecated).
    warnings.simplefilter('ignore', DeprecationWarning)
    import audioread  # A librosa dependency; needs ffmpeg or GStreamer to decode.
    import audioread.rawread  # noqa: F401 - imported by audio_open; here, quietly.

  try:
    with audioread.audio_open(path) as handle:
      rate, channels, seconds = handle.samplerate, handle.channels, float(handle.duration)
      if limit and seconds > limit.max_seconds and not limit.cut:
        raise limit.too_long(seconds)
      wanted = limit.frames(rate) * channels * 2 if limit else math.inf
      blocks, size = [], 0
      for block in handle:  # 16-bit little-endian blocks; stop once enough is read.
        blocks.append(block)
        size += len(block)
        if size >= wanted:
          break
      data = b''.join(blocks)
  except AudioError:
    raise
  except Exception as error:  # noqa: BLE001 - any decoder failure is a skip.
    raise AudioError(
      UNREADABLE, f'soundfile: {soundfile_error}; audioread: {type(error).__name__}: {error}'
    ) from error
  samples = np.frombuffer(data, dtype='<i2').astype(np.float32) / 32768.0
  samples = samples[: samples.size - samples.size % channels].reshape(-1, channels)
  return samples, int(rate), max(seconds, samples.shape[0] / max(rate, 1))


def _check_complete(read_frames: int, declared: int, log: str) -> None:
  """Raises `AudioError(TRUNCATED)` if the file holds less than it declares."""
  for declared_bytes, real_bytes in _WAV_SHORT_DATA.findall(log):
    if int(real_bytes) < int(declared_bytes):
      raise AudioError(
        TRUNCATED, f'data chunk declares {declared_bytes} bytes, file holds {real_bytes}'
      )
  if declared < _UNKNOWN_FRAMES and read_frames < declared * (1 - _TRUNCATION_TOLERANCE):
    raise AudioError(TRUNCATED, f'decoded {read_frames} of {declared} declared frames')


_FILE_KINDS = (
  (stat.S_ISDIR, 'a directory'),
  (stat.S_ISFIFO, 'a fifo (named pipe)'),
  (stat.S_ISCHR, 'a character device'),
  (stat.S_ISBLK, 'a block device'),
  (stat.S_ISSOCK, 'a socket'),
)


def check_regular_file(path: str | os.PathLike) -> None:
  """Raises `AudioError` unless `path` is a regular file (symlinks followed).

  Only `stat` is called: a fifo or a device is never opened (reading one
  could block or never end).

  Raises:
    AudioError: `MISSING_FILE` or `NOT_A_REGULAR_FILE`.
  """
  try:
    mode = os.stat(path).st_mode
  except FileNotFoundError as error:
    raise AudioError(MISSING_FILE, 'no such file') from error
  except OSError as error:  # E.g. permission denied on a folder, a symlink loop.
    raise AudioError(UNREADABLE, f'{type(error).__name__}: {error.strerror}') from error
  if not stat.S_ISREG(mode):
    kind = next((name for test, name in _FILE_KINDS if test(mode)), 'not a file')
    raise AudioError(NOT_A_REGULAR_FILE, f'{kind}, not a regular file: not read')


def read_audio(
  path: str | os.PathLike, limit: LengthLimit | None = None
) -> tuple[np.ndarray, int, float]:
  """Reads an audio file (whole, or up to `limit`).

  Args:
    path: the file.
    limit: the longest duration read; None reads everything.

  Returns:
    `(samples, rate, seconds)`: float32 `[frames, channels]` in [-1, 1]
    (integer formats), the file's sample rate and its whole duration.

  Raises:
    AudioError: missing, not a regular file, unreadable, truncated, or
      too long (`limit` without `cut`).
  """
  path = os.fspath(path)
  check_regular_file(path)
  try:
    handle = sf.SoundFile(path)
  except Exception as error:  # noqa: BLE001 - not a libsndfile format: try audioread.
    return _read_with_audioread(path, error, limit)
  with handle:
    declared, rate = handle.frames, handle.samplerate
    known = declared < _UNKNOWN_FRAMES
    wanted = limit.frames(rate) if limit else -1
    if known and limit and declared > wanted and not limit.cut:
      raise limit.too_long(declared / rate)
    try:
      samples = handle.read(frames=wanted, dtype='float32', always_2d=True)
    except Exception as error:  # noqa: BLE001 - a decoder error mid-file.
      raise AudioError(UNREADABLE, f'decoding failed: {error}') from error
    log = handle.extra_info
  _check_complete(samples.shape[0], min(declared, wanted) if limit else declared, log)
  seconds = declared / rate if known else samples.shape[0] / rate
  return samples, int(rate), seconds


def resample(audio: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
  """Resamples mono float audio `[n]` to `[ceil(n * target / source)]`.

  soxr 'HQ', as librosa's default `soxr_hq` (same output), without importing
  librosa (numba compiles for seconds in every worker).
  """
  if source_rate == target_rate:
    return audio
  out = soxr.resample(audio, source_rate, target_rate, quality='HQ')
  size = math.ceil(audio.shape[0] * target_rate / source_rate)
  return out[:size] if out.shape[0] >= size else np.pad(out, (0, size - out.shape[0]))


def to_int16(audio: np.ndarray) -> tuple[np.ndarray, int]:
  """Converts float audio `[n]` to int16 `[n]`; returns it and the clipped count."""
  scaled = np.round(audio.astype(np.float64) * 32768.0)
  clipped = int(np.count_nonzero((scaled > 32767) | (scaled < -32768)))
  return np.clip(scaled, -32768, 32767).astype(np.int16), clipped


def load_clip(
  path: str | os.PathLike, sample_rate: int, limit: LengthLimit | None = None
) -> Decoded:
  """Reads, mixes down, resamples and quantises one file.

  Args:
    path: the audio file.
    sample_rate: target rate in Hz.
    limit: the longest clip (None: no limit).

  Returns:
    A good `Decoded` clip.

  Raises:
    AudioError: the file gives no clean clip.
  """
  samples, rate, seconds = read_audio(path, limit)
  frames, channels = samples.shape
  if frames == 0 or rate <= 0:
    raise AudioError(EMPTY_AUDIO, f'{frames} frames at {rate} Hz')
  cut_from = 0.0
  if limit and seconds > limit.max_seconds:  # Cut while reading, or a length no header told.
    if not limit.cut:
      raise limit.too_long(seconds)
    samples, cut_from = samples[: limit.frames(rate)], seconds
    frames = samples.shape[0]
  bad = int(np.count_nonzero(~np.isfinite(samples)))
  if bad:
    raise AudioError(NAN_SAMPLES, f'{bad} of {samples.size} samples are NaN or infinite')
  mono = samples.mean(axis=1) if channels > 1 else samples[:, 0]
  audio, clipped = to_int16(resample(mono, rate, sample_rate))
  if audio.size == 0:
    raise AudioError(EMPTY_AUDIO, 'no samples after resampling')
  if not audio.any():
    raise AudioError(SILENT_AUDIO, f'all {audio.size} samples are zero')
  return Decoded(audio, '', '', rate, channels, clipped, cut_from)


def decode_file(path: str, sample_rate: int, limit: LengthLimit | None = None) -> Decoded:
  """Like `load_clip`, but returns failures as a `Decoded` with a reason."""
  try:
    return load_clip(path, sample_rate, limit)
  except AudioError as error:
    return Decoded(None, reason=error.reason, detail=error.detail)
  except Exception as error:  # noqa: BLE001 - nothing a file holds may crash a build.
    return Decoded(None, reason=UNREADABLE, detail=f'{type(error).__name__}: {error}')


def _decode_job(job: tuple[str, str, int, LengthLimit | None]) -> tuple[str, Decoded]:
  key, path, sample_rate, limit = job
  return key, decode_file(path, sample_rate, limit)


WORKER_TYPES = ('thread', 'process')


class ClipDecoder:
  """Decodes many files at one sample rate, in parallel, in order.

  Threads are the default: libsndfile (through cffi), soxr and numpy release
  the GIL for the heavy work, so two threads keep two cores busy with no
  start-up cost and no copies between processes. Processes ('process') are
  started with 'spawn' (forking a process that may run JAX threads can
  deadlock), re-import this package (about 1.5 s each) and live until
  `close`; use them where a decoder holds the GIL.
  """

  def __init__(
    self,
    sample_rate: int,
    num_workers: int,
    progress: bool = True,
    worker_type: str = 'thread',
    limit: LengthLimit | None = None,
  ):
    """Creates the decoder.

    Args:
      sample_rate: target rate in Hz.
      num_workers: parallel decoders; 0 decodes in the calling thread.
      progress: show a tqdm progress bar.
      worker_type: 'thread' or 'process'.
      limit: the longest clip (None: no limit).
    """
    if worker_type not in WORKER_TYPES:
      raise ValueError(f'worker_type {worker_type!r} is not one of {WORKER_TYPES}')
    self.sample_rate = sample_rate
    self.num_workers = num_workers
    self.progress = progress
    self.worker_type = worker_type
    self.limit = limit
    self._executor = None

  def _make_executor(self) -> concurrent.futures.Executor:
    if self.worker_type == 'thread':
      return concurrent.futures.ThreadPoolExecutor(self.num_workers, 'aac-decode')
    context = multiprocessing.get_context('spawn')
    return concurrent.futures.ProcessPoolExecutor(self.num_workers, mp_context=context)

  def _map(self, jobs: list[tuple]) -> Iterator[tuple[str, Decoded]]:
    remaining = collections.deque(jobs)
    if self.num_workers > 0:
      yield from self._map_in_workers(remaining)
    while remaining:  # No workers, or they broke: decode here.
      yield _decode_job(remaining.popleft())

  def _map_in_workers(self, remaining: collections.deque) -> Iterator[tuple[str, Decoded]]:
    """Decodes from the left of `remaining` in workers, in order, until done or broken."""
    if self._executor is None:
      self._executor = self._make_executor()
    window = 4 * self.num_workers  # Bounded: memory stays flat if the writer is slower.
    pending = collections.deque()
    try:
      while remaining:
        while len(pending) < min(window, len(remaining)):
          pending.append(self._executor.submit(_decode_job, remaining[len(pending)]))
        result = pending.popleft().result()
        remaining.popleft()
        yield result
    except concurrent.futures.process.BrokenProcessPool as error:
      # E.g. a main module that cannot be re-imported ('python -'), or a worker
      # killed by the system. The jobs not done yet are decoded in-process.
      logging.warning('decoding workers failed (%s); decoding in-process', error)
      self.close()
      self.num_workers = 0

  def decode(
    self, files: Sequence[tuple[str, str]], description: str = 'decoding'
  ) -> Iterator[tuple[str, Decoded]]:
    """Decodes `(key, path)` pairs; yields `(key, Decoded)` in the same order."""
    jobs = [(key, os.fspath(path), self.sample_rate, self.limit) for key, path in files]
    bar = tqdm.tqdm(
      total=len(jobs), desc=description, unit='clip', disable=not self.progress, smoothing=0.1
    )
    skipped = 0
    with bar:
      for key, decoded in self._map(jobs):
        skipped += bool(decoded.reason)
        bar.update(1)
        if skipped:
          bar.set_postfix(skipped=skipped, refresh=False)
        yield key, decoded

  def close(self) -> None:
    """Stops the workers."""
    if self._executor is not None:
      self._executor.shutdown(wait=True, cancel_futures=True)
      self._executor = None


def nfc(name: str) -> str:
  """Unicode NFC form: file names match whether stored composed or not (macOS)."""
  return unicodedata.normalize('NFC', name)


def _within(path: str, folder: str) -> bool:
  """Whether the normalised absolute `path` is `folder` or inside it."""
  return os.path.commonpath([path, folder]) == folder


class FileFinder:
  """Finds the files a dataset's lists name, inside its source folder only.

  Names come from files someone else wrote. A name that leads outside
  `root` (`..`, an absolute path) is refused before anything is looked up;
  a file or folder that is a symlink pointing outside `root` is refused
  unless `allow_outside_symlinks`. Refusals raise `AudioError` with reason
  `OUTSIDE_SOURCE_DIR`; a name that is a fifo, device or folder raises
  `NOT_A_REGULAR_FILE`. Names match tolerant to Unicode normalisation and
  stray spaces.
  """

  def __init__(self, root: str | os.PathLike, allow_outside_symlinks: bool = False):
    """Creates the finder.

    Args:
      root: the source folder; nothing outside it is read.
      allow_outside_symlinks: follow symlinks that point outside `root`.
    """
    self.root = pathlib.Path(os.path.abspath(root))
    self._real_root = os.path.realpath(self.root)
    self.allow_outside_symlinks = allow_outside_symlinks
    self._listings: dict[pathlib.Path, dict[str, pathlib.Path]] = {}

  def _check_name(self, path: pathlib.Path, name: str) -> None:
    """Refuses `path` if it leads outside the root as written (no file system access)."""
    if not _within(os.path.normpath(os.path.abspath(path)), str(self.root)):
      raise AudioError(
        OUTSIDE_SOURCE_DIR, f'{name!r} leads outside the source folder {self.root}: not read'
      )

  def _check_target(self, path: pathlib.Path, name: str) -> None:
    """Refuses `path` if symlinks take it outside the root."""
    real = os.path.realpath(path)
    if not self.allow_outside_symlinks and not _within(real, self._real_root):
      raise AudioError(
        OUTSIDE_SOURCE_DIR,
        f'{name!r} resolves through a symlink to {real}, outside the source folder '
        f'{self.root}: not read '
        '(--allow_outside_symlinks follows such links)',
      )

  def listing(self, folder: pathlib.Path) -> dict[str, pathlib.Path]:
    """Returns `{nfc(name): path}` of the entries in `folder` other than folders (cached).

    A folder that symlinks lead outside the root is not listed (empty).
    """
    if folder not in self._listings:
      entries = {}
      outside = not _within(os.path.realpath(folder), self._real_root)
      if folder.is_dir() and not (outside and not self.allow_outside_symlinks):
        entries = {nfc(p.name): p for p in folder.iterdir() if not p.is_dir()}
      self._listings[folder] = entries
    return self._listings[folder]

  def _checked(self, path: pathlib.Path, name: str) -> pathlib.Path:
    self._check_target(path, name)
    check_regular_file(path)
    return path

  def find_path(self, path: pathlib.Path, name: str = '') -> pathlib.Path | None:
    """Returns `path` if it is a file inside the root, None where nothing is there.

    Raises:
      AudioError: `OUTSIDE_SOURCE_DIR` or `NOT_A_REGULAR_FILE`.
    """
    name = name or str(path)
    self._check_name(path, name)
    return self._checked(path, name) if os.path.lexists(path) else None

  def find(self, folder: pathlib.Path, relative: str) -> pathlib.Path | None:
    """Returns the file `folder / relative`, or None where there is none.

    Tries the exact name, then its NFC form among the folder's entries, then
    both again without surrounding spaces.

    Raises:
      AudioError: `OUTSIDE_SOURCE_DIR` or `NOT_A_REGULAR_FILE`.
    """
    for name in dict.fromkeys([relative, relative.strip()]):
      if not name:
        continue
      self._check_name(folder / name, relative)
      if os.path.lexists(folder / name):
        return self._checked(folder / name, relative)
      target = folder / nfc(name)
      self._check_target(target.parent, relative)  # Before listing a folder.
      if found := self.listing(target.parent).get(target.name):
        return self._checked(found, relative)
    return None


def audio_files(folder: pathlib.Path) -> list[pathlib.Path]:
  """Returns the audio files directly in `folder`, sorted by name."""
  if not folder.is_dir():
    return []
  return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
