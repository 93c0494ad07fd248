"""Captions audio files with a trained model (the `aac-caption` command).

  aac-caption --workdir workdirs/demo/ce clips/ street.mp3
  aac-caption --workdir RUN --step 2000 --method beam --beam_size 5 \\
      --no_repeat_ngram_size 3 --output captions.csv clips/
  python tools/caption.py --workdir RUN/checkpoints/2000 long_recording.flac --window 10 --hop 5

Inputs are files or folders (searched recursively for audio files) in any
format soundfile reads (wav, flac, ogg, mp3, ...) at any sample rate and
channel count: each is mixed down to mono and resampled to the model's rate
(`aac_jax.data.audio_io`). A recording longer than the window (default: the
model's training clip length) is captioned per window, with timestamps:

  long.flac:
    00:00-00:10  a dog barks twice
    00:10-00:14  a car passes by

Clips shorter than `--min_seconds` (default 0.25 s) are padded with
silence to that length and captioned; only files with less than
`--refuse_below` seconds of audio (default 0.01 s) are refused. Files that
give no audio (missing, not a regular file such as a fifo or `/dev/zero`,
which are never opened, unreadable, empty, too short, silent) are reported
on stderr and the rest are still captioned. In text output, names holding
line breaks or other unprintable characters are printed quoted and escaped
(Python string syntax). `--output X.csv` or `X.json` writes a table instead
of printing; `--format dcase` writes the DCASE submission CSV
(`file_name,caption_predicted`, one row per file, by file name). Exit
status: 0 every file captioned, 1 some files failed, 2 usage error (bad
flags, no model, no input files).
"""

import argparse
import collections
import csv
import dataclasses
import json
import logging
import os
import pathlib
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import TextIO

import numpy as np
from absl import logging as absl_logging

from aac_jax import decoding, inference
from aac_jax.data import audio_io
from aac_jax.train import logs

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2

# Reasons a file is not captioned, beyond `aac_jax.data.audio_io`'s.
EMPTY_FILE = 'empty_file'
TOO_SHORT = 'too_short'
NO_AUDIO_FILES = 'no_audio_files'

OUTPUT_FORMATS = ('text', 'csv', 'json', 'dcase')
# The DCASE challenge's submission columns (Clotho test set).
DCASE_COLUMNS = ('file_name', 'caption_predicted')

# Decoding flags: name -> (type, help). Unset flags keep the run's config.decode.
DECODE_FLAGS = {
  'method': (str, "'greedy', 'beam' or 'sample'"),
  'beam_size': (int, 'beams per clip (beam)'),
  'length_penalty': (float, 'alpha in ((5 + len) / 6) ** alpha (beam)'),
  'max_len': (int, 'maximum tokens per caption, EOS included'),
  'min_len': (int, 'minimum words before EOS'),
  'no_repeat_ngram_size': (int, 'no n-gram of this size repeats (0 = off)'),
  'temperature': (float, 'sampling temperature (sample)'),
  'top_k': (int, 'sample among the k most likely tokens (0 = off)'),
  'top_p': (float, 'nucleus sampling mass (1 = off)'),
  'rerank': (str, "'none' or 'clap': pick among beam_size candidates by CLAP (docs/clap.md)"),
  'rerank_weight': (float, 'weight of the CLAP cosine added to the decoder score (rerank)'),
  'rerank_clap_dir': (str, 'CLAP folder, tools/convert_checkpoint.py clap (rerank)'),
}


@dataclasses.dataclass
class FileResult:
  """What happened to one input file.

  Attributes:
    path: the file as named on the command line (or found in a folder).
    duration: seconds of decoded audio (0 when it failed).
    segments: `[(start_s, end_s, caption), ...]`, one per window.
    error: '' when captioned, else a reason (`audio_io` reasons, `EMPTY_FILE`,
      `TOO_SHORT`, `NO_AUDIO_FILES`).
    detail: human-readable detail of the error.
  """

  path: str
  duration: float = 0.0
  segments: list[tuple[float, float, str]] = dataclasses.field(default_factory=list)
  error: str = ''
  detail: str = ''


