"""`aac-evaluate`: scores predicted captions against references.

  aac-evaluate --predictions preds.csv --references clotho_captions_evaluation.csv
  aac-evaluate --predictions preds.json --references audiocaps/test.csv --meteor
  aac-evaluate --predictions preds.csv --tfds clotho_aac/16000hz --split evaluation \\
      --data_dir ~/tensorflow_datasets --spice --spice_jars ~/corenlp-3.6.0
  aac-evaluate --predictions preds.csv --references clotho_captions_evaluation.csv \\
      --dcase2024 --spice_jars ~/corenlp-3.6.0 --fense_dir ~/fense_models --bootstrap 1000 \\
      --submission submission.csv

Predictions: a CSV with a header (id column `id`, `file_name`, `youtube_id`
or `audiocap_id`; caption column `prediction`, `caption_predicted`,
`caption` or `text`), or JSON: `{id: caption}` or a list of records with
those keys (the trainer's `predictions/*.json`, whose `references` are used
when no other references are given).
References: a Clotho CSV (`file_name,caption_1..caption_5`), an AudioCaps
CSV (`audiocap_id,youtube_id,start_time,caption`, clip id `youtube_id`, or
`youtube_id_start_time` where a video has several clips), or a TFDS split
read with `tfds.data_source` (features `id` and `captions`).
Writes the JSON (`--output`, default `<predictions>.scores.json`) with
corpus scores, the reasons for missing metrics, input warnings, with
`--bootstrap N` the 95 % intervals and, with `--per_clip`, every clip's
scores, then prints a table. `--dcase2024` computes and prints the DCASE
2024 set (METEOR, CIDEr-D, SPICE, SPIDEr, SPIDEr-FL, SBERT-sim, FER, FENSE,
Vocab); `--submission` writes the challenge's `file_name,caption_predicted`
CSV. `--clap_dir DIR` adds `clap_sim_refs` (CLAP cosine of prediction and
references) and, with `--clap_audio_dir`, `clap_sim` (of prediction and
audio); see docs/clap.md.

Files are read as UTF-8 (a byte-order mark, as Excel writes, is fine);
lines that are not UTF-8 are read as ISO-8859-1 with a warning naming the
file and byte. A prediction that is not a string (JSON `null`, a number, a
short CSV row) or holds a NUL character is an error naming its clip, never
scored as text; an empty or malformed file is an error naming the file.
"""

import argparse
import collections
import csv
import io
import json
import math
import os
import pathlib
import sys
from collections.abc import Sequence

from aac_jax import files
from aac_jax.data import text_files
from aac_jax.metrics import clap_score, evaluate, fense, fense_models, submission

ID_COLUMNS = ('id', 'file_name', 'youtube_id', 'audiocap_id')
CAPTION_COLUMNS = ('prediction', 'caption_predicted', 'caption', 'text')


def _pick(row: dict, names: Sequence[str], what: str, source: str):
  for name in names:
    if name in row:
      return row[name]
  raise ValueError(f'{source}: no {what} column/key (expected one of {list(names)})')


def _check_caption(value, clip: str, source: str, what: str = 'prediction') -> str:
  """Returns `value` if it is a caption string; else raises naming the clip."""
  if isinstance(value, str) and '\0' not in value:
    return value
  if isinstance(value, str):  # JSON's escaped \u0000: never part of a caption.
    raise ValueError(f'{source}: the {what} of clip {clip!r} contains a NUL character')
  kind = 'null (or a missing CSV field)' if value is None else type(value).__name__
  raise ValueError(
    f'{source}: the {what} of clip {clip!r} is {kind}, not a string; '
    'write the caption as text ("" for an empty one)'
  )


def _warn(warning: str, warnings: list[str] | None) -> None:
  if warning:
    print(f'aac-evaluate: warning: {warning}', file=sys.stderr)
    if warnings is not None:
      warnings.append(warning)


