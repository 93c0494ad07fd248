"""Builds Clotho, AudioCaps, WavCaps, MACS or a custom folder as TFDS (`aac-build-dataset`).

  python tools/build_dataset.py clotho --source_dir ~/data/clotho
  python tools/build_dataset.py bench --clips 1000

See aac_jax/data/build_cli.py for every flag.
"""

import pathlib
import sys

# Runs from a checkout without `pip install -e .` too.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from aac_jax.data import build_cli  # noqa: E402

if __name__ == '__main__':
  sys.exit(build_cli.run())
