"""`aac-build-dataset`: builds Clotho, AudioCaps, WavCaps, MACS or your own folder as TFDS.

  aac-build-dataset clotho --source_dir ~/data/clotho
  aac-build-dataset audiocaps --source_dir ~/data/audiocaps \\
      [--audio_pattern '{split}/{youtube_id}.wav' ...]
  aac-build-dataset custom --source_dir ~/data/birds [--manifest m.jsonl] \\
      [--config_name birds]
  aac-build-dataset wavcaps --source_dir ~/data/wavcaps \\
      [--exclude ~/data/wavcaps/json_files/blacklist/blacklist_exclude_all_ac.json]
  aac-build-dataset macs --source_dir ~/data/macs
  aac-build-dataset bench [--clips 1000] [--seconds 2]

Common flags: `--data_dir` (TFDS data_dir, default ~/tensorflow_datasets),
`--sample_rate` (default 16000), `--num_workers` (parallel decoders,
default 2), `--worker_type` (thread or process), `--no_progress`; builds
also take `--strict` (fail on any bad input), `--report` (report path),
`--overwrite` (delete an existing build, then rebuild), `--config_name`,
`--max_seconds` and `--long_clips {skip,cut}` (longest clip stored, default
600 s; longer files skipped as `too_long` or cut to their first part) and
`--allow_outside_symlinks` (follow symlinks pointing outside --source_dir;
by default such files, like `..` and absolute paths leading out, are
skipped unread as `outside_source_dir`), and `--beam
[--beam_pipeline_options=runner=DataflowRunner,project=...]` (decode on
Apache Beam: the same records and one merged report; needs
`pip install 'aac_jax[beam]'`, see `beam_build`).

The dataset lands in `<data_dir>/<name>/<config>/1.0.0/` with its
`build_report.json`; read it with `tfds.data_source('clotho_aac/16000hz',
split=..., data_dir=...)`. `bench` writes a Clotho-layout tree of short
clips in a temporary folder, builds it and prints clips/s.
"""

import argparse
import pathlib
import sys
import tempfile
import time

import numpy as np
import soundfile as sf
import tensorflow_datasets as tfds
from absl import logging

from aac_jax.data import (
  audio_io,
  audiocaps,
  beam_build,
  build_report,
  clotho,
  custom_folder,
  macs,
  wavcaps,
)

BUILDERS = {
  'clotho': clotho.ClothoAac,
  'audiocaps': audiocaps.AudiocapsAac,
  'custom': custom_folder.CustomAac,
  'wavcaps': wavcaps.WavcapsAac,
  'macs': macs.MacsAac,
}


# argparse's status for a bad command line; also a missing optional extra.
USAGE_ERROR = 2


def _add_common_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--data_dir', default='~/tensorflow_datasets', help='TFDS data_dir.')
  parser.add_argument('--sample_rate', type=int, default=build_report.DEFAULT_SAMPLE_RATE)
  parser.add_argument('--num_workers', type=int, default=build_report.BuildOptions.num_workers)
  parser.add_argument('--worker_type', choices=audio_io.WORKER_TYPES, default='thread')
  parser.add_argument('--no_progress', action='store_true', help='No progress bar.')