def read_predictions(
  path: str, warnings: list[str] | None = None
) -> tuple[dict[str, str], dict[str, list[str]]]:
  """Reads predictions (and references embedded in trainer JSON).

  Args:
    path: CSV or JSON file.
    warnings: gets the encoding warning, if any (also printed).

  Returns:
    (id -> predicted caption, id -> references found in the file).

  Raises:
    ValueError: a missing column, a clip predicted twice, a caption that is
      not a string.
  """
  text, warning = text_files.read_text(pathlib.Path(path).expanduser())
  _warn(warning, warnings)
  if path.endswith('.json'):
    data = _read_json(text, path)
    if isinstance(data, dict):
      return {str(k): _check_caption(v, str(k), path) for k, v in data.items()}, {}
    rows = data
    bad = [row for row in rows if not isinstance(row, dict)]
    if bad:
      raise ValueError(
        f'{path}: {len(bad)} list items are not records (the first is {bad[0]!r:.60}); '
        'write {"id": caption, ...} or [{"id": ..., "prediction": ...}, ...]'
      )
  else:
    rows = list(csv.DictReader(io.StringIO(text, newline='')))
  predictions, references = {}, {}
  for row in rows:
    clip = _pick(row, ID_COLUMNS, 'id', path)
    if not isinstance(clip, str | int) or isinstance(clip, bool):
      raise ValueError(f'{path}: a clip id is {clip!r}, not a string or a whole number')
    clip = str(clip)
    if clip in predictions:
      raise ValueError(f'{path}: clip {clip!r} is predicted twice')
    predictions[clip] = _check_caption(_pick(row, CAPTION_COLUMNS, 'caption', path), clip, path)
    if isinstance(row.get('references'), list):
      references[clip] = [_check_caption(r, clip, path, 'reference') for r in row['references']]
  return predictions, references


def _read_json(text: str, path: str) -> dict | list:
  """The JSON object or list of a predictions file (errors name the file)."""
  if not text.strip():
    raise ValueError(f'{path}: empty file, expected JSON predictions')
  try:
    data = json.loads(text)
  except json.JSONDecodeError as error:
    raise ValueError(f'{path}: not valid JSON ({error})') from None
  if not isinstance(data, dict | list):
    raise ValueError(f'{path}: JSON {type(data).__name__}, expected an object or a list')
  return data


def read_reference_csv(path: str, warnings: list[str] | None = None) -> dict[str, list[str]]:
  """Reads a Clotho or AudioCaps caption CSV into id -> references."""
  table = text_files.read_csv_rows(os.path.expanduser(path))
  _warn(table.warning, warnings)
  rows = [row for _, row in table.rows]
  if 'file_name' in table.columns:
    columns = sorted(
      (k for k in table.columns if k.startswith('caption_')), key=lambda k: int(k[8:])
    )
    return {r['file_name']: [r[c] for c in columns if r[c]] for r in rows}
  if {'youtube_id', 'start_time', 'caption'} <= set(table.columns):
    groups = collections.defaultdict(list)
    for line, r in table.rows:
      clip = f'{r["youtube_id"]} line {line}'
      caption = _check_caption(r['caption'], clip, path, 'reference')
      groups[(r['youtube_id'].strip(), (r['start_time'] or '').strip())].append(caption)
    starts = collections.Counter(y for y, _ in groups)
    return {(y if starts[y] == 1 else f'{y}_{s}'): caps for (y, s), caps in groups.items()}
  raise ValueError(f'{path}: neither a Clotho nor an AudioCaps caption CSV')


def read_tfds_references(name: str, split: str, data_dir: str | None) -> dict[str, list[str]]:
  """Reads id -> captions of a TFDS split with `tfds.data_source`."""
  import tensorflow_datasets as tfds  # Heavy; only for this source.

  from aac_jax.data import sources

  kwargs = {'data_dir': os.path.expanduser(data_dir)} if data_dir else {}
  source = tfds.data_source(name, split=split, **kwargs)
  return dict(sources.scan_ids_and_captions(source))


def align(
  predictions: dict[str, str], references: dict[str, list[str]]
) -> tuple[list[str], list[str], list[list[str]]]:
  """Pairs predictions with references by id.

  Args:
    predictions: id -> caption.
    references: id -> references.

  Returns:
    (ids, predictions, references) in reference order.

  Raises:
    ValueError: a clip without prediction or references.
  """
  missing = [k for k in references if k not in predictions]
  extra = [k for k in predictions if k not in references]
  if missing or extra:
    raise ValueError(
      f'{len(missing)} clips have no prediction (e.g. {missing[:3]}), '
      f'{len(extra)} predictions have no references (e.g. {extra[:3]})'
    )
  empty = [k for k, refs in references.items() if not refs]
  if empty:
    raise ValueError(f'{len(empty)} clips have no reference caption (e.g. {empty[:3]})')
  ids = list(references)
  return ids, [predictions[k] for k in ids], [references[k] for k in ids]


