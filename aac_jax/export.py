"""Exports a trained captioner as one serialized `jax.export` function.

  python tools/export.py --workdir workdirs/demo/ce --output exported/demo
  python tools/export.py --workdir RUN --step 2000 --output DIR --platforms cpu,cuda,tpu
  python tools/export.py --workdir RUN --output DIR --format savedmodel   # + DIR/savedmodel/

The exported function is the whole inference path, front end + encoder +
greedy decoding, with the trained parameters baked in as constants (a
language-model decoder's LoRA adapters merged into its weights first):

  tokens = f(waveform, paddings)
    waveform  float32 [batch, max_samples]  mono at `sample_rate`, in [-1, 1]
    paddings  float32 [batch, max_samples]  1.0 after the end of each clip
    tokens    int32   [batch, max_len]      word ids, EOS (2), then PAD (0)

`batch` is symbolic (any batch size works without re-export); `max_samples`
is fixed (default: the training clip length). The output folder holds
`model.jax_export` (`Exported.serialize()` bytes), `vocab.txt` (line index =
token id) and `export.json` (sample rate, max samples, ids, provenance);
`--format savedmodel` adds `savedmodel/`, a TensorFlow SavedModel of the
same function (`aac_jax.export_tf`).
Running it needs only `jax` and `numpy`:

  exported = jax.export.deserialize(bytearray(open('model.jax_export', 'rb').read()))
  tokens = exported.call(waveform, paddings)
"""

import argparse
import dataclasses
import json
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging as absl_logging

from aac_jax import decoding, export_tf, files, inference, models
from aac_jax.data import tokenizer as tokenizer_lib
from aac_jax.models import llm
from aac_jax.train import logs

EXPORT_FILENAME = 'model.jax_export'
METADATA_FILENAME = 'export.json'
FORMAT_NAME = 'aac_jax.waveform_to_tokens.v1'
# 'jax': the files above; 'savedmodel': also a TensorFlow SavedModel (`aac_jax.export_tf`).
FORMATS = ('jax', 'savedmodel')


def greedy_settings(loaded: inference.LoadedModel, **overrides: Any):
  """The run's `config.decode` with `method='greedy'`; returns `(settings, mask)`."""
  return inference.make_settings(loaded, **{**overrides, 'method': 'greedy'})


def default_max_samples(loaded: inference.LoadedModel) -> int:
  """Samples of the training clip length (`dataset.max_audio_seconds`)."""
  return int(round(loaded.train_seconds * loaded.sample_rate))


def merge_adapters(loaded: inference.LoadedModel) -> inference.LoadedModel:
  """`loaded` with a language-model decoder's LoRA adapters folded into its kernels.

  The export then carries no adapter parameters and does no adapter
  matmuls: each kernel becomes `kernel + lora_a @ lora_b * alpha / rank`
  (`aac_jax.models.llm.merge_lora`) in a model with `lora_rank=0`. Other
  models come back unchanged.
  """
  cfg = loaded.model.config
  if cfg.llm is None or not cfg.llm.lora_rank:
    return loaded
  decoder = dict(loaded.params['decoder'])
  decoder['llm'] = llm.merge_lora(decoder['llm'], cfg.llm)
  model = models.Captioner(cfg.replace(llm=cfg.llm.replace(lora_rank=0)))
  return dataclasses.replace(loaded, model=model, params=dict(loaded.params, decoder=decoder))


def make_export_fn(
  loaded: inference.LoadedModel,
  settings: decoding.DecodeSettings,
  repeat_ban_mask: np.ndarray | None = None,
):
  """`fn(waveform [b, n], paddings [b, n]) -> tokens [b, max_len]` with the params closed over."""
  params = loaded.params
  mask = None if repeat_ban_mask is None else jnp.asarray(repeat_ban_mask)

  def waveform_to_tokens(waveform: jax.Array, paddings: jax.Array) -> jax.Array:
    return inference.waveform_to_tokens(
      loaded, params, waveform, paddings, settings, repeat_ban_mask=mask
    )

  return waveform_to_tokens


@dataclasses.dataclass(frozen=True)
class ExportedModel:
  """An export and what it was made with.

  Attributes:
    exported: the lowered function (serialize with `.serialize()`).
    settings: its (greedy) decoding settings.
    repeat_ban_mask: bool `[vocab]` baked in, or None.
    max_samples: the fixed waveform length.
  """

  exported: jax.export.Exported
  settings: decoding.DecodeSettings
  repeat_ban_mask: np.ndarray | None
  max_samples: int


