"""Builds a `ReportingBuilder`'s splits on Apache Beam (`aac-build-dataset NAME --beam`).

The driver lists each split's clips exactly as a single-machine build does
(`_plan_splits`, with its skips and warnings). Each split then becomes a
Beam `PTransform` that TFDS runs (its Beam support: a `_split_generators`
value that is a `PTransform`): the workers decode, resample and encode the
clips with the same `audio_io.decode_file` and the same example as
`ReportingBuilder._generate_examples`, so the records are the same bit for
bit. Beside each example a worker writes one JSON line per clip: what
`decode_file` found, without the audio. When the pipeline has run, the
driver reads those lines back in the clips' listed order and records them
in the one `BuildReport` the way the single-machine build does, then
deletes them: one report, merged from all workers. Beam counters
(`aac_jax` namespace: `<split>/written`, `<split>/<reason>`) show progress
on a runner's monitoring page.

This module imports `apache_beam` (the `beam` extra); `import_beam` is how
callers check for it first. `build_report.ReportingBuilder` calls it with
what it needs (its `make_example`, its `BuildError`), so this module does
not import `build_report` back.
"""

import dataclasses
import io
import json
import os
import time
from collections.abc import Iterator
from typing import Any

from etils import epath

from aac_jax.data import audio_io

INSTALL_HINT = "--beam needs Apache Beam: pip install 'aac_jax[beam]'"
OUTCOMES = 'outcomes'
_OUTCOME_SUFFIX = '.jsonl'


class BeamMissing(ImportError):
  """`apache_beam` is not installed; the message names the extra to install."""


def import_beam():
  """Returns the `apache_beam` module.

  Raises:
    BeamMissing: it cannot be imported (message: `INSTALL_HINT`).
  """
  try:
    import apache_beam  # noqa: PLC0415 (an optional extra)
  except ImportError as error:
    raise BeamMissing(INSTALL_HINT) from error
  return apache_beam


def pipeline_options(flags: str):
  """Beam `PipelineOptions` from TFDS's comma-separated form.

  Args:
    flags: e.g. `'runner=DataflowRunner,project=p,region=r'` ('' = the
      DirectRunner's defaults).

  Returns:
    `PipelineOptions(['--runner=DataflowRunner', '--project=p', ...])`.
  """
  beam = import_beam()
  return beam.options.pipeline_options.PipelineOptions(
    flags=[f'--{flag.strip()}' for flag in flags.split(',') if flag.strip()]
  )


def outcome_line(clip_id: str, decoded: audio_io.Decoded) -> str:
  """One clip's decode outcome as a JSON line (no audio; `samples` = its length)."""
  fields = {f.name: getattr(decoded, f.name) for f in dataclasses.fields(decoded)}
  audio = fields.pop('audio')
  samples = 0 if audio is None else int(audio.size)
  return json.dumps({'id': clip_id, 'samples': samples} | fields, ensure_ascii=False)


def parse_outcome(line: str) -> tuple[str, audio_io.Decoded, int]:
  """Inverse of `outcome_line`: `(clip_id, Decoded without audio, samples)`."""
  fields = json.loads(line)
  clip_id, samples = fields.pop('id'), fields.pop('samples')
  return clip_id, audio_io.Decoded(None, **fields), samples


def read_outcomes(prefix: str) -> dict[str, tuple[audio_io.Decoded, int]]:
  """Reads every worker's outcome lines written under `prefix` (any Beam file system)."""
  from apache_beam.io.filesystems import FileSystems  # noqa: PLC0415

  outcomes = {}
  for match in FileSystems.match([f'{prefix}*{_OUTCOME_SUFFIX}']):
    for metadata in match.metadata_list:
      with FileSystems.open(metadata.path) as raw:
        for line in io.TextIOWrapper(raw, encoding='utf-8'):
          if line.strip():
            clip_id, decoded, samples = parse_outcome(line)
            outcomes[clip_id] = (decoded, samples)
  return outcomes


