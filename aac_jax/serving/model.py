"""The model behind `aac-serve`: a training run, or a `tools/export.py` folder.

Both are wrapped as a `ServedModel`: a function from window clips to
captions, the fixed set of `(rows, samples)` shapes it is ever called with
(batch buckets: powers of two up to `--batch_size`, and `--batch_size`;
length buckets: `inference.bucket_samples`'s lengths for a run, the export's
fixed length for an export), and `warm_up`, which compiles every one of
them so nothing compiles while requests wait.

A run is captioned by the same `inference.AudioCaptioner` that `aac-caption`
builds from the same flags (`caption_cli.build_captioner`), so a window gets
the caption `aac-caption` gives it. An export is called through
`jax.export.deserialize(...).call` with its baked-in greedy settings.
"""

import argparse
import dataclasses
import json
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from aac_jax import caption_cli, export, inference
from aac_jax.data import tokenizer as tokenizer_lib


@dataclasses.dataclass
class ServedModel:
  """What the server needs of a model.

  Attributes:
    caption_clips: captions of at most `batch_size` float32 clips of at most
      `window_samples` samples each, in order.
    sample_rate: Hz the clips must be at.
    window_samples: the longest clip.
    batch_size: the most clips per call.
    lengths: the padded lengths (samples), ascending; a clip is padded to
      the shortest that holds it.
    info: where the captions come from (`model` in every response).
  """

  caption_clips: Callable[[list[np.ndarray]], list[str]]
  sample_rate: int
  window_samples: int
  batch_size: int
  lengths: list[int]
  info: dict[str, Any]

  def bucket_of(self, clip: np.ndarray) -> int:
    """The padded length of `clip` (windows of one length share a batch)."""
    return next(n for n in self.lengths if clip.shape[0] <= n)

  def shapes(self) -> list[tuple[int, int]]:
    """Every `(rows, samples)` the model is called with."""
    rows = sorted({inference.batch_rows(c, self.batch_size) for c in range(1, self.batch_size + 1)})
    return [(r, n) for n in self.lengths for r in rows]

  def warm_up(self) -> list[tuple[int, int]]:
    """Compiles every shape (one call each, on silence); returns them."""
    shapes = self.shapes()
    for rows, samples in shapes:
      self.caption_clips([np.zeros(samples, np.float32)] * rows)
    return shapes


def is_export(path: str | pathlib.Path) -> bool:
  """Whether `path` is a folder written by `tools/export.py`."""
  return (pathlib.Path(path) / export.METADATA_FILENAME).is_file()


def from_run(args: argparse.Namespace) -> ServedModel:
  """The run's `AudioCaptioner` for these flags (those of `aac-caption`).

  Raises:
    inference.ModelLoadError: no loadable run.
    ValueError: bad decoding flags, or `--method sample` (its captions would
      depend on which requests share a batch).
  """
  captioner = caption_cli.build_captioner(args)
  if captioner.settings.method == 'sample':
    raise ValueError(
      '--method sample is not served: a caption would depend on which requests share its '
      "batch; use 'greedy' or 'beam'"
    )
  window = captioner.window_samples
  shortest = int(inference.MIN_BUCKET_SECONDS * captioner.loaded.sample_rate)
  lengths = sorted(
    {
      inference.bucket_samples(-(-window // (1 << i)), window, captioner.length_buckets, shortest)
      for i in range(captioner.length_buckets)
    }
  )
  return ServedModel(
    caption_clips=captioner.caption_clips,
    sample_rate=captioner.loaded.sample_rate,
    window_samples=window,
    batch_size=captioner.batch_size,
    lengths=lengths,
    info=caption_cli.model_info(captioner),
  )


def from_export(folder: str | pathlib.Path, batch_size: int) -> ServedModel:
  """A `tools/export.py` folder, called with its own (greedy) settings.

  Raises:
    ValueError: the export was made for other platforms than this machine's.
  """
  folder = pathlib.Path(folder)
  meta = json.loads((folder / export.METADATA_FILENAME).read_text(encoding='utf-8'))
  if not export.runs_here(meta['platforms']):
    raise ValueError(
      f"{folder} was exported for {','.join(meta['platforms'])}, not this machine's "
      f'{jax.default_backend()} (export again with --platforms)'
    )
  exported = jax.export.deserialize(bytearray((folder / export.EXPORT_FILENAME).read_bytes()))
  tokenizer = tokenizer_lib.load_vocab(folder / meta['vocab_file'])
  call = jax.jit(exported.call)
  max_samples = int(meta['max_samples'])

  def caption_clips(clips: list[np.ndarray]) -> list[str]:
    rows = inference.batch_rows(len(clips), batch_size)
    waveform = np.zeros((rows, max_samples), np.float32)
    paddings = np.ones((rows, max_samples), np.float32)
    for i, clip in enumerate(clips):
      waveform[i, : clip.shape[0]] = clip
      paddings[i, : clip.shape[0]] = 0.0
    tokens = np.asarray(call(waveform, paddings))[: len(clips)]
    return [tokenizer.decode(row.tolist()) for row in tokens]

  source = meta['source']
  info = {
    'export': str(folder.absolute()),
    'workdir': source['workdir'],
    'step': source['step'],
    'checkpoint': source['checkpoint'],
    'window_seconds': max_samples / meta['sample_rate'],
    'decode': meta['decode'],
  }
  return ServedModel(
    caption_clips, int(meta['sample_rate']), max_samples, batch_size, [max_samples], info
  )


def load(args: argparse.Namespace) -> ServedModel:
  """The model `--workdir` names: an export folder or a training run.

  Raises:
    inference.ModelLoadError: no loadable run.
    ValueError: flags that do not fit the model (see `from_run`, `from_export`).
  """
  if not is_export(args.workdir):
    return from_run(args)
  given = [f'--{name}' for name in caption_cli.DECODE_FLAGS if getattr(args, name) is not None]
  given += ['--window'] * (args.window is not None) + ['--step'] * (args.step is not None)
  given += ['--task'] * bool(args.task)
  if given:
    raise ValueError(
      f'{" ".join(given)}: an export folder has its decoding settings, window and step baked '
      'in (export again to change them, or serve the training run)'
    )
  return from_export(args.workdir, args.batch_size)
