#!/usr/bin/env bash
# Train on every worker of a Cloud TPU VM slice: copy this checkout, install, start, stream logs.
#
#   launch/tpu_vm.sh TPU_NAME ZONE CONFIG WORKDIR [trainer flags...]
#   launch/tpu_vm.sh my-v5p-256 us-east5-a configs/8b.py gs://my-bucket/rasr_8b \
#       --config.data.files='/mnt/data/corpus/*.array_record'
#
# WORKDIR must be shared by all workers: a bucket (gs://, read and written through etils.epath
# with the gcs extra this script installs) or a filesystem mounted on every worker (gcsfuse, NFS,
# Filestore); ArrayRecord data must be on a mounted filesystem (docs/scale_out.md). Set PROJECT
# to pass --project to gcloud. The workers find each other through jax's
# TPU cluster detection (--distributed); the mesh comes from the config (configs/8b.py defaults
# to the tpu_v5p_256 preset; pick another with CONFIG:preset, e.g. configs/8b.py:tpu_fsdp).
# Logs: ~/rasr_jax.log on each worker; this script follows worker 0's. Stop with
#   gcloud compute tpus tpu-vm ssh TPU_NAME --zone=ZONE --worker=all --command='pkill -TERM -f rasr_jax.main'
# (SIGTERM: every worker saves a checkpoint at the next step boundary and exits 0).
set -euo pipefail
tpu=${1:?usage: launch/tpu_vm.sh TPU_NAME ZONE CONFIG WORKDIR [flags...]}
zone=${2:?usage: launch/tpu_vm.sh TPU_NAME ZONE CONFIG WORKDIR [flags...]}
config=${3:?usage: launch/tpu_vm.sh TPU_NAME ZONE CONFIG WORKDIR [flags...]}
workdir=${4:?usage: launch/tpu_vm.sh TPU_NAME ZONE CONFIG WORKDIR [flags...]}
shift 4
cd "$(dirname "$0")/.."
gcloud_tpu=(gcloud compute tpus tpu-vm ${PROJECT:+--project="$PROJECT"})

# 1. Sync: this checkout's tracked files, as one archive, to every worker.
archive=$(mktemp -t rasr_jax.XXXXXX.tar.gz)
trap 'rm -f "$archive"' EXIT
git archive --format=tar.gz -o "$archive" HEAD
"${gcloud_tpu[@]}" scp "$archive" "$tpu":rasr_jax.tar.gz --zone="$zone" --worker=all
# 2. Install (jax with its TPU runtime, then this package).
"${gcloud_tpu[@]}" ssh "$tpu" --zone="$zone" --worker=all --command="
  set -e; rm -rf ~/rasr_jax && mkdir ~/rasr_jax && tar -xzf ~/rasr_jax.tar.gz -C ~/rasr_jax
  python3 -m venv ~/rasr_venv && ~/rasr_venv/bin/pip install -q -U pip
  ~/rasr_venv/bin/pip install -q 'jax[tpu]' -e ~/rasr_jax'[gcs]'"
# 3. Start the trainer on all workers at once (each is one jax process).
flags=$(printf ' %q' --config="$config" --workdir="$workdir" --distributed "$@")
"${gcloud_tpu[@]}" ssh "$tpu" --zone="$zone" --worker=all --command="
  cd ~/rasr_jax && nohup ~/rasr_venv/bin/python -m rasr_jax.main$flags > ~/rasr_jax.log 2>&1 &"
# 4. Follow worker 0 (only process 0 logs progress; the others log warnings and errors).
exec "${gcloud_tpu[@]}" ssh "$tpu" --zone="$zone" --worker=0 --command="tail -n +1 -F ~/rasr_jax.log"