def make_parser() -> argparse.ArgumentParser:
  """The command-line flags."""
  parser = argparse.ArgumentParser(
    prog='aac-caption',
    description='Caption audio files with a trained aac_jax model.',
    epilog='Exit status: 0 all captioned, 1 some files failed, 2 usage error.',
  )
  parser.add_argument('inputs', nargs='+', help='audio files and/or folders (searched recursively)')
  add_model_flags(parser.add_argument_group('model'))
  _add_io_flags(parser.add_argument_group('input and output'))
  add_decode_flags(parser.add_argument_group('decoding (default: the run config.decode)'))
  return parser


def add_model_flags(group: argparse._ArgumentGroup) -> None:
  """--workdir, --step, --task, --batch_size, --verbose (shared with `aac-serve`)."""
  group.add_argument(
    '--workdir',
    '--run',
    '--checkpoint',
    dest='workdir',
    required=True,
    help='training run folder, or one of its checkpoints (RUN/checkpoints/STEP)',
  )
  group.add_argument('--step', type=int, help='checkpoint step (default: best, else latest)')
  group.add_argument(
    '--task',
    help='caption style: a dataset task of a CoNeTTE model or of a run trained on a '
    "mixture (e.g. 'audiocaps'; default: the dataset the run was evaluated on)",
  )
  group.add_argument('--batch_size', type=int, default=16, help='windows per model call')
  group.add_argument('--verbose', action='store_true', help='show library logs')


def _add_io_flags(group: argparse._ArgumentGroup) -> None:
  group.add_argument('--output', '-o', default='', help='write .csv or .json instead of printing')
  group.add_argument(
    '--format',
    choices=OUTPUT_FORMATS,
    help='default: from --output, else text; dcase: file_name,caption_predicted CSV',
  )
  group.add_argument('--num_workers', type=int, default=2, help='threads decoding audio files')
  add_window_flags(group)


def add_window_flags(group: argparse._ArgumentGroup) -> None:
  """--window, --hop, --min_seconds, --refuse_below (shared with `aac-serve`)."""
  group.add_argument('--window', type=float, help='seconds per window (default: training clips)')
  group.add_argument('--hop', type=float, help='seconds between window starts (default: --window)')
  group.add_argument(
    '--min_seconds',
    type=float,
    default=0.25,
    help='shorter files are padded with silence to this; shorter window tails are skipped',
  )
  group.add_argument(
    '--refuse_below',
    type=float,
    default=0.01,
    help='files with less audio than this (seconds) are refused as too_short',
  )


def add_decode_flags(group: argparse._ArgumentGroup) -> None:
  """The decoding flags (shared with `aac-serve`); unset ones keep the run's `config.decode`."""
  for name, (kind, text) in DECODE_FLAGS.items():
    choices = {'method': decoding.METHODS, 'rerank': ('none', 'clap')}.get(name)
    group.add_argument(f'--{name}', type=kind, choices=choices, help=text)
  group.add_argument(
    '--ban_repeated_content_words',
    action=argparse.BooleanOptionalAction,
    help='each content word at most once per caption',
  )
  group.add_argument('--seed', type=int, default=0, help='sampling seed (--method sample)')


def find_audio_files(inputs: Sequence[str]) -> tuple[list[str], list[FileResult]]:
  """Expands folders into the audio files inside them (sorted, recursive).

  Args:
    inputs: paths given on the command line.

  Returns:
    `(files, failures)`: files to read in order (explicit files are kept
    whatever their extension, so a missing one is reported when read), and
    a failure for each folder holding no audio file.
  """
  files, failures = [], []
  for name in inputs:
    path = pathlib.Path(name)
    if not path.is_dir():
      files.append(name)
      continue
    found = sorted(
      p
      for p in path.rglob('*')
      if p.is_file()
      and p.suffix.lower() in audio_io.AUDIO_EXTENSIONS
      and not any(part.startswith('.') for part in p.relative_to(path).parts)
    )
    if not found:
      extensions = ' '.join(sorted(audio_io.AUDIO_EXTENSIONS))
      failures.append(
        FileResult(name, error=NO_AUDIO_FILES, detail=f'no files ending in {extensions}')
      )
    files.extend(str(p) for p in found)
  return files, failures


