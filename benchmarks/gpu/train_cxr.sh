#!/bin/bash
# The shipped cxr-lungs model on the GPU machine (device tool, carry [".whl", ".gpu_data"]):
# the fold 1 -> fold 2 benchmark and the all-cases export run side by side in the
# background (setsid), so they can outlast one device call.
#   bash benchmarks/gpu/train_cxr.sh start [SECONDS]   # launch, then watch for SECONDS
#   bash benchmarks/gpu/train_cxr.sh collect [SECONDS] # wait up to SECONDS, copy to $OUT
# .whl holds the monai and safetensors wheels the machine lacks; .gpu_data/jsrt_256.npz a
# copy of ../shared/data/jsrt (never committed). Copy $OUT/zoo/* into
# src/napari_lightm/zoo/ and append $OUT/results/*.jsonl to benchmarks/results/ on your machine.
set -uo pipefail
cd "$(dirname "$0")/../.."
W=/tmp/cxr
DATA=${DATA:-.gpu_data/jsrt_256.npz}
export PYTHONPATH=/tmp/site:$(pwd)/src:$(pwd) PYTHONUNBUFFERED=1 LIGHTM_RESULTS_DIR=$W/results

watch() {  # print progress every 60 s for $1 seconds or until both runs end
  local end=$(( $(date +%s) + $1 ))
  while [ "$(date +%s)" -lt "$end" ]; do
    if ! pgrep -f train_cxr.py >/dev/null; then echo "both runs ended"; break; fi
    sleep 60
    for f in $W/fold.log $W/all.log; do echo "== $f: $(grep -c step "$f") lines"; tail -2 "$f"; done
  done
}

case "${1:-start}" in
start)
  mkdir -p $W
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  for protocol in fold all; do
    args=(--protocol $protocol --data "$DATA" ${STEPS:+--steps $STEPS})
    [ $protocol = fold ] && args+=(--json $W/fold.json) || args+=(--export $W/zoo)
    setsid nohup python3 benchmarks/train_cxr.py "${args[@]}" > $W/$protocol.log 2>&1 < /dev/null &
  done
  sleep 5
  watch "${2:-500}"
  ;;
collect)
  watch "${2:-500}"
  mkdir -p "$OUT/zoo" "$OUT/results"
  cp $W/fold.log $W/all.log $W/fold.json "$OUT/" 2>/dev/null
  cp $W/results/*.jsonl "$OUT/results/" 2>/dev/null
  cp $W/zoo/* "$OUT/zoo/" 2>/dev/null
  ls -la "$OUT" "$OUT/zoo"
  ;;
esac