def make_parser() -> argparse.ArgumentParser:
  """Returns the command-line parser (one sub-command per dataset, and `bench`)."""
  parser = argparse.ArgumentParser(prog='aac-build-dataset', description=__doc__.split('\n')[0])
  commands = parser.add_subparsers(dest='dataset', required=True)
  for name in BUILDERS:
    command = commands.add_parser(name, help=f'build {BUILDERS[name].name}')
    command.add_argument('--source_dir', required=True, help='Your local copy (TFDS manual_dir).')
    _add_common_flags(command)
    command.add_argument('--strict', action='store_true', help='Fail on any bad input.')
    command.add_argument('--report', default='', help='Report path (default: in the dataset).')
    command.add_argument(
      '--overwrite', action='store_true', help='Rebuild if it exists (deletes it first).'
    )
    command.add_argument('--config_name', default='', help="Config name ('' = '<rate>hz').")
    command.add_argument(
      '--max_seconds',
      type=float,
      default=build_report.DEFAULT_MAX_SECONDS,
      help='Longest clip stored, in seconds.',
    )
    command.add_argument(
      '--long_clips',
      choices=build_report.LONG_CLIP_ACTIONS,
      default='skip',
      help='Longer files: skip them (too_long) or keep their first --max_seconds.',
    )
    command.add_argument(
      '--allow_outside_symlinks',
      action='store_true',
      help='Follow symlinks that point outside --source_dir (refused by default).',
    )
    command.add_argument(
      '--beam',
      action='store_true',
      help="Decode on Apache Beam, not --num_workers local decoders (pip install 'aac_jax[beam]').",
    )
    command.add_argument(
      '--beam_pipeline_options',
      default='',
      help="With --beam: 'runner=DataflowRunner,project=P,...' ('' = local DirectRunner).",
    )
  commands.choices['audiocaps'].add_argument(
    '--audio_pattern',
    action='append',
    help='Audio path pattern, relative to --source_dir (repeat to try several; '
    f'default: {" ".join(audiocaps.DEFAULT_AUDIO_PATTERNS)}).',
  )
  commands.choices['custom'].add_argument('--manifest', default='', help='Manifest file.')
  commands.choices['wavcaps'].add_argument(
    '--exclude',
    default='',
    help='Overlap list to leave out (WavCaps blacklist JSON, e.g. '
    'json_files/blacklist/blacklist_exclude_all_ac.json).',
  )
  bench = commands.add_parser('bench', help='time a build of a split of short clips')
  _add_common_flags(bench)
  bench.add_argument('--clips', type=int, default=1000)
  bench.add_argument('--seconds', type=float, default=2.0, help='Length of each clip.')
  bench.add_argument('--source_rate', type=int, default=44100, help='Rate of the written clips.')
  bench.add_argument('--workdir', default='', help='Where to write (default: a temp folder).')
  return parser


def make_builder(
  dataset: str,
  data_dir: str,
  sample_rate: int = build_report.DEFAULT_SAMPLE_RATE,
  options: build_report.BuildOptions | None = None,
  config_name: str = '',
  **builder_kwargs,
) -> build_report.ReportingBuilder:
  """Returns the builder of `dataset` ('clotho', 'audiocaps' or 'custom').

  Args:
    dataset: a key of `BUILDERS`.
    data_dir: TFDS data_dir to write to.
    sample_rate: stored rate in Hz.
    options: strictness, workers, progress, report path.
    config_name: builder config name ('' = '<rate>hz').
    **builder_kwargs: `audio_patterns` (audiocaps), `manifest` (custom) or
      `exclude` (wavcaps).
  """
  cls = BUILDERS[dataset]
  return cls(
    data_dir=str(pathlib.Path(data_dir).expanduser()),
    config=cls.make_config(sample_rate, config_name),
    options=options or build_report.BuildOptions(),
    **builder_kwargs,
  )


def prepare(builder: build_report.ReportingBuilder, source_dir: str, overwrite: bool = False):
  """Builds the dataset from `source_dir`, unless it exists and `overwrite` is False.

  Afterwards `builder.report` and `builder.report_path` describe the build
  (both None when an existing dataset was reused).

  Raises:
    BuildError: strict build with bad input, or nothing to build.
    BeamMissing: a Beam build (`options.beam`) without apache_beam.
  """
  mode = tfds.download.GenerateMode
  beam_options = None
  if builder.options.beam:
    beam_options = beam_build.pipeline_options(builder.options.beam_pipeline_options)
  download_config = tfds.download.DownloadConfig(
    manual_dir=str(pathlib.Path(source_dir).expanduser()),
    download_mode=mode.REUSE_CACHE_IF_EXISTS if overwrite else mode.REUSE_DATASET_IF_EXISTS,
    beam_options=beam_options,
  )
  builder.download_and_prepare(download_config=download_config)


def build(dataset: str, source_dir: str, data_dir: str, **kwargs) -> build_report.ReportingBuilder:
  """`make_builder` then `prepare`; `overwrite` and `make_builder`'s arguments as keywords."""
  overwrite = kwargs.pop('overwrite', False)
  builder = make_builder(dataset, data_dir, **kwargs)
  prepare(builder, source_dir, overwrite)
  return builder


