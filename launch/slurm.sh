#!/usr/bin/env bash
# Launches aac_jax training on a SLURM GPU cluster: one process per node,
# each using all the GPUs of its node.
#
#   CONFIG=configs/clotho.py WORKDIR=/shared/runs/clotho_base \
#   DATA_DIR=/shared/tensorflow_datasets NODES=2 GPUS_PER_NODE=8 \
#   bash launch/slurm.sh [train|scst] [--dry-run]
#
#   train  submits `python -m aac_jax.main` with sbatch; srun starts one task
#          per node and JAX reads the coordinator, the process count and each
#          process id from SLURM's variables (--multihost).
#   scst   the same for the SCST stage (python -m aac_jax.scst.main).
#
# Where JAX cannot discover the cluster, give it explicitly on every process:
# --coordinator_address=HOST:PORT --num_processes=N --process_id=I (or
# AAC_COORDINATOR_ADDRESS, AAC_NUM_PROCESSES, AAC_PROCESS_ID).
#
# WORKDIR and DATA_DIR must be on a file system every node sees. SLURM sends
# SIGTERM two minutes before the time limit (--signal); the trainer saves
# at the next step and exits 0; `--requeue` lets SLURM restart the job,
# which resumes from WORKDIR on however many nodes it gets.
# --dry-run prints the sbatch command instead of submitting it.
set -euo pipefail
ACTION=train
DRY_RUN=""
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=--dry-run ;;
    *) ACTION="$arg" ;;
  esac
done
CONFIG="${CONFIG:-configs/clotho.py}"
WORKDIR="${WORKDIR:?set WORKDIR (a folder every node sees)}"
DATA_DIR="${DATA_DIR:-}"
NODES="${NODES:-2}"
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
TIME="${TIME:-24:00:00}"
PYTHON="${PYTHON:-python}"
EXTRA_FLAGS="${EXTRA_FLAGS:-}"
SBATCH_FLAGS="${SBATCH_FLAGS:-}"

case "$ACTION" in
  train) module=aac_jax.main ;;
  scst) module=aac_jax.scst.main ;;
  *)
    echo "unknown action '$ACTION': use train or scst" >&2
    exit 2
    ;;
esac

# Each word quoted for the shell sbatch --wrap starts (paths may hold spaces).
command=$(printf '%q ' srun "$PYTHON" -m "$module" --multihost "--config=$CONFIG" \
  "--workdir=$WORKDIR" ${DATA_DIR:+"--config.dataset.data_dir=$DATA_DIR"})
command="$command$EXTRA_FLAGS"

# shellcheck disable=SC2086  # SBATCH_FLAGS is a list of flags.
submit=(sbatch --job-name=aac_jax --nodes="$NODES" --ntasks-per-node=1
  --gpus-per-node="$GPUS_PER_NODE" --time="$TIME" --signal=TERM@120 --requeue
  --output="aac_jax_%j.log" $SBATCH_FLAGS --wrap="$command")

if [ "$DRY_RUN" = "--dry-run" ]; then
  printf '%q ' "${submit[@]}"
  echo
else
  "${submit[@]}"
fi
