#!/usr/bin/env bash
# The main job on the built-in synthetic benchmark, from a fresh machine:
# creates .venv, installs aac_jax, builds the synthetic dataset (first run
# only), trains the captioner with cross-entropy, fine-tunes it with SCST,
# evaluates both on the test split and prints a table against a
# constant-caption baseline.
#
#   bash launch/demo.sh                  # everything under workdirs/
#   WORKDIR=/tmp/demo bash launch/demo.sh
#   bash launch/demo.sh --config configs/synthetic_demo.py:runlocal   # a 1-minute smoke run
#
# Rerunning resumes from the checkpoints in WORKDIR.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${AAC_VENV:-.venv}"
WORKDIR="${WORKDIR:-workdirs/demo}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[demo] creating virtual environment $VENV"
  python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
# Reinstall whenever setup.py changed since the last install into this venv.
STAMP="$VENV/.aac_jax_setup.sha256"
if ! sha256sum --status -c "$STAMP" 2>/dev/null; then
  echo "[demo] installing aac_jax and its pinned dependencies (about 1 minute)"
  python -m pip install -q --upgrade pip >/dev/null
  python -m pip install -q -e .
  sha256sum setup.py > "$STAMP"
fi
exec python -m aac_jax.demo --workdir "$WORKDIR" "$@"
