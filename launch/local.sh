#!/usr/bin/env bash
# Train on this machine (CPU, or the local GPUs / TPU chips), resuming from WORKDIR if it exists.
#   launch/local.sh configs/tiny.py /tmp/rasr_tiny [--config.train.steps=100 ...]
set -euo pipefail
config=${1:?usage: launch/local.sh CONFIG WORKDIR [flags...]}
workdir=${2:?usage: launch/local.sh CONFIG WORKDIR [flags...]}
shift 2
cd "$(dirname "$0")/.."
exec python -m rasr_jax.main --config="$config" --workdir="$workdir" "$@"