def read_files(
  files: Sequence[str], sample_rate: int, refuse_below: float, num_workers: int
) -> Iterator[tuple[str, np.ndarray | None, FileResult | None]]:
  """Decodes files to float32 mono at `sample_rate`, in order.

  Args:
    files: paths to read (only regular files are opened).
    sample_rate: the model's rate in Hz.
    refuse_below: files with fewer seconds of audio fail as `TOO_SHORT`.
    num_workers: decoding threads.

  Yields:
    `(path, audio [samples] or None, failure or None)`.
  """
  decoder = audio_io.ClipDecoder(sample_rate, num_workers, progress=False)
  try:
    for path, decoded in decoder.decode([(f, f) for f in files]):
      audio, failure = check_decoded(path, decoded, sample_rate, refuse_below)
      yield path, audio, failure
  finally:
    decoder.close()


def check_decoded(
  path: str, decoded: audio_io.Decoded, sample_rate: int, refuse_below: float
) -> tuple[np.ndarray | None, FileResult | None]:
  """Turns one decoded file into float audio, or the reason it is refused.

  Adds the command's own reasons to `audio_io`'s: `EMPTY_FILE` for a 0-byte
  file, `TOO_SHORT` below `refuse_below` seconds.

  Args:
    path: the file that was decoded.
    decoded: `audio_io.decode_file`'s result for it.
    sample_rate: the model's rate in Hz.
    refuse_below: files with fewer seconds of audio fail as `TOO_SHORT`.

  Returns:
    `(audio, None)` with float32 `[samples]` in [-1, 1], or `(None, failure)`.
  """
  reason, detail = decoded.reason, decoded.detail
  if reason == audio_io.UNREADABLE and os.path.isfile(path) and os.path.getsize(path) == 0:
    reason, detail = EMPTY_FILE, 'the file is 0 bytes'
  if not reason and decoded.audio.shape[0] < refuse_below * sample_rate:
    seconds = decoded.audio.shape[0] / sample_rate
    reason, detail = (
      TOO_SHORT,
      f'{seconds:.4f} s of audio, less than --refuse_below {refuse_below:g} s',
    )
  if reason:
    return None, FileResult(path, error=reason, detail=detail)
  return decoded.audio.astype(np.float32) / 32768.0, None


def cut_windows(
  audio: np.ndarray, window: int, hop: int, min_samples: int
) -> list[tuple[int, int, np.ndarray]]:
  """The windows a recording is captioned in.

  Args:
    audio: float32 `[samples]`.
    window: window length in samples.
    hop: distance between window starts in samples.
    min_samples: shorter audio is padded with silence to this length (at
      most one window); shorter window tails are left out.

  Returns:
    `[(start, end, clip), ...]`: `start`/`end` in samples of the real audio
    (the padding is not counted), `clip` float32 `[<= window]`.
  """
  real = audio.shape[0]
  min_samples = min(min_samples, window)
  if real < min_samples:  # Silence the model sees as audio: enough frames to encode.
    audio = np.pad(audio, (0, min_samples - real))
  bounds = inference.window_bounds(audio.shape[0], window, hop, min_samples)
  return [(start, min(end, real), audio[start:end]) for start, end in bounds]


def format_timestamp(seconds: float) -> str:
  """`MM:SS` (`H:MM:SS` past an hour), with tenths when not whole: `01:02.5`."""
  tenths = int(round(seconds * 10))
  whole, tenth = divmod(tenths, 10)
  hours, rest = divmod(whole, 3600)
  minutes, secs = divmod(rest, 60)
  text = f'{hours}:{minutes:02d}:{secs:02d}' if hours else f'{minutes:02d}:{secs:02d}'
  return f'{text}.{tenth}' if tenth else text