def export_model(
  loaded: inference.LoadedModel,
  *,
  max_samples: int | None = None,
  platforms: Sequence[str] | None = None,
  **decode_overrides: Any,
) -> ExportedModel:
  """Traces and lowers the full inference path with a symbolic batch.

  Args:
    loaded: the trained model.
    max_samples: fixed waveform length (default: the training clip length).
    platforms: e.g. `('cpu', 'cuda', 'tpu')`; default: the current backend.
    **decode_overrides: greedy-decoding fields (`max_len`, `min_len`,
      `no_repeat_ngram_size`, `ban_repeated_content_words`; None = the run's).

  Returns:
    The export of `tokens [batch, max_len] = f(waveform, paddings)` with
    both inputs float32 `[batch, max_samples]` (LoRA adapters merged:
    `merge_adapters`).
  """
  loaded = merge_adapters(loaded)
  settings, mask = greedy_settings(loaded, **decode_overrides)
  max_samples = int(max_samples or default_max_samples(loaded))
  (batch,) = jax.export.symbolic_shape('batch')
  spec = jax.ShapeDtypeStruct((batch, max_samples), jnp.float32)
  fn = jax.jit(make_export_fn(loaded, settings, mask))
  exported = jax.export.export(fn, platforms=platforms)(spec, spec)
  return ExportedModel(exported, settings, mask, max_samples)


def export_metadata(loaded: inference.LoadedModel, result: ExportedModel) -> dict[str, Any]:
  """What a consumer needs besides the bytes (written as `export.json`)."""
  max_samples, settings = result.max_samples, result.settings
  return {
    'format': FORMAT_NAME,
    'sample_rate': loaded.sample_rate,
    'max_samples': max_samples,
    'max_seconds': max_samples / loaded.sample_rate,
    'max_len': settings.max_len,
    'inputs': [
      {'name': 'waveform', 'dtype': 'float32', 'shape': ['batch', max_samples]},
      {'name': 'paddings', 'dtype': 'float32', 'shape': ['batch', max_samples], 'pad_value': 1.0},
    ],
    'output': {'name': 'tokens', 'dtype': 'int32', 'shape': ['batch', settings.max_len]},
    'token_ids': {
      'pad': tokenizer_lib.PAD_ID,
      'bos': tokenizer_lib.BOS_ID,
      'eos': tokenizer_lib.EOS_ID,
      'unk': tokenizer_lib.UNK_ID,
    },
    'vocab_file': tokenizer_lib.VOCAB_FILENAME,
    'vocab_size': loaded.tokenizer.vocab_size,
    'platforms': list(result.exported.platforms),
    'decode': dataclasses.asdict(settings),
    'source': {'workdir': loaded.workdir, 'step': loaded.step, 'checkpoint': loaded.step_kind},
    'jax_version': jax.__version__,
    'calling_convention_version': result.exported.calling_convention_version,
  }


def save_export(
  output_dir: str | pathlib.Path, loaded: inference.LoadedModel, result: ExportedModel
) -> dict[str, Any]:
  """Writes `model.jax_export`, `vocab.txt` and `export.json`; returns the metadata."""
  out = pathlib.Path(output_dir)
  out.mkdir(parents=True, exist_ok=True)
  files.write_bytes(out / EXPORT_FILENAME, bytes(result.exported.serialize()))
  loaded.tokenizer.save(out / tokenizer_lib.VOCAB_FILENAME)
  metadata = export_metadata(loaded, result)
  files.write_text(out / METADATA_FILENAME, json.dumps(metadata, indent=2) + '\n')
  return metadata


