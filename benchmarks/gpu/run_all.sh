#!/bin/bash
# ONE command on the GPU machine (device tool, carry [".gpu"]): build/install mamba-ssm
# from .gpu/ (see ../shared/gpu/README.md; a prebuilt wheel in .gpu/ skips the build),
# then the parity checks + timings of bench_gpu.py and the tests marked gpu.
# Logs and the recorded tables go to $OUT (RESULTS_gpu.md: append it to
# benchmarks/RESULTS.md on your machine). Usage: bash benchmarks/gpu/run_all.sh [--quick]
set -uo pipefail
cd "$(dirname "$0")/../.."  # the repository root
OUT=${OUT:-/tmp/lightm-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export LIGHTM_RESULTS="$OUT/RESULTS_gpu.md"
build=.gpu/build_on_device.sh; [ -f "$build" ] || build=../shared/gpu/build_on_device.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/log.txt"
# the build script copies .gpu/*.whl into /tmp/wheels and installs them all into /tmp/site
t0=$(date +%s)
(OUT= bash "$build") 2>&1 | tail -5 | tee -a "$OUT/log.txt"
echo "build/install: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/log.txt"
if [ ! -e .gpu/mamba_ssm-*.whl ] && ls /tmp/wheels/mamba_ssm-*.whl >/dev/null 2>&1; then
  mkdir -p "$OUT/wheels"  # bring the fresh wheel back (15 MB parts; cat them together)
  for w in /tmp/wheels/mamba_ssm-*.whl; do split -b 15m "$w" "$OUT/wheels/$(basename "$w").part_"; done
fi
export PYTHONPATH=/tmp/site:$(pwd)/src:$(pwd):${PYTHONPATH:-}
python3 benchmarks/gpu/bench_gpu.py "$@" 2>&1 | tee -a "$OUT/log.txt"
python3 -m pytest -p no:cacheprovider -m gpu -q tests/test_scan_gpu.py 2>&1 | tail -25 \
  | tee -a "$OUT/log.txt"