def delete_outcomes(folder: str) -> None:
  """Deletes the outcome files (after they were merged)."""
  from apache_beam.io.filesystems import FileSystems  # noqa: PLC0415

  if FileSystems.exists(folder):
    FileSystems.delete([folder])


def decode_split(
  split: str,
  clips: list,
  sample_rate: int,
  limit: audio_io.LengthLimit,
  prefix: str,
  make_example,
):
  """The Beam `PTransform` building one split (applied by TFDS to the pipeline root).

  Args:
    split: split name (labels and counters).
    clips: the split's `build_report.Clip`s, in listed order.
    sample_rate: stored rate in Hz.
    limit: the longest clip (`BuildOptions.length_limit()`).
    prefix: where the workers write their outcome lines (`<prefix>-*.jsonl`).
    make_example: `make_example(clip, decoded)`, the record of a decoded clip
      (`build_report.make_example`).

  Returns:
    A `PTransform` from the pipeline root to `(clip_id, example)` pairs.
  """
  beam = import_beam()

  class DecodeClip(beam.DoFn):
    """Decodes one clip; its outcome goes to the `OUTCOMES` output."""

    def process(self, clip) -> Iterator[Any]:
      decoded = audio_io.decode_file(os.fspath(clip.path), sample_rate, limit)
      yield beam.pvalue.TaggedOutput(OUTCOMES, outcome_line(clip.id, decoded))
      counter = decoded.reason or 'written'
      beam.metrics.Metrics.counter('aac_jax', f'{split}/{counter}').inc()
      if not decoded.reason:
        yield clip.id, make_example(clip, decoded)

  class DecodeSplit(beam.PTransform):
    def expand(self, root):
      results = (
        root
        | 'Clips' >> beam.Create(clips)
        | 'Decode' >> beam.ParDo(DecodeClip()).with_outputs(OUTCOMES, main='examples')
      )
      _ = results[OUTCOMES] | 'Outcomes' >> beam.io.WriteToText(
        prefix, file_name_suffix=_OUTCOME_SUFFIX
      )
      return results.examples

  return DecodeSplit()


def _outcomes_dir(builder) -> str:
  return os.fspath(epath.Path(builder.data_path).parent / f'{builder.version}.beam_outcomes')


def split_transforms(builder, plans: dict[str, list], make_example) -> dict[str, Any]:
  """One `decode_split` per planned split (`_split_generators`'s Beam value).

  Args:
    builder: the builder (its report holds the listing; `merge_outcomes`
      completes it when the pipeline has run).
    plans: each split's clips to decode.
    make_example: see `decode_split`.

  Returns:
    `{split: PTransform}`.
  """
  folder = _outcomes_dir(builder)
  delete_outcomes(folder)  # From an interrupted earlier attempt.
  builder.beam_plans = plans
  builder.beam_start = time.perf_counter()
  limit = builder.options.length_limit()
  return {
    name: decode_split(
      name, clips, builder.sample_rate, limit, os.path.join(folder, name), make_example
    )
    for name, clips in plans.items()
  }


def merge_outcomes(builder, build_error: type[Exception]) -> None:
  """Records every worker's outcomes in `builder.report`, in listed order, then deletes them.

  Args:
    builder: the builder `split_transforms` planned.
    build_error: the exception a missing clip raises (`build_report.BuildError`).

  Raises:
    build_error: a clip no worker reported; the builder's `BuildError`: a
      strict build with skips, or a split with no clip decoded (as on one
      machine).
  """
  folder = _outcomes_dir(builder)
  seconds = time.perf_counter() - builder.beam_start
  outcomes = {name: read_outcomes(os.path.join(folder, name)) for name in builder.beam_plans}
  delete_outcomes(folder)  # Also when the build fails below.
  for name, clips in builder.beam_plans.items():
    report = builder.report.split(name)
    for clip in clips:
      if clip.id not in outcomes[name]:
        raise build_error(f'{name}: no Beam worker reported clip {clip.id!r}')
      builder.account(report, clip, *outcomes[name][clip.id])
    report.seconds = seconds
    builder.finish_split(name, report)
