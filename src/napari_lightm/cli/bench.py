"""``lightm bench``: time inference on a synthetic input."""

from __future__ import annotations

import argparse
import json
import time

from napari_lightm.cli._common import CLIError


def cmd_bench(args: argparse.Namespace) -> int:
    """Time model inference (forward of one batch, or a whole sliding-window predict)."""
    import numpy as np
    import torch

    from napari_lightm.engine import Segmenter, pick_device

    shape = tuple(args.shape)
    dims = len(shape)
    if dims not in (2, 3):
        raise CLIError(f"--shape needs 2 or 3 sizes, got {shape}")
    device = pick_device(args.device)
    backend = None if args.backend == "auto" else args.backend
    seg = Segmenter.new(
        dims,
        ["background", *[f"class {k}" for k in range(1, args.classes)]],
        modality="CT",
        config=args.config,
        device=device,
        scan_backend=backend,
        patch_size=tuple(min(s, p) for s, p in zip(shape, args.patch or shape)),
    )
    backend_name = seg.backend  # raises for an unusable backend
    if args.mode == "forward":
        if any(s % 8 for s in shape):
            raise CLIError(f"--shape {shape} must be multiples of 8 for --mode forward")
        x = torch.randn(args.batch, 1, *shape, device=device)

        def run() -> None:
            with torch.no_grad():
                seg.model(x)
    else:
        image = np.random.default_rng(0).normal(0, 300, shape).astype(np.float32)

        def run() -> None:
            seg.predict(image, tile_batch=args.batch)

    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(args.warmup + args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    row = {
        "mode": args.mode,
        "shape": list(shape),
        "batch": args.batch,
        "config": args.config,
        "backend": backend_name,
        "device": str(device),
        "median_ms": 1000 * float(np.median(times)),
        "min_ms": 1000 * float(np.min(times)),
        "repeats": len(times),
        "parameters": seg.info()["parameters"],
    }
    if device.type == "cuda":
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    print(json.dumps(row) if args.json else "  ".join(f"{k}={v}" for k, v in row.items()))
    return 0


def add_parser(sub, common) -> None:
    from napari_lightm.cli._common import class_count, ints, nonnegative_int, positive_int

    p = sub.add_parser("bench", help="time inference on a synthetic input",
                       description="Time a forward pass or a whole sliding-window prediction "
                       "of an untrained model on random input.")
    p.add_argument("--shape", type=ints, default=(256, 256),
                   help="input size, e.g. 256,256 or 128,128,128")
    p.add_argument("--config", default="light", choices=("light", "repo"), help="model width")
    p.add_argument("--backend", default="auto",
                   help="scan backend: auto, cpu, torch, triton, mamba_ssm, reference")
    p.add_argument(
        "--mode",
        default="forward",
        choices=("forward", "predict"),
        help="one forward pass, or a sliding-window predict of an image of --shape",
    )
    p.add_argument("--patch", type=ints, default=None,
                   help="window for --mode predict; default --shape")
    p.add_argument("--batch", type=positive_int, default=1, help="batch (tiles per forward)")
    p.add_argument("--classes", type=class_count, default=3, help="output classes")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed runs")
    p.add_argument("--warmup", type=nonnegative_int, default=1, help="untimed runs first")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.add_argument("--device", default="auto", help="auto (CUDA > MPS > CPU), cpu, cuda, cuda:N")
    p.set_defaults(func=cmd_bench)
