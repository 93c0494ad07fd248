"""Ablation sweeps: run, report, plot. See `aac_jax/sweeps/cli.py`.

  python tools/sweep.py run --config=configs/synthetic_demo.py --root=workdirs/ablation \\
      --seeds=2 --parallel=2
  python tools/sweep.py report --root=workdirs/ablation
  python tools/sweep.py plot --root=workdirs/ablation
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from aac_jax.sweeps import cli  # noqa: E402

if __name__ == '__main__':
  cli.run()
