"""Exports a trained model as a serialized `jax.export` function.

  python tools/export.py --workdir workdirs/demo/ce --output exported/demo

See `aac_jax/export.py` for the flags and the exported function's signature.
"""

from aac_jax import export

if __name__ == '__main__':
  export.run()