def noise_batch(max_samples: int, batch: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Noise clips of different lengths: `(waveform, paddings)`, float32 `[batch, max_samples]`."""
  rng = np.random.default_rng(seed)
  waveform = (0.1 * rng.standard_normal((batch, max_samples))).astype(np.float32)
  paddings = np.zeros_like(waveform)
  for i in range(batch):
    paddings[i, max_samples * (i + 1) // (batch + 1) :] = 1.0
  return waveform * (1.0 - paddings), paddings


def check_round_trip(
  output_dir: str | pathlib.Path, loaded: inference.LoadedModel, result: ExportedModel
) -> bool:
  """Deserializes the written file and compares its tokens with the live model.

  Both sides run greedy decoding with the same settings on `noise_batch`
  clips, so the tokens must be identical.

  Returns:
    True when equal.
  """
  data = (pathlib.Path(output_dir) / EXPORT_FILENAME).read_bytes()
  restored = jax.export.deserialize(bytearray(data))
  waveform, paddings = noise_batch(result.max_samples)
  live = jax.jit(make_export_fn(loaded, result.settings, result.repeat_ban_mask))
  expected = np.asarray(live(waveform, paddings))
  return bool(np.array_equal(np.asarray(restored.call(waveform, paddings)), expected))


def runs_here(platforms: Sequence[str]) -> bool:
  """Whether an export for `platforms` can run on this machine's default backend."""
  backend = jax.default_backend()
  names = ('cuda', 'rocm') if backend == 'gpu' else (backend,)  # jax calls both 'gpu'.
  return any(name in platforms for name in names)


def make_parser() -> argparse.ArgumentParser:
  """The command-line flags."""
  parser = argparse.ArgumentParser(
    prog='export.py',
    description='Export a trained aac_jax model (waveform -> caption token ids) with jax.export.',
  )
  parser.add_argument(
    '--workdir', required=True, help='training run folder or RUN/checkpoints/STEP'
  )
  parser.add_argument(
    '--output', required=True, help='folder to write model.jax_export, vocab.txt, export.json'
  )
  parser.add_argument(
    '--step', type=int, default=None, help='checkpoint step (default: best, else latest)'
  )
  parser.add_argument(
    '--max_seconds',
    type=float,
    default=None,
    help='fixed input length (default: training clip length)',
  )
  parser.add_argument(
    '--platforms',
    default='',
    help="comma-separated, e.g. 'cpu,cuda,tpu' (default: this machine's backend)",
  )
  parser.add_argument(
    '--max_len',
    type=int,
    default=None,
    help='maximum caption tokens (default: config.decode.max_len)',
  )
  parser.add_argument(
    '--no_repeat_ngram_size',
    type=int,
    default=None,
    help='greedy repeat ban (default: config.decode)',
  )
  parser.add_argument(
    '--format',
    choices=FORMATS,
    default='jax',
    help="'savedmodel' also writes OUTPUT/savedmodel/ for TF Serving (needs TensorFlow)",
  )
  parser.add_argument(
    '--check',
    action=argparse.BooleanOptionalAction,
    default=True,
    help='reload the file and compare with the live model (current backend only)',
  )
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the export; returns the exit status (0 ok, 1 check failed, 2 usage error)."""
  args = make_parser().parse_args(argv)
  logs.quiet_console(absl_logging.WARNING)  # Shows why a checkpoint was skipped, if one was.
  try:
    if args.format == 'savedmodel':
      export_tf.import_tensorflow()  # Before the long work: one line if it is missing.
    loaded = inference.load_model(args.workdir, args.step)
    max_samples = None
    if args.max_seconds is not None:
      max_samples = int(round(args.max_seconds * loaded.sample_rate))
    platforms = [p.strip() for p in args.platforms.split(',') if p.strip()] or None
    result = export_model(
      loaded,
      max_samples=max_samples,
      platforms=platforms,
      max_len=args.max_len,
      no_repeat_ngram_size=args.no_repeat_ngram_size,
    )
  except (inference.ModelLoadError, ValueError, export_tf.TensorFlowMissing) as error:
    print(f'export: error: {error}', file=sys.stderr)
    return 2
  metadata = save_export(args.output, loaded, result)
  size = (pathlib.Path(args.output) / EXPORT_FILENAME).stat().st_size
  print(
    f'export: wrote {args.output}/{EXPORT_FILENAME} ({size / 1e6:.1f} MB; step {loaded.step} '
    f'({loaded.step_kind}); platforms {",".join(metadata["platforms"])}; '
    f'[batch, {result.max_samples}] at {loaded.sample_rate} Hz -> '
    f'[batch, {result.settings.max_len}] token ids)'
  )
  if args.check and runs_here(metadata['platforms']):
    if not check_round_trip(args.output, loaded, result):
      print('export: error: the reloaded export disagrees with the live model', file=sys.stderr)
      return 1
    print('export: round trip checked: reloaded export gives the same tokens as the live model')
  if args.format == 'savedmodel':
    return write_savedmodel(args.output, result, metadata, loaded.tokenizer.tokens, args.check)
  return 0


def write_savedmodel(output, result: ExportedModel, metadata, words, check: bool) -> int:
  """Writes OUTPUT/savedmodel and compares its tokens with the artifact's; returns the status."""
  out = pathlib.Path(output) / export_tf.SAVEDMODEL_DIR
  export_tf.save_savedmodel(out, result.exported, metadata, words)
  print(f'export: wrote {out} (signature serving_default: waveform, paddings -> tokens, captions)')
  if check and runs_here(metadata['platforms']):
    equal, _ = export_tf.check_savedmodel(out, result.exported, *noise_batch(result.max_samples))
    if not equal:
      print('export: error: the SavedModel disagrees with the jax.export artifact', file=sys.stderr)
      return 1
    print('export: SavedModel checked: TensorFlow gives the same tokens as the jax.export artifact')
  return 0


def run() -> None:
  """Command-line entry (`python tools/export.py`)."""
  sys.exit(main())


if __name__ == '__main__':
  run()
