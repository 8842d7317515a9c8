"""Whole-network LightM-UNet inference on CPU, per selective-scan backend, in one run.

Cases: 2D 1x1x512x512 and 3D 1x1x64x128x128, ``light`` (f=16) and ``repo`` (f=32)
configurations, batch 1, float32, ``torch.inference_mode``. Backends ``cpu`` (numba)
and ``torch`` (pure PyTorch); the sequential ``reference`` only where it finishes in
about a minute (small inputs; see ``--reference``).

    python benchmarks/bench_model.py           # the issue's cases
    python benchmarks/bench_model.py --quick   # smoke run: small inputs, not recorded

Records the table through ``benchmarks/_results.py:record`` (a JSON line in the ignored
``benchmarks/results/``); the current tables are in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # benchmarks._results when run as a script

from benchmarks._results import load_note, record, timed  # noqa: E402
from napari_lightm.model import LightMUNet  # noqa: E402

CASES = [(2, (512, 512)), (3, (64, 128, 128))]
QUICK_CASES = [(2, (128, 128)), (3, (32, 32, 32))]
CONFIG_NAMES = ("light", "repo")
# the sequential reference steps through every token in Python: ~35 us per token and
# mixer on 2 cores, so only inputs up to this many voxels finish within ~a minute
REFERENCE_MAX_VOXELS = 128 * 128


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small inputs (smoke run)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", nargs="+", default=["cpu", "torch"])
    args = parser.parse_args(argv)
    cases = QUICK_CASES if args.quick else CASES

    rows = []
    for spatial_dims, size in cases:
        n_voxels = int(torch.tensor(size).prod())
        backends = list(args.backends)
        if n_voxels <= REFERENCE_MAX_VOXELS:
            backends.append("reference")
        for config in CONFIG_NAMES:
            torch.manual_seed(0)
            net = LightMUNet.from_config(config, spatial_dims, 1, 2).eval()
            x = torch.randn(1, 1, *size)
            times = {}
            for backend in backends:
                net.set_scan_backend(backend)
                # only the numba backend compiles or warms anything up; the pure-PyTorch
                # backends are timed once (minutes on the largest inputs)
                fast = backend == "cpu"
                with torch.inference_mode():
                    times[backend] = timed(lambda: net(x), args.repeats if fast else 1,  # noqa: B023
                                           warm_up=fast)
                print(spatial_dims, size, config, backend, times[backend], flush=True)
            base = times.get("torch")
            for backend, (wall, cpu) in times.items():
                rows.append([
                    f"{spatial_dims}D 1x1x{'x'.join(map(str, size))}", config, backend,
                    f"{wall:.3f}", f"{cpu:.2f}", f"{base[0] / wall:.1f}x" if base else "",
                ])

    record(
        "LightM-UNet inference on CPU",
        ["input", "config", "scan backend", "wall s", "CPU s (all threads)",
         "speed-up vs torch backend (wall)"],
        rows,
        notes=(
            f"cpu backend: best of {args.repeats} after a warm-up; torch and reference "
            f"backends: one call. float32, inference_mode; torch threads: "
            f"{torch.get_num_threads()}; {load_note()}."
        ),
        quick=args.quick,
    )


if __name__ == "__main__":
    main()
