#!/usr/bin/env bash
# The distributed path on the GPU machine: `torchrun --nproc_per_node=N -m napari_lightm.cli
# train` on JSRT fold 1, written as .npy pairs into a temporary dataset folder (never into
# the repository). Usage: bash benchmarks/gpu/ddp_train.sh JSRT_NPZ [NPROC] [STEPS]
set -euo pipefail
npz=${1:?path to jsrt_256.npz}; nproc=${2:-2}; steps=${3:-200}
ds=$(mktemp -d)/jsrt_fold1; out=$(mktemp -d)/run
python3 - "$npz" "$ds" <<'PY'
import re, sys
from pathlib import Path
import numpy as np
d = np.load(sys.argv[1]); root = Path(sys.argv[2])
(root / "images").mkdir(parents=True); (root / "labels").mkdir()
n = 0
for i, name in enumerate(d["ids"]):
    if int(re.search(r"(\d+)$", str(name)).group(1)) % 2:  # fold 1 = odd case numbers
        np.save(root / "images" / f"{name}.npy", d["image"][i])
        np.save(root / "labels" / f"{name}.npy", d["lung"][i])
        n += 1
print(f"wrote {n} fold-1 cases to {root}")
PY
nvidia-smi --query-gpu=name --format=csv,noheader
start=$(date +%s)
torchrun --nproc_per_node="$nproc" -m napari_lightm.cli train "$ds" "$out" --dims 2 \
  --modality XR --steps "$steps" --batch-size 8 --patch-size 256,256 --val-every "$steps" -q
echo "torchrun x$nproc: $steps steps in $(( $(date +%s) - start )) s"
ls -la "$out"
python3 -c "
import json, sys; from safetensors import safe_open
with safe_open('$out/last.safetensors', 'pt') as f: meta = f.metadata()
print('checkpoint metadata keys:', sorted(meta))"
