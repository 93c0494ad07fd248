#!/usr/bin/env bash
# Runs the aac_jax checks: lint, format, then the test suite on 8 simulated
# CPU devices. Creates/updates the virtual environment it needs first.
#
#   bash tools/test.sh               # everything
#   bash tools/test.sh tests/test_x.py -k name   # extra args go to pytest
#
# AAC_VENV picks the virtual environment (default: .venv in the repo).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${AAC_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[test.sh] creating virtual environment $VENV"
  python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip >/dev/null
echo "[test.sh] installing aac_jax[test] into $VENV"
python -m pip install -q -e '.[test]'
# PyTorch reference modules of the parity tests (tests/torch_reference.py):
# conette pins an old torch stack, so it and its torchoutil come without deps.
python -m pip install -q --no-deps conette==0.3.2 torchoutil==0.3.1
echo "[test.sh] ruff check + format check"
ruff check .
ruff format --check .
echo "[test.sh] pytest (8 simulated CPU devices per worker)"
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=8}"
export JAX_PLATFORMS=cpu
# Test files run on AAC_TEST_WORKERS processes (default 2; 0 = in this process).
# A file's tests stay on one worker, so module fixtures are built once; the
# slowest files start first (tests/conftest.py orders them).
python -m pytest -q -n "${AAC_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"
