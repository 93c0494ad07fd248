"""Reads the audio files of a real dataset into clean int16 clips.

Any file libsndfile reads (wav, flac, ogg, mp3, aiff, ...) is decoded with
soundfile; other formats fall back to audioread (as `librosa.load` does; it
needs ffmpeg or GStreamer). Every clip is mixed down to mono (mean of the
channels), resampled to the builder's rate with soxr (librosa's `soxr_hq`)
and stored as int16 (`round(x * 32768)`, the inverse of the pipeline's
`int16 / 32768`); samples beyond full scale are clipped and counted.

A file that cannot give a clean clip is never fatal: `decode_file` returns a
`Decoded` whose `reason` says why (missing, unreadable, truncated, empty,
silent, NaN samples), and the builder reports it. `ClipDecoder` runs
`decode_file` over a whole split in worker threads (or processes), in order,
with a progress bar.
"""

import collections
import concurrent.futures
import csv
import dataclasses
import io
import math
import multiprocessing
import os
import pathlib
import re
import unicodedata
import warnings
from collections.abc import Iterable, Iterator, Sequence

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
  """

  audio: np.ndarray | None
  reason: str = ''
  detail: str = ''
  source_rate: int = 0
  source_channels: int = 0
  clipped: int = 0


def _read_with_audioread(path: str, soundfile_error: Exception) -> tuple[np.ndarray, int]:
  """Decodes a format libsndfile cannot open (librosa's fallback, without librosa).

  Returns:
    `(samples, rate)`: float32 `[frames, channels]` and the sample rate.
  """
  with warnings.catch_warnings():  # It imports aifc, audioop, sunau (deprecated).
    warnings.simplefilter('ignore', DeprecationWarning)
    import audioread  # A librosa dependency; needs ffmpeg or GStreamer to decode.
    import audioread.rawread  # noqa: F401 - imported by audio_open; here, quietly.

  try:
    with audioread.audio_open(path) as handle:
      rate, channels = handle.samplerate, handle.channels
      data = b''.join(handle)
  except Exception as error:  # noqa: BLE001 - any decoder failure is a skip.
    raise AudioError(
      UNREADABLE, f'soundfile: {soundfile_error}; audioread: {type(error).__name__}: {error}'
    ) from error
  samples = np.frombuffer(data, dtype='<i2').astype(np.float32) / 32768.0
  return samples[: samples.size - samples.size % channels].reshape(-1, channels), int(rate)


def _check_complete(read_frames: int, declared: int, log: str) -> None:
  """Raises `AudioError(TRUNCATED)` if the file holds less than it declares."""
  for declared_bytes, real_bytes in _WAV_SHORT_DATA.findall(log):
    if int(real_bytes) < int(declared_bytes):
      raise AudioError(
        TRUNCATED, f'data chunk declares {declared_bytes} bytes, file holds {real_bytes}'
      )
  if declared < _UNKNOWN_FRAMES and read_frames < declared * (1 - _TRUNCATION_TOLERANCE):
    raise AudioError(TRUNCATED, f'decoded {read_frames} of {declared} declared frames')


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
  """Reads a whole audio file.

  Args:
    path: the file.

  Returns:
    `(samples, rate)`: float32 `[frames, channels]` in [-1, 1] (integer
    formats) and the file's sample rate.

  Raises:
    AudioError: missing, unreadable or truncated file.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise AudioError(MISSING_FILE, 'no such file')
  try:
    handle = sf.SoundFile(path)
  except Exception as error:  # noqa: BLE001 - not a libsndfile format: try audioread.
    return _read_with_audioread(path, error)
  with handle:
    declared, rate = handle.frames, handle.samplerate
    try:
      samples = handle.read(dtype='float32', always_2d=True)
    except Exception as error:  # noqa: BLE001 - a decoder error mid-file.
      raise AudioError(UNREADABLE, f'decoding failed: {error}') from error
    log = handle.extra_info
  _check_complete(samples.shape[0], declared, log)
  return samples, int(rate)


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


def load_clip(path: str | os.PathLike, sample_rate: int) -> Decoded:
  """Reads, mixes down, resamples and quantises one file.

  Args:
    path: the audio file.
    sample_rate: target rate in Hz.

  Returns:
    A good `Decoded` clip.

  Raises:
    AudioError: the file gives no clean clip.
  """
  samples, rate = read_audio(path)
  frames, channels = samples.shape
  if frames == 0 or rate <= 0:
    raise AudioError(EMPTY_AUDIO, f'{frames} frames at {rate} Hz')
  bad = int(np.count_nonzero(~np.isfinite(samples)))
  if bad:
    raise AudioError(NAN_SAMPLES, f'{bad} of {samples.size} samples are NaN or infinite')
  mono = samples.mean(axis=1) if channels > 1 else samples[:, 0]
  audio, clipped = to_int16(resample(mono, rate, sample_rate))
  if audio.size == 0:
    raise AudioError(EMPTY_AUDIO, 'no samples after resampling')
  if not audio.any():
    raise AudioError(SILENT_AUDIO, f'all {audio.size} samples are zero')
  return Decoded(audio, source_rate=rate, source_channels=channels, clipped=clipped)


def decode_file(path: str, sample_rate: int) -> Decoded:
  """Like `load_clip`, but returns failures as a `Decoded` with a reason."""
  try:
    return load_clip(path, sample_rate)
  except AudioError as error:
    return Decoded(None, reason=error.reason, detail=error.detail)
  except Exception as error:  # noqa: BLE001 - nothing a file holds may crash a build.
    return Decoded(None, reason=UNREADABLE, detail=f'{type(error).__name__}: {error}')


def _decode_job(job: tuple[str, str, int]) -> tuple[str, Decoded]:
  key, path, sample_rate = job
  return key, decode_file(path, sample_rate)


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
    self, sample_rate: int, num_workers: int, progress: bool = True, worker_type: str = 'thread'
  ):
    """Creates the decoder.

    Args:
      sample_rate: target rate in Hz.
      num_workers: parallel decoders; 0 decodes in the calling thread.
      progress: show a tqdm progress bar.
      worker_type: 'thread' or 'process'.
    """
    if worker_type not in WORKER_TYPES:
      raise ValueError(f'worker_type {worker_type!r} is not one of {WORKER_TYPES}')
    self.sample_rate = sample_rate
    self.num_workers = num_workers
    self.progress = progress
    self.worker_type = worker_type
    self._executor = None

  def _make_executor(self) -> concurrent.futures.Executor:
    if self.worker_type == 'thread':
      return concurrent.futures.ThreadPoolExecutor(self.num_workers, 'aac-decode')
    context = multiprocessing.get_context('spawn')
    return concurrent.futures.ProcessPoolExecutor(self.num_workers, mp_context=context)

  def _map(self, jobs: list[tuple[str, str, int]]) -> Iterator[tuple[str, Decoded]]:
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
    jobs = [(key, os.fspath(path), self.sample_rate) for key, path in files]
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


