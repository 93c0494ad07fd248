"""Converts published torch checkpoints into folders aac_jax loads without torch.

  python tools/convert_checkpoint.py fense --echecker echecker_clotho_audiocaps_base.ckpt \\
      --bert_dir bert-base-uncased --output $AAC_FENSE_DIR/echecker_clotho_audiocaps_base
  python tools/convert_checkpoint.py fense --sbert paraphrase-TinyBERT-L6-v2 --output DIR

Needs torch (`pip install "aac_jax[convert]"`). Subcommands: `aac_jax/convert/`.
"""

import argparse
import importlib
import sys

from aac_jax.convert import CONVERTERS


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  sub = parser.add_subparsers(dest='command', required=True)
  modules = {}
  for name, module_name in CONVERTERS.items():
    modules[name] = importlib.import_module(module_name)
    modules[name].add_arguments(sub.add_parser(name, help=modules[name].__doc__.split('\n')[0]))
  args = parser.parse_args(argv)
  try:
    modules[args.command].run(args)
  except (ValueError, OSError) as e:
    raise SystemExit(f'convert_checkpoint {args.command}: {e}') from e


if __name__ == '__main__':
  main(sys.argv[1:])