def _number(name: str, value: float) -> str:
  if not math.isfinite(value):
    return 'nan'
  return f'{value:.0f}' if name == 'vocab' else f'{value:.4f}'


def format_table(result: evaluate.CaptionMetrics, names: Sequence[str] = evaluate.METRICS) -> str:
  """Renders corpus scores (with intervals, if any) and reasons for missing metrics as text."""
  ci = bool(result.intervals)
  lines = [f'{"metric":<12} {"score":>8}' + (f'  {"95% interval":>19}' if ci else '')]
  for name in names:
    if name not in result.corpus:
      lines.append(f'{name:<12} {"n/a":>8}  (unavailable: {result.unavailable.get(name, "")})')
      continue
    line = f'{name:<12} {_number(name, result.corpus[name]):>8}'
    if name in result.intervals:
      low, high = result.intervals[name]
      line += f'  [{_number(name, low):>8}, {_number(name, high):>8}]'
    lines.append(line)
  return '\n'.join(lines)


def make_parser() -> argparse.ArgumentParser:
  """Returns the command-line parser."""
  parser = argparse.ArgumentParser(prog='aac-evaluate', description=__doc__.split('\n')[0])
  parser.add_argument('--predictions', required=True, help='CSV or JSON predictions.')
  group = parser.add_mutually_exclusive_group()
  group.add_argument('--references', help='Clotho or AudioCaps caption CSV.')
  group.add_argument('--tfds', help='TFDS dataset name, e.g. clotho_aac/16000hz.')
  parser.add_argument('--split', help='TFDS split (with --tfds).')
  parser.add_argument('--data_dir', help='TFDS data_dir (with --tfds).')
  parser.add_argument('--meteor', action='store_true', help='Also METEOR (Java).')
  parser.add_argument('--spice', action='store_true', help='Also SPICE and SPIDEr (Java).')
  parser.add_argument('--spice_jars', help='Folder with the CoreNLP 3.6.0 jars for SPICE.')
  parser.add_argument('--java', default='java', help='Java executable (name on PATH, or path).')
  parser.add_argument('--fense', action='store_true', help='Also SBERT-sim, FER, FENSE, SPIDEr-FL.')
  parser.add_argument(
    '--fense_dir', help=f'Folder with both FENSE models (default ${fense_models.ENV_DIR}).'
  )
  parser.add_argument(
    '--sbert_dir', help=f'{fense_models.SBERT_NAME} folder (overrides --fense_dir).'
  )
  parser.add_argument(
    '--echecker_dir', help='Converted error checker folder (overrides --fense_dir).'
  )
  parser.add_argument(
    '--fense_batch_size', type=int, default=128, help='Sentences per forward pass.'
  )
  parser.add_argument(
    '--clap_dir', help='CLAP folder (convert_checkpoint.py clap): clap_sim, clap_sim_refs.'
  )
  parser.add_argument(
    '--clap_audio_dir', help='With --clap_dir: audio files named by clip id (for clap_sim).'
  )
  parser.add_argument('--clap_batch_size', type=int, default=16, help='Clips per CLAP pass.')
  parser.add_argument(
    '--dcase2024', action='store_true', help='METEOR, SPICE, FENSE; print the DCASE 2024 set.'
  )
  parser.add_argument(
    '--bootstrap', type=int, default=0, help='Resamples for 95%% intervals (0 = none).'
  )
  parser.add_argument('--bootstrap_seed', type=int, default=0)
  parser.add_argument(
    '--submission', help='Also write the DCASE file_name,caption_predicted CSV here.'
  )
  parser.add_argument('--output', help='JSON output (default: <predictions>.scores.json).')
  parser.add_argument('--per_clip', action='store_true', help='Write per-clip scores too.')
  return parser