class FileFinder:
  """Finds files by name, tolerant to Unicode normalisation and stray spaces."""

  def __init__(self):
    self._listings: dict[pathlib.Path, dict[str, pathlib.Path]] = {}

  def listing(self, folder: pathlib.Path) -> dict[str, pathlib.Path]:
    """Returns `{nfc(name): path}` for the plain files in `folder` (cached)."""
    if folder not in self._listings:
      entries = {}
      if folder.is_dir():
        entries = {nfc(p.name): p for p in folder.iterdir() if p.is_file()}
      self._listings[folder] = entries
    return self._listings[folder]

  def find(self, folder: pathlib.Path, relative: str) -> pathlib.Path | None:
    """Returns the file `folder / relative`, or None where there is none.

    Tries the exact name, then its NFC form among the folder's files, then
    both again without surrounding spaces.
    """
    for name in dict.fromkeys([relative, relative.strip()]):
      if name and (folder / name).is_file():
        return folder / name
      target = folder / nfc(name)
      if name and (found := self.listing(target.parent).get(target.name)):
        return found
    return None


def audio_files(folder: pathlib.Path) -> list[pathlib.Path]:
  """Returns the audio files directly in `folder`, sorted by name."""
  if not folder.is_dir():
    return []
  return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)


def read_csv_rows(
  path: pathlib.Path, encodings: Iterable[str] = ('utf-8-sig', 'iso-8859-1')
) -> tuple[list[tuple[int, dict]], str]:
  """Reads a CSV with a header row, trying `encodings` in order.

  Quoted fields (commas, quotes, new lines inside captions or file names)
  are handled by the csv module. A row with missing fields has None there;
  surplus fields are under the key None.

  Args:
    path: the CSV file.
    encodings: tried in order; the first that decodes the whole file wins.

  Returns:
    `([(line_number, row_dict), ...], encoding_used)`.

  Raises:
    ValueError: the file cannot be parsed as CSV.
  """
  data = path.read_bytes()
  for encoding in encodings:
    try:
      text = data.decode(encoding)
      break
    except UnicodeDecodeError:
      continue
  else:
    raise ValueError(f'{path}: not decodable as any of {tuple(encodings)}')
  reader = csv.DictReader(io.StringIO(text, newline=''))
  if reader.fieldnames is not None:
    reader.fieldnames = [name.strip() for name in reader.fieldnames]
  rows = []
  try:
    for row in reader:
      if any(value not in (None, '') for value in row.values()):  # Skip blank lines.
        rows.append((reader.line_num, row))
  except csv.Error as error:  # E.g. NUL bytes: the file is not a CSV past this point.
    raise ValueError(f'{path}: line {reader.line_num}: {error}') from error
  return rows, encoding