def write_bench_tree(
  root: pathlib.Path, clips: int, seconds: float, rate: int, split: str = 'validation'
) -> None:
  """Writes a Clotho-layout split of `clips` noise clips with made-up captions."""
  folder = root / 'clotho_audio_files' / split
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  lines = ['file_name,caption_1,caption_2,caption_3,caption_4,caption_5']
  for i in range(clips):
    name = f'bench clip, number {i:05d}.wav'
    audio = rng.normal(0.0, 0.1, size=int(seconds * rate)).astype(np.float32)
    sf.write(folder / name, audio, rate, subtype='PCM_16')
    captions = ','.join(f'noise clip {i} caption {j}' for j in range(1, 6))
    lines.append(f'"{name}",{captions}')
  (root / f'clotho_captions_{split}.csv').write_text('\n'.join(lines) + '\n')


def bench(args: argparse.Namespace) -> None:
  """Builds a split of `args.clips` short clips and prints clips/s."""
  with tempfile.TemporaryDirectory(dir=args.workdir or None) as tmp:
    root = pathlib.Path(tmp)
    start = time.perf_counter()
    write_bench_tree(root / 'source', args.clips, args.seconds, args.source_rate)
    logging.info('bench: wrote %d clips in %.1f s', args.clips, time.perf_counter() - start)
    options = build_report.BuildOptions(
      num_workers=args.num_workers, worker_type=args.worker_type, progress=not args.no_progress
    )
    start = time.perf_counter()
    builder = build(
      'clotho',
      str(root / 'source'),
      str(root / 'tfds'),
      sample_rate=args.sample_rate,
      options=options,
    )
    wall = time.perf_counter() - start
  split = builder.report.splits['validation']
  print(
    f'bench: {split.clips_written} of {args.clips} clips written ({args.seconds:g} s, '
    f'{args.source_rate} Hz wav -> {args.sample_rate} Hz), {args.num_workers} '
    f'{args.worker_type} workers: '
    f'{split.clips_per_second():.1f} clips/s decode+write, '
    f'{split.clips_written / wall:.1f} clips/s end to end ({wall:.1f} s)'
  )


def run(argv: list[str] | None = None) -> int:
  """Console entry point; returns the exit status (1: the build failed; 2: a bad command
  line, or --beam without apache-beam installed)."""
  args = make_parser().parse_args(sys.argv[1:] if argv is None else argv)
  logging.set_verbosity(logging.INFO)
  tfds.disable_progress_bar()  # Ours counts clips; TFDS's would interleave with it.
  if args.dataset == 'bench':
    bench(args)
    return 0
  extra = {}
  if args.dataset == 'audiocaps' and args.audio_pattern:
    extra['audio_patterns'] = args.audio_pattern
  if args.dataset == 'custom':
    extra['manifest'] = args.manifest
  if args.dataset == 'wavcaps':
    extra['exclude'] = args.exclude
  if args.beam:
    try:
      beam_build.import_beam()
    except beam_build.BeamMissing as error:
      print(f'aac-build-dataset: {error}', file=sys.stderr)
      return USAGE_ERROR
  builder = None
  try:
    options = build_report.BuildOptions(
      strict=args.strict,
      num_workers=args.num_workers,
      worker_type=args.worker_type,
      progress=not args.no_progress,
      report_path=args.report,
      max_seconds=args.max_seconds,
      long_clips=args.long_clips,
      allow_outside_symlinks=args.allow_outside_symlinks,
      beam=args.beam,
      beam_pipeline_options=args.beam_pipeline_options,
    )
    builder = make_builder(
      args.dataset, args.data_dir, args.sample_rate, options, args.config_name, **extra
    )
    prepare(builder, args.source_dir, args.overwrite)
  except (build_report.BuildError, ValueError, AssertionError) as error:
    # AssertionError: TFDS's message for a missing or empty manual_dir.
    print(f'aac-build-dataset: build failed: {error}', file=sys.stderr)
    if builder is not None and builder.report_path:
      print(f'aac-build-dataset: report: {builder.report_path}', file=sys.stderr)
    return 1
  if builder.report is None:
    print(f'{builder.name}/{builder.builder_config.name} exists in {builder.data_dir}: reused')
  else:
    print(f'{builder.name} built in {builder.data_dir}; report: {builder.report_path}')
  return 0


if __name__ == '__main__':
  sys.exit(run())
