"""Converts a published PyTorch checkpoint into an aac_jax encoder folder.

  python tools/convert_checkpoint.py convnext --input convnext_tiny_471mAP.pth --output DIR
  python tools/convert_checkpoint.py cnn14 --input Cnn14_mAP=0.431.pth --output DIR

Needs torch (`pip install "aac_jax[convert]"`); training reads DIR without it.
"""

import argparse
import json
import sys

from aac_jax.convert import registry
from aac_jax.convert.mapping import ConversionError


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('model', choices=registry.names())
  parser.add_argument('--input', required=True, help='the .pth file as published')
  parser.add_argument('--output', required=True, help='folder to write (params + settings)')
  args = parser.parse_args(argv)
  try:
    settings = registry.convert_file(args.model, args.input, args.output)
  except (ConversionError, FileNotFoundError, ValueError) as error:
    print(f'error: {error}', file=sys.stderr)
    return 1
  print(f'wrote {args.output}: {json.dumps(settings["frontend"])}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