def display_name(path: str) -> str:
  """`path` as printed: verbatim, or quoted and escaped where it could mislead.

  A name with a line break, another unprintable character (undecodable
  bytes included) or a leading quote is printed as a Python string
  literal, so one file is always one unambiguous name on one line.
  """
  if path.isprintable() and not path.startswith(("'", '"')):
    return path
  return repr(path)


def format_text(result: FileResult) -> str:
  """One line for a single-window file, else a header and one line per window."""
  name = display_name(result.path)
  if len(result.segments) == 1:
    return f'{name}: {result.segments[0][2]}'
  lines = [f'{name}:']
  for start, end, caption in result.segments:
    lines.append(f'  {format_timestamp(start)}-{format_timestamp(end)}  {caption}')
  return '\n'.join(lines)


def report_failure(result: FileResult) -> None:
  """One clear line on stderr."""
  name = display_name(result.path)
  print(f'aac-caption: FAILED {name}: {result.error} ({result.detail})', file=sys.stderr)


class CaptionStream:
  """Queues windows of many files, captions them in batches, yields files in order."""

  def __init__(self, captioner, hop_samples: int, min_samples: int):
    """Creates the stream.

    Args:
      captioner: the `inference.AudioCaptioner`.
      hop_samples: distance between window starts.
      min_samples: shorter files are padded with silence to this length
        (at most one window); shorter window tails are left out.
    """
    self._captioner = captioner
    self._hop = hop_samples
    self._min = min_samples
    self._rate = captioner.loaded.sample_rate
    self._files: list[FileResult] = []  # Waiting to be emitted, in input order.
    self._todo: dict[int, int] = {}  # id(file) -> windows not captioned yet.
    self._queue: list[tuple[FileResult, int, np.ndarray]] = []

  def add(self, result: FileResult, audio: np.ndarray | None) -> Iterator[FileResult]:
    """Adds a file (audio None: a failure) and yields the files now complete."""
    self._files.append(result)
    if audio is not None:
      result.duration = audio.shape[0] / self._rate
      windows = cut_windows(audio, self._captioner.window_samples, self._hop, self._min)
      self._todo[id(result)] = len(windows)
      for start, end, clip in windows:
        result.segments.append((start / self._rate, end / self._rate, ''))
        self._queue.append((result, len(result.segments) - 1, clip))
    while len(self._queue) >= self._captioner.batch_size:
      self._run(self._captioner.batch_size)
    yield from self._ready()

  def finish(self) -> Iterator[FileResult]:
    """Captions what is queued and yields the remaining files."""
    while self._queue:
      self._run(self._captioner.batch_size)
    yield from self._ready()

  def _run(self, count: int) -> None:
    batch, self._queue = self._queue[:count], self._queue[count:]
    captions = self._captioner.caption_clips([clip for _, _, clip in batch])
    for (result, index, _), caption in zip(batch, captions, strict=True):
      start, end, _ = result.segments[index]
      result.segments[index] = (start, end, caption)
      self._todo[id(result)] -= 1

  def _ready(self) -> Iterator[FileResult]:
    while self._files and self._todo.get(id(self._files[0]), 0) == 0:
      result = self._files.pop(0)
      self._todo.pop(id(result), None)
      yield result


def write_csv(stream: TextIO, results: Sequence[FileResult]) -> None:
  """`file,start,end,caption` (seconds), one row per window of each captioned file."""
  writer = csv.writer(stream)
  writer.writerow(['file', 'start', 'end', 'caption'])
  for result in results:
    for start, end, caption in result.segments:
      writer.writerow([result.path, f'{start:.3f}', f'{end:.3f}', caption])


