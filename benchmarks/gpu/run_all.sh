#!/bin/bash
# ONE command on the GPU machine (device tool, carry [".gpu"]): build/install mamba-ssm
# from .gpu/ (see ../shared/gpu/README.md; a prebuilt wheel in .gpu/ skips the build),
# then the parity checks + timings of bench_gpu.py and the tests marked gpu.
# Logs go to $OUT, the recorded tables to $OUT/results/*.jsonl: append each file to
# benchmarks/results/ on your machine, then update docs/benchmarks.md from them.
# Usage: [PROFILE=1] bash benchmarks/gpu/run_all.sh
# [bench_gpu.py options: --quick --skip-scan --skip-network --compile --cases 3d,2d32,2d16]
set -uo pipefail
cd "$(dirname "$0")/../.."  # the repository root
OUT=${OUT:-/tmp/lightm-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export LIGHTM_RESULTS_DIR="$OUT/results"
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
# the timings first (a quiet GPU), then the tests marked gpu (the CUDA kernels against
# their references; several minutes: float64 references at realistic sizes)
timeout ${BENCH_TIMEOUT:-420} python3 benchmarks/gpu/bench_gpu.py "$@" 2>&1 | tee -a "$OUT/log.txt"
timeout ${TEST_TIMEOUT:-300} python3 -m pytest -p no:cacheprovider -m gpu -q -rfE \
  tests/test_parity_gpu.py tests/test_scan_gpu.py tests/test_kernels_conv.py \
  tests/test_kernels_norms.py tests/test_kernels_dwconv.py tests/test_cuda_fast.py 2>&1 | tail -25 | tee -a "$OUT/log.txt"
if [ "${PROFILE:-0}" = 1 ]; then  # where the time goes (top kernels), also into $OUT/results
  timeout ${PROFILE_TIMEOUT:-120} python3 benchmarks/gpu/profile_gpu.py 2>&1 | tail -5 \
    | tee -a "$OUT/log.txt"
fi
