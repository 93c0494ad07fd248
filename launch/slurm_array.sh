#!/usr/bin/env bash
# Runs one sweep point per SLURM array task: line TASK_ID+1 of a command file
# written by `tools/sweep.py run --print` (one `python -m aac_jax.main ...`
# per point; the point's workdir is in its --workdir flag).
#
#   python tools/sweep.py run --config=configs/clotho.py:model=small \
#       --root=/shared/sweeps/clotho_lr --seeds=3 --print > clotho_lr.txt
#   sbatch --array=0-$(( $(wc -l < clotho_lr.txt) - 1 )) launch/slurm_array.sh clotho_lr.txt
#   python tools/sweep.py report --root=/shared/sweeps/clotho_lr    # any time
#
# Resubmitting the array resumes unfinished points from their checkpoints;
# finished ones stop at once. Run from the repository root with its
# virtual environment active (or set AAC_VENV).
#SBATCH --job-name=aac_sweep
#SBATCH --output=slurm-%A_%a.out
set -euo pipefail
COMMANDS="${1:?usage: sbatch --array=0-N launch/slurm_array.sh COMMAND_FILE}"
TASK="${SLURM_ARRAY_TASK_ID:?run this under sbatch --array}"
if [ -n "${AAC_VENV:-}" ]; then
  # shellcheck disable=SC1091
  . "$AAC_VENV/bin/activate"
fi
COMMAND="$(sed -n "$((TASK + 1))p" "$COMMANDS")"
if [ -z "$COMMAND" ]; then
  echo "no line $((TASK + 1)) in $COMMANDS" >&2
  exit 2
fi
echo "[slurm_array] task $TASK: $COMMAND"
exec bash -c "$COMMAND"
