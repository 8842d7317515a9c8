"""Where the whole network's time goes on CUDA (issue 7): top CUDA kernels of our 3D
inference and train step, and of the official path; cudnn.benchmark and torch.compile
tried on ours. Run after ``run_all.sh``'s setup (mamba-ssm importable for the official rows).

Usage: ``python benchmarks/gpu/profile_gpu.py [--compile]``
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_gpu as bench
from benchmarks._results import record

from napari_lightm.model import LightMUNet
from napari_lightm.model.cuda_fast import disable_fast_path, enable_fast_path
from napari_lightm.model.scan import is_available

DEV = torch.device("cuda")


def top_operators(prof, title: str, iters: int, top: int = 25) -> None:
    """Record the ``top`` torch operators by the CUDA time of the kernels they launch
    themselves, per input shapes (which op, at which size, the elementwise time is)."""
    events = [e for e in prof.key_averages(group_by_input_shape=True)
              if e.device_type == torch.autograd.DeviceType.CPU and e.self_device_time_total > 0]
    events.sort(key=lambda e: e.self_device_time_total, reverse=True)
    rows = [[e.key[:50], str(e.input_shapes)[:70], e.count // iters,
             e.self_device_time_total / iters / 1e3] for e in events[:top]]
    record(title, ["operator", "input shapes", "calls/iter", "CUDA ms/iter"], rows)


def top_kernels(fn, title: str, top: int = 20, iters: int = 2, group: tuple = (),
                ops_title: str = "") -> None:
    """Profile ``iters`` calls of ``fn`` and record the ``top`` ops by CUDA time (and, with
    ``group``, the summed time of the kernels whose names contain one of those; with
    ``ops_title``, also the top operators by shape)."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU],
                 record_shapes=bool(ops_title)) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    events = list(prof.key_averages())
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    if kernels:
        def own(e):
            return e.device_time_total
    else:  # older profilers: operators with their own device time
        kernels = events

        def own(e):
            return e.self_device_time_total
    kernels = [e for e in kernels if own(e) > 0]
    total = sum(own(e) for e in kernels) or 1.0
    kernels.sort(key=own, reverse=True)
    rows = [[e.key[:90], e.count // iters, own(e) / iters / 1e3, 100.0 * own(e) / total]
            for e in kernels[:top]]
    note = f"sum of kernel time per iteration: {total / iters / 1e3:.1f} ms"
    if group:
        grouped = sum(own(e) for e in kernels if any(g in e.key for g in group))
        note += (f"; of which {', '.join(group)}: {grouped / iters / 1e3:.1f} ms "
                 f"({100.0 * grouped / total:.0f} %)")
    record(title, ["kernel", "calls/iter", "ms/iter", "% of kernel time"], rows, notes=note)
    if ops_title:
        top_operators(prof, ops_title, iters)


SCAN_KERNELS = ("_chunk_end_kernel", "_chunk_out_kernel", "_chunk_adj_kernel",
                "_chunk_bwd_kernel", "_carry_kernel")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--compile", action="store_true", help="also try torch.compile")
    opts = parser.parse_args()
    torch.manual_seed(0)
    ours = LightMUNet.from_config("repo", 3, 1, 3).to(DEV).eval()
    how = enable_fast_path(ours)
    x = torch.randn(1, 1, 128, 128, 128, device=DEV)
    try:  # eager (the CUDA graph replays the same kernels)
        with torch.no_grad(), bench.precision("tf32"):
            top_kernels(lambda: ours(x), f"GPU profile: ours + {how}, TF32 matmuls, 3D f=32 "
                        "inference 128^3 (eager)")
    except Exception:
        traceback.print_exc()
    try:  # train step, ours, fast path with recomputation, TF32 matmuls (as iter_train)
        net = LightMUNet.from_config("repo", 3, 1, 3).to(DEV)
        how = enable_fast_path(net, training=True)
        xb = torch.randn(2, 1, 128, 128, 128, device=DEV)
        target = torch.randint(0, 3, (2, 128, 128, 128), device=DEV)

        def step(net=net, xb=xb, target=target):
            net.zero_grad(set_to_none=True)
            with bench.precision("tf32"):  # the backward's too, as iter_train
                loss = torch.nn.functional.cross_entropy(net(xb), target)
                loss.backward()

        top_kernels(step, f"GPU profile: ours + {how}, TF32 matmuls, 3D f=32 train step "
                    "2x128^3 (fwd+bwd)", top=30, iters=1, group=SCAN_KERNELS,
                    ops_title=f"GPU profile: ours + {how}, train step 2x128^3, top operators")
        if is_available("mamba_ssm"):  # the same step with mamba_ssm.Mamba mixers, fp32
            official = bench.official_network(net)
            disable_fast_path(official)  # plain modules, as released

            def step_official(net=official, xb=xb, target=target):
                net.zero_grad(set_to_none=True)
                with bench.precision("fp32"):
                    loss = torch.nn.functional.cross_entropy(net(xb), target)
                    loss.backward()

            top_kernels(step_official, "GPU profile: official (mamba_ssm.Mamba), fp32, 3D f=32 "
                        "train step 2x128^3 (fwd+bwd)", top=20, iters=1,
                        group=("selective_scan",))
            del official
        del net, xb, target
        torch.cuda.empty_cache()
    except Exception:
        traceback.print_exc()
    rows = []
    if opts.compile:  # the same fast-path model, TF32 throughout: eager, graphed, compiled
        from napari_lightm.model.cuda_fast import GraphedInference

        torch.backends.cudnn.benchmark = True
        graphed = GraphedInference(ours)
        with torch.no_grad(), bench.precision("tf32"):
            rows.append(["ours + fused kernels", "eager", "",
                         bench.cuda_time(lambda: ours(x), reps=10)])
            rows.append(["ours + fused kernels", "CUDA graph", "",
                         bench.cuda_time(lambda: graphed(x), reps=10)])
        for mode in ("default", "reduce-overhead"):
            try:
                torch._dynamo.reset()
                t0 = time.time()
                compiled = torch.compile(ours, mode=mode)
                with torch.no_grad(), bench.precision("tf32"):
                    compiled(x)
                    torch.cuda.synchronize()
                    t_compile = time.time() - t0
                    ms = bench.cuda_time(lambda c=compiled: c(x), reps=10)
                rows.append(["ours + fused kernels, torch.compile", f"mode={mode}",
                             f"{t_compile:.0f}", ms])
            except Exception as exc:
                traceback.print_exc()
                rows.append(["ours + fused kernels, torch.compile", f"mode={mode}",
                             f"failed: {type(exc).__name__}", ""])
            print(rows[-1], flush=True)
    if rows:
        record("GPU: 3D f=32 inference 1x1x128^3, TF32, eager vs CUDA graph vs torch.compile",
               ["network", "setting", "compile s", "ms"], rows,
               notes="cudnn.benchmark on for all rows; the scans stay eager inside compiled "
                     "graphs (torch.compiler.disable: one graph break per mixer)")

if __name__ == "__main__":
    main()
