"""Converts a published PyTorch checkpoint into an aac_jax encoder folder or run folder.

  python tools/convert_checkpoint.py convnext --input convnext_tiny_471mAP.pth --output DIR
  python tools/convert_checkpoint.py cnn14 --input Cnn14_mAP=0.431.pth --output DIR
  python tools/convert_checkpoint.py conette --input CONETTE_HF_DIR --output RUN_DIR

`conette` reads the downloaded Hugging Face folder (config.json and
pytorch_model.bin or model.safetensors) and writes a run folder that
`aac-caption --workdir RUN_DIR` and `--config.train.init_from=RUN_DIR` use.

Needs torch (`pip install "aac_jax[convert]"`); training reads DIR without it.
"""

import argparse
import json
import pathlib
import sys

from aac_jax.convert import registry
from aac_jax.convert.conette import ConetteFormatError
from aac_jax.convert.mapping import ConversionError

REPO = pathlib.Path(__file__).resolve().parent.parent


def convert_run(name: str, input_dir: str, output_dir: str) -> dict:
  """A captioner folder -> run folder, from the `configs/{name}.py` base config."""
  if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
  import importlib

  base = importlib.import_module(f'configs.{name}').get_config()
  return registry.get_converter(name).convert_folder(input_dir, output_dir, base)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('model', choices=registry.names())
  parser.add_argument('--input', required=True, help='the file (or folder) as published')
  parser.add_argument('--output', required=True, help='folder to write')
  args = parser.parse_args(argv)
  try:
    if args.model in registry.RUN_CONVERTERS:
      summary = convert_run(args.model, args.input, args.output)
      print(f'wrote run folder {args.output}: {json.dumps(summary)}')
      return 0
    settings = registry.convert_file(args.model, args.input, args.output)
  except (ConetteFormatError, ConversionError, FileNotFoundError, ValueError) as error:
    print(f'error: {error}', file=sys.stderr)
    return 1
  print(f'wrote {args.output}: {json.dumps(settings["frontend"])}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
