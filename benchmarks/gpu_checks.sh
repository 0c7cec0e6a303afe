#!/bin/bash
# The checks of the accelerator paths that no CPU can run, in one go (docs/performance.md, "On a
# GPU"): cuDNN attention against XLA's, attention and RASR cost in bfloat16, XLA's memory
# analysis against the measured peak, and how busy the loop keeps the device.
#
#   bash benchmarks/gpu_checks.sh [OUT_DIR]    # from the repository root, on one GPU
#
# Each check runs under its own time limit (under 10 minutes in all) and writes
# OUT_DIR/NAME.log (default /tmp/gpu_checks); the last LINES_SHOWN (30) lines of each log are
# printed. PYTHON names the interpreter (python3). Exits 1 if any check failed or ran out of time.
set -u
out=${1:-/tmp/gpu_checks}
python=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
failed=0

check() { # NAME SECONDS COMMAND...
  local name=$1 seconds=$2 status
  shift 2
  echo "== $name ($(date +%T))"
  timeout -k 10 "$seconds" "$@" >"$out/$name.log" 2>&1
  status=$?
  echo "== $name: exit $status"
  [ "$status" -eq 0 ] || failed=1
  grep -v -E '^[IWE][0-9]{4} ' "$out/$name.log" | tail -n "${LINES_SHOWN:-30}"
}

check devices 20 "$python" -c "import jax; print(jax.__version__, jax.devices())"
check cudnn_tests 60 "$python" -m pytest -q -p no:cacheprovider tests/test_attention.py \
  -k "cudnn or auto_picks"
check rasr_overhead 270 "$python" benchmarks/rasr_overhead.py --config=configs/bench.py \
  --config.model.dtype=bfloat16 --steps=3
check memory_peak 100 "$python" benchmarks/memory_peak.py --config=configs/400m.py:gpu_1 \
  --config.model.num_layers=4 --config.train.batch_size=16 --config.train.memory_limit_gib=24
rm -rf "$out/loop_trace" # a finished run there would be resumed, not traced
check loop_trace 100 "$python" benchmarks/loop_trace.py --workdir="$out/loop_trace" \
  --set=model.dtype=bfloat16
check attention 40 "$python" benchmarks/attention.py --dtype=bfloat16 --set=data.seq_len=2048
exit $failed
