"""Serves captions over HTTP with dynamic batching (the `aac-serve` command).

  python tools/serve.py --workdir workdirs/demo/ce --port 8080

See `aac_jax/serving/server.py` for the endpoints, limits and flags.
"""

from aac_jax.serving import server

if __name__ == '__main__':
  server.run()