def write_dcase_csv(stream: TextIO, rows: Iterable[tuple[str, str]]) -> None:
  """Writes the DCASE submission CSV: header `file_name,caption_predicted`.

  Args:
    stream: a text stream opened with `newline=''`.
    rows: `(file_name, caption)` pairs, one per clip.
  """
  writer = csv.writer(stream)
  writer.writerow(DCASE_COLUMNS)
  writer.writerows(rows)


def dcase_rows(results: Sequence[FileResult]) -> list[tuple[str, str]]:
  """`(file name, caption)` of each captioned file: its first window's caption."""
  rows = []
  for result in results:
    if result.error:
      continue
    if len(result.segments) > 1:
      print(
        f'aac-caption: {display_name(result.path)}: {len(result.segments)} windows; the dcase '
        'format keeps the first (a longer --window covers the whole clip)',
        file=sys.stderr,
      )
    rows.append((os.path.basename(result.path), result.segments[0][2]))
  return rows


def repeated_file_names(files: Sequence[str]) -> list[str]:
  """File names (without folder) that more than one of `files` has."""
  counts = collections.Counter(os.path.basename(f) for f in files)
  return sorted(name for name, count in counts.items() if count > 1)


def json_document(results: Sequence[FileResult], model_info: dict) -> dict:
  """`{model: ..., files: [{file, duration, segments | error, detail}]}`."""
  files = []
  for r in results:
    if r.error:
      files.append({'file': r.path, 'error': r.error, 'detail': r.detail})
      continue
    segments = [{'start': round(s, 3), 'end': round(e, 3), 'caption': c} for s, e, c in r.segments]
    files.append({'file': r.path, 'duration': round(r.duration, 3), 'segments': segments})
  return {'model': model_info, 'files': files}


def _output_format(args: argparse.Namespace) -> str:
  if args.format:
    return args.format
  suffix = pathlib.Path(args.output).suffix.lower()
  if args.output and suffix not in ('.csv', '.json'):
    raise ValueError(f'--output {args.output}: use a .csv or .json name, or give --format')
  return suffix[1:] if args.output else 'text'


def check_args(args: argparse.Namespace) -> None:
  """Raises ValueError for window, length and batch flags out of range."""
  if not 0 < args.refuse_below <= args.min_seconds:
    raise ValueError('need 0 < --refuse_below <= --min_seconds')
  if args.window is not None and args.window <= 0:
    raise ValueError('--window must be positive')
  if args.hop is not None and args.hop <= 0:
    raise ValueError('--hop must be positive')
  if args.batch_size < 1:
    raise ValueError('--batch_size must be >= 1')


def quiet_libraries(verbose: bool) -> None:
  """Keeps library INFO lines and orbax's warnings off the user's terminal.

  Warnings of this package stay: a checkpoint that cannot be read, and why,
  when an older one is used instead.
  """
  if not verbose:
    logs.quiet_console(absl_logging.WARNING)
    logging.getLogger('jax').setLevel(logging.ERROR)


def build_captioner(args: argparse.Namespace):
  """Loads the model and builds the `AudioCaptioner` for these flags."""
  loaded = inference.load_model(args.workdir, args.step)
  if args.task:
    loaded = inference.with_task(loaded, args.task)
  overrides = {name: getattr(args, name) for name in DECODE_FLAGS}
  overrides['ban_repeated_content_words'] = args.ban_repeated_content_words
  settings, mask = inference.make_settings(loaded, **overrides)
  captioner = inference.AudioCaptioner(
    loaded,
    settings,
    repeat_ban_mask=mask,
    batch_size=args.batch_size,
    window_seconds=args.window,
    seed=args.seed,
  )
  return captioner


def model_info(captioner) -> dict:
  """Where the captions come from (for the JSON output and the log line)."""
  loaded = captioner.loaded
  return {
    'workdir': loaded.workdir,
    'step': loaded.step,
    'checkpoint': loaded.step_kind,
    'window_seconds': captioner.window_samples / loaded.sample_rate,
    'decode': dataclasses.asdict(captioner.settings),
  }


