"""Scores predicted captions; same as the `aac-evaluate` console command.

  python tools/evaluate.py --predictions preds.csv --references refs.csv [--meteor]

See `aac_jax/metrics/evaluate_cli.py` for every flag.
"""

from aac_jax.metrics import evaluate_cli

if __name__ == '__main__':
  evaluate_cli.run()
