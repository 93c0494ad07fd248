#!/usr/bin/env bash
# Launches aac_jax training on every worker of a Cloud TPU VM pod slice.
#
#   TPU_NAME=aac-v4-32 ZONE=us-central2-b \
#   CONFIG=configs/clotho.py WORKDIR=gs://my-bucket/aac/clotho_base \
#   DATA_DIR=gs://my-bucket/tensorflow_datasets \
#   bash launch/tpu_pod.sh [setup|train|scst|tail] [--dry-run]
#
#   setup  copies this checkout to every worker and installs it (once per VM).
#   train  starts the same command on all workers; JAX discovers the pod
#          (jax.distributed.initialize() needs no arguments on TPU VMs), each
#          process reads its own shard of the data, the global batch is
#          assembled with jax.make_array_from_process_local_data.
#   scst   the same for the SCST stage (python -m aac_jax.scst.main).
#   tail   shows the log of worker 0.
#
# Preemption: TPU VMs send SIGTERM; the trainer saves at the next step and
# exits 0. Rerunning `train` with the same WORKDIR resumes from there, on a
# slice of any size (the data position is global, README "Several hosts").
# --dry-run prints the commands instead of running them.
# Build the TFDS dataset once (tools/build_dataset.py) and copy it to
# DATA_DIR; workers never download anything.
set -euo pipefail
ACTION=train
DRY_RUN=""
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=--dry-run ;;
    *) ACTION="$arg" ;;
  esac
done
: "${TPU_NAME:?set TPU_NAME to the TPU VM name}"
: "${ZONE:?set ZONE to the TPU zone}"
CONFIG="${CONFIG:-configs/clotho.py}"
WORKDIR="${WORKDIR:?set WORKDIR (a gs:// path shared by all workers)}"
DATA_DIR="${DATA_DIR:-}"
EXTRA_FLAGS="${EXTRA_FLAGS:-}"
REMOTE_DIR="aac_jax_src"

run() {
  if [ "$DRY_RUN" = "--dry-run" ]; then printf '%q ' "$@"; echo; else "$@"; fi
}

on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$1"
}

case "$ACTION" in
  setup)
    run gcloud compute tpus tpu-vm scp --recurse --zone="$ZONE" --worker=all \
      README.md setup.py aac_jax configs launch tools "$TPU_NAME:$REMOTE_DIR/"
    on_all_workers "cd $REMOTE_DIR && python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]==0.10.2'"
    ;;
  train|scst)
    module=aac_jax.main
    [ "$ACTION" = scst ] && module=aac_jax.scst.main
    data_flag=""
    [ -n "$DATA_DIR" ] && data_flag=" --config.dataset.data_dir=$DATA_DIR"
    on_all_workers "cd $REMOTE_DIR && nohup .venv/bin/python -m $module --multihost \
--config=$CONFIG --workdir=$WORKDIR$data_flag $EXTRA_FLAGS > train.log 2>&1 &"
    ;;
  tail)
    run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=0 \
      --command="tail -n 50 $REMOTE_DIR/train.log"
    ;;
  *)
    echo "unknown action '$ACTION': use setup, train, scst or tail" >&2
    exit 2
    ;;
esac
