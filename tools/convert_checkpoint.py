"""Converts published PyTorch checkpoints into folders aac_jax reads without torch.

  python tools/convert_checkpoint.py convnext --input convnext_tiny_471mAP.pth --output DIR
  python tools/convert_checkpoint.py cnn14 --input Cnn14_mAP=0.431.pth --output DIR
  python tools/convert_checkpoint.py conette --input CONETTE_HF_DIR --output RUN_DIR
  python tools/convert_checkpoint.py fense --echecker echecker_clotho_audiocaps_base.ckpt \\
      --bert_dir bert-base-uncased --output $AAC_FENSE_DIR/echecker_clotho_audiocaps_base
  python tools/convert_checkpoint.py fense --sbert paraphrase-TinyBERT-L6-v2 --output DIR
  python tools/convert_checkpoint.py clap --input clap-htsat-unfused --output CLAP_DIR

`convnext`/`cnn14` write an encoder folder (`model.encoder_init`); `conette`
reads the downloaded Hugging Face folder (config.json and pytorch_model.bin
or model.safetensors) and writes a run folder that `aac-caption --workdir
RUN_DIR` and `--config.train.init_from=RUN_DIR` use; `fense` writes the
FENSE model folders (`aac_jax.metrics.fense_models`); `clap` a CLAP folder
(`aac_jax.metrics.clap.embedder`, docs/clap.md). Converters live in
`aac_jax/convert/` (`registry`). Needs torch (`pip install "aac_jax[convert]"`);
training reads the output without it.

Exit status: 0 converted; 1 refused, with one line `convert_checkpoint NAME:
error: ...` naming the file and what is wrong (another model or shape, not a
PyTorch checkpoint, e.g. an HTML page saved as .pth, or one holding Python
objects besides tensors, which is read safely and never unpickled in full);
2 bad arguments (argparse).
"""

import argparse
import importlib
import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `configs/` (the conette base config) and a checkout's aac_jax.
  sys.path.insert(0, str(REPO))

from aac_jax.convert import registry  # noqa: E402


def convert_run(name: str, input_dir: str, output_dir: str) -> dict:
  """A captioner folder -> run folder, from the `configs/{name}.py` base config."""
  base = importlib.import_module(f'configs.{name}').get_config()
  return registry.get_converter(name).convert_folder(input_dir, output_dir, base)


def _convert(args: argparse.Namespace) -> str:
  """Runs the subcommand; returns the line to print."""
  if args.model in registry.CLI_CONVERTERS:
    registry.get_converter(args.model).run(args)
    return f'wrote {args.output}'
  if args.model in registry.RUN_CONVERTERS:
    summary = convert_run(args.model, args.input, args.output)
    return f'wrote run folder {args.output}: {json.dumps(summary)}'
  settings = registry.convert_file(args.model, args.input, args.output)
  return f'wrote {args.output}: {json.dumps(settings["frontend"])}'


def make_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest='model', required=True)
  for name in registry.names():
    converter = registry.get_converter(name)
    command = sub.add_parser(name, help=(converter.__doc__ or name).splitlines()[0])
    if name in registry.CLI_CONVERTERS:
      converter.add_arguments(command)
    else:
      command.add_argument('--input', required=True, help='the file (or folder) as published')
      command.add_argument('--output', required=True, help='folder to write')
  return parser


def main(argv: list[str] | None = None) -> int:
  """Converts; exits 1 with `convert_checkpoint NAME: error: ...` when the input is refused."""
  args = make_parser().parse_args(argv)
  try:
    print(_convert(args))
  # ConversionError and unreadable files are ValueErrors; no torch is an ImportError.
  except (ValueError, OSError, ImportError) as error:
    raise SystemExit(f'convert_checkpoint {args.model}: error: {error}') from error
  return 0


if __name__ == '__main__':
  sys.exit(main())
