"""Selective-scan speed on CPU: each backend against the sequential reference, in one run.

The reference is :func:`selective_scan_reference` in float32: vectorised over batch,
channels and states, one step per token (the shape of mamba_ssm's
``selective_scan_ref``). Every other backend is timed on the same inputs in the same
process, so the speed-up column compares like with like even on a shared machine.

    python benchmarks/bench_scan.py           # the four shapes of issue 3
    python benchmarks/bench_scan.py --quick   # smoke run: short sequences, not recorded

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
from napari_lightm.model.scan import BACKENDS, ScanArgs, available_backends  # noqa: E402

# (E, L), batch 1: the four shapes, then a short one where the reference's
# backward is affordable
SHAPES = [(64, 65_536), (128, 16_384), (256, 4_096), (64, 131_072), (64, 2_048)]
QUICK_SHAPES = [(64, 1_024), (128, 512)]
D_STATE = 16
# the reference's backward grows ~quadratically in L (each token's indexing backward
# writes a zero tensor of the whole input): ~15 s of CPU at L = 2,048, minutes beyond
MAX_REFERENCE_BACKWARD = 2_048


def scan_inputs(e: int, length: int, seed: int = 0) -> list[torch.Tensor]:
    """float32 ``u, delta, A, B, C, D, z, delta_bias`` as the mixer produces them."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(1, length, e, generator=g)
    delta = torch.randn(1, length, e, generator=g) * 0.5 - 4.0  # softplus -> ~0.02
    a = -torch.arange(1, D_STATE + 1, dtype=torch.float32).repeat(e, 1)  # S4D-real init
    b = torch.randn(1, length, D_STATE, generator=g)
    c = torch.randn(1, length, D_STATE, generator=g)
    d = torch.ones(e)
    z = torch.randn(1, length, e, generator=g)
    bias = torch.rand(e, generator=g)
    return [u, delta, a, b, c, d, z, bias]


def forward(backend: str, inputs: list[torch.Tensor]):
    fn = BACKENDS[backend].load()
    args = ScanArgs(*inputs, delta_softplus=True)
    return lambda: fn(args)


def forward_backward(backend: str, inputs: list[torch.Tensor]):
    fn = BACKENDS[backend].load()
    leaves = [t.clone().requires_grad_() for t in inputs]
    grad_out = torch.randn_like(inputs[0])

    def step():
        for t in leaves:
            t.grad = None
        (fn(ScanArgs(*leaves, delta_softplus=True)) * grad_out).sum().backward()

    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short sequences (smoke run)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per fast backend")
    args = parser.parse_args(argv)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    backends = [b for b in available_backends("cpu") if b != "reference"]

    rows = []

    def add(shape: str, backend: str, kind: str, t: tuple[float, float], speedup: str) -> None:
        rows.append([shape, backend, kind, f"{t[0] * 1e3:.1f}", f"{t[1] * 1e3:.0f}", speedup])
        print(rows[-1], flush=True)

    for e, length in shapes:
        inputs = scan_inputs(e, length)
        shape = f"E={e}, L={length:,}"
        with torch.no_grad():
            t_ref = timed(forward("reference", inputs), repeats=1, warm_up=False)
        add(shape, "reference (float32)", "forward", t_ref, "1.0x")
        for name in backends:
            with torch.no_grad():
                t = timed(forward(name, inputs), args.repeats)
            add(shape, name, "forward", t, f"{t_ref[0] / t[0]:.1f}x")
        t = timed(forward_backward("cpu", inputs), args.repeats)
        if length <= MAX_REFERENCE_BACKWARD:
            t_ref_fb = timed(forward_backward("reference", inputs), repeats=1, warm_up=False)
            add(shape, "reference (float32)", "forward+backward", t_ref_fb, "1.0x")
            add(shape, "cpu", "forward+backward", t, f"{t_ref_fb[0] / t[0]:.1f}x")
        else:  # the reference's autograd graph (one node per token) takes minutes
            add(shape, "cpu", "forward+backward", t,
                f"{t_ref[0] / t[0]:.1f}x vs reference forward")

    record(
        "Selective scan on CPU",
        ["shape (batch 1, N=16)", "backend", "pass", "wall ms", "CPU ms (all threads)",
         "speed-up vs reference (wall)"],
        rows,
        notes=(
            f"Best of {args.repeats} (reference: 1 call) after a warm-up; torch threads: "
            f"{torch.get_num_threads()}; {load_note()}. Reference = sequential float32 "
            "scan vectorised over batch/channels/states, one step per token."
        ),
        quick=args.quick,
    )


if __name__ == "__main__":
    main()