def hop_and_min_samples(args: argparse.Namespace, window: int, rate: int) -> tuple[int, int]:
  """`(hop, min_samples)` of `--hop` (default: the window) and `--min_seconds`, in samples."""
  hop = window if args.hop is None else max(1, int(round(args.hop * rate)))
  return hop, max(1, int(round(args.min_seconds * rate)))


def caption_files(args: argparse.Namespace, captioner, files, failures) -> list[FileResult]:
  """Captions every file, printing as it goes in text mode; returns all results."""
  rate = captioner.loaded.sample_rate
  stream = CaptionStream(captioner, *hop_and_min_samples(args, captioner.window_samples, rate))
  text = _output_format(args) == 'text'
  results = []

  def emit(done: Iterator[FileResult]) -> None:
    for result in done:
      results.append(result)
      if result.error:
        report_failure(result)
      elif text:
        print(format_text(result), flush=True)

  emit(iter(failures))
  for path, audio, failure in read_files(files, rate, args.refuse_below, args.num_workers):
    emit(stream.add(failure or FileResult(path), audio))
  emit(stream.finish())
  return results


def write_output(args: argparse.Namespace, results: Sequence[FileResult], info: dict) -> None:
  """Writes the CSV/JSON file (or prints it to stdout without --output)."""
  kind = _output_format(args)
  if kind == 'text':
    return
  if not args.output:
    _write(kind, sys.stdout, results, info)
    return
  with open(args.output, 'w', newline='', encoding='utf-8') as stream:
    _write(kind, stream, results, info)
  print(f'aac-caption: wrote {args.output}', file=sys.stderr)


def _write(kind: str, stream: TextIO, results: Sequence[FileResult], info: dict) -> None:
  if kind == 'csv':
    write_csv(stream, results)
  elif kind == 'dcase':
    write_dcase_csv(stream, dcase_rows(results))
  else:
    stream.write(json.dumps(json_document(results, info), indent=1, ensure_ascii=False) + '\n')


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command; returns the exit status (see the module docstring)."""
  parser = make_parser()
  args = parser.parse_args(argv)  # Exits with 2 on bad flags.
  try:
    check_args(args)
    _output_format(args)
  except ValueError as error:
    parser.print_usage(sys.stderr)
    print(f'aac-caption: error: {error}', file=sys.stderr)
    return EXIT_USAGE
  files, failures = find_audio_files(args.inputs)
  repeated = repeated_file_names(files) if _output_format(args) == 'dcase' else []
  if repeated:
    print(
      'aac-caption: error: the dcase format names clips by file name, and these names '
      f'repeat in different folders: {", ".join(map(display_name, repeated[:10]))}',
      file=sys.stderr,
    )
    return EXIT_USAGE
  if not files:
    for failure in failures:
      report_failure(failure)
    print('aac-caption: error: no audio files to caption', file=sys.stderr)
    return EXIT_USAGE
  quiet_libraries(args.verbose)
  # Imported here: loading orbax/flax takes seconds, `--help` and usage errors should not.
  try:
    captioner = build_captioner(args)
  except (inference.ModelLoadError, ValueError) as error:
    print(f'aac-caption: error: cannot use model {args.workdir}: {error}', file=sys.stderr)
    return EXIT_USAGE
  info = model_info(captioner)
  print(
    f'aac-caption: model {info["workdir"]} step {info["step"]} ({info["checkpoint"]}), '
    f'{captioner.settings.method} decoding, {info["window_seconds"]:g} s windows',
    file=sys.stderr,
  )
  results = caption_files(args, captioner, files, failures)
  write_output(args, results, info)
  failed = [r for r in results if r.error]
  print(
    f'aac-caption: captioned {len(results) - len(failed)} of {len(results)} inputs'
    + (f'; {len(failed)} failed (see above)' if failed else ''),
    file=sys.stderr,
  )
  return EXIT_SOME_FAILED if failed else EXIT_OK


def run() -> None:
  """Console script `aac-caption`."""
  sys.exit(main())


if __name__ == '__main__':
  run()