def main(argv: Sequence[str] | None = None) -> dict:
  """Runs the evaluation; returns what was written as JSON."""
  args = make_parser().parse_args(argv)
  warnings = []
  predictions, embedded = read_predictions(args.predictions, warnings)
  if args.tfds:
    if not args.split:
      raise SystemExit('--tfds needs --split')
    references = read_tfds_references(args.tfds, args.split, args.data_dir)
  elif args.references:
    references = read_reference_csv(args.references, warnings)
  elif embedded:
    references = embedded
  else:
    raise SystemExit('give --references or --tfds (or predictions JSON with references)')
  ids, preds, refs = align(predictions, references)
  if args.submission:
    print(f'wrote {submission.write_dcase_submission(args.submission, ids, preds)}')
  result = evaluate.compute_caption_metrics(
    preds,
    refs,
    meteor=args.meteor or args.dcase2024,
    spice=args.spice or args.dcase2024,
    spice_jars=args.spice_jars,
    java=args.java,
    fense=args.fense or args.dcase2024,
    fense_options=_fense_options(args),
    bootstrap_samples=args.bootstrap,
    bootstrap_seed=args.bootstrap_seed,
    clap=_clap_options(args, ids),
  )
  report = {'num_clips': len(ids), 'corpus': result.corpus, 'unavailable': result.unavailable}
  report['warnings'] = warnings
  if result.intervals:
    report['intervals_95'] = {k: list(v) for k, v in result.intervals.items()}
    report['bootstrap'] = {'samples': args.bootstrap, 'seed': args.bootstrap_seed}
  if args.per_clip:
    report['per_clip'] = {
      clip: {k: float(v[i]) for k, v in result.per_clip.items()} for i, clip in enumerate(ids)
    }
  output = args.output or f'{args.predictions}.scores.json'
  # Written before printing: a closed pipe on stdout must not lose the scores.
  files.write_text(pathlib.Path(output).expanduser(), json.dumps(report, indent=1) + '\n')
  print(f'wrote {output}', file=sys.stderr)
  print(f'{len(ids)} clips')
  print(format_table(result, evaluate.DCASE2024_METRICS if args.dcase2024 else evaluate.METRICS))
  return report


def _fense_options(args: argparse.Namespace) -> fense.FenseOptions:
  """Model folders: explicit flags, else under --fense_dir, else under $AAC_FENSE_DIR."""
  base = pathlib.Path(args.fense_dir).expanduser() if args.fense_dir else None
  sbert = args.sbert_dir or (str(base / fense_models.SBERT_NAME) if base else '')
  echecker = args.echecker_dir or (str(base / fense_models.ECHECKER_NAME) if base else '')
  return fense.FenseOptions(sbert, echecker, args.fense_batch_size)


def clip_audio_paths(folder: str, ids: Sequence[str]) -> tuple[str, ...]:
  """The audio file of each clip id in `folder`: `ID` itself, else `ID.<audio extension>`.

  Raises:
    ValueError: clips without a file (count and the first ids), before any scoring.
  """
  from aac_jax.data import audio_io

  base = pathlib.Path(folder).expanduser()
  if not base.is_dir():
    raise ValueError(f'--clap_audio_dir {base} is not a folder')
  by_stem = {}
  for path in audio_io.audio_files(base):
    by_stem.setdefault(path.stem, path)
  paths, missing = [], []
  for clip in ids:
    path = base / clip if (base / clip).is_file() else by_stem.get(clip)
    (paths if path else missing).append(str(path or clip))
  if missing:
    raise ValueError(
      f'{len(missing)} of {len(ids)} clips have no audio file in {base} (e.g. {missing[:3]})'
    )
  return tuple(paths)


def _clap_options(args: argparse.Namespace, ids: Sequence[str]) -> clap_score.ClapOptions | None:
  if not args.clap_dir:
    if args.clap_audio_dir:
      raise ValueError('--clap_audio_dir needs --clap_dir (the CLAP model folder)')
    return None
  audio = clip_audio_paths(args.clap_audio_dir, ids) if args.clap_audio_dir else ()
  return clap_score.ClapOptions(args.clap_dir, audio, args.clap_batch_size)


def run() -> None:
  """Console entry point (`aac-evaluate`)."""
  try:
    main(sys.argv[1:])
  except (ValueError, OSError) as e:
    raise SystemExit(f'aac-evaluate: {e}') from e
