"""GPU benchmark and parity run (issues 3 and 7): one command on the GPU machine.

Sections (each guarded: a failure is printed and the run goes on):

1. parity: ``triton`` scan vs the float64 reference (outputs and gradients, fp32 and
   bf16 inputs); ``triton`` vs ``mamba_ssm`` at a long shape; our ``Mamba`` vs
   ``mamba_ssm.Mamba`` with the same state dict (outputs and parameter gradients); the
   whole network with ``mamba_ssm.Mamba`` swapped in vs ours.
2. triton chunk/block sweep at E=64, L=2,097,152 (the best setting is used afterwards).
3. scan timings, fwd and fwd+bwd, for mamba-ssm, ``torch`` and ``triton``.
4. whole network (released layout, f=32): 3D 1x1x128^3 and 2D 1x3x512^2 inference,
   Adam train step 2x1x128^3 with peak memory; official (mamba_ssm.Mamba inside the same
   network) vs ours.

Every table goes through ``benchmarks._results.record`` (set ``LIGHTM_RESULTS`` to
collect them in another file). Run: ``python benchmarks/gpu/bench_gpu.py [--quick]``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root for `benchmarks`
from benchmarks._results import record

from napari_lightm.model import LightMUNet, Mamba
from napari_lightm.model.scan import (
    is_available,
    selective_scan,
    triton_scan,
)
from napari_lightm.model.scan.reference import selective_scan_reference

DEV = torch.device("cuda")
SCAN_SHAPES = [(64, 2_097_152), (64, 262_144), (128, 262_144), (512, 4_096)]  # (E, L), Bt=1
GiB = 2**30


def section(name: str):
    """Decorator: run a section, print its time, keep going on failure."""

    def wrap(fn):
        def run(*args, **kwargs):
            print(f"\n===== {name}", flush=True)
            t0 = time.time()
            try:
                return fn(*args, **kwargs)
            except Exception:
                traceback.print_exc()
                print(f"===== {name} FAILED", flush=True)
                return None
            finally:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
                print(f"===== {name} took {time.time() - t0:.1f} s", flush=True)

        return run

    return wrap


def cuda_time(fn, reps: int = 10, warmup: int = 2) -> float:
    """Median milliseconds of ``fn()`` over ``reps`` runs, CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (in float64)."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


# ---------------------------------------------------------------- inputs


def scan_inputs(bt: int, length: int, e: int, n: int = 16, dtype=torch.float32, harsh=False,
                seed: int = 0, device=DEV):
    """Random scan inputs in the token-major layout, as the mixer produces them."""
    g = torch.Generator(device="cpu").manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device)

    u = r(bt, length, e)
    delta = r(bt, length, e, scale=0.5 if not harsh else 3.0)
    a = -torch.exp(torch.log(torch.arange(1, n + 1).float()).repeat(e, 1)).to(device)
    if harsh:  # long decays next to fast ones
        a = a * torch.logspace(-3, 0.5, e)[:, None].to(device)
    b, c = r(bt, length, n), r(bt, length, n)
    d, z = r(e), r(bt, length, e)
    bias = (torch.rand(e, generator=g) * 4 - 6).to(device)  # softplus(bias) ~ dt of the init
    u, delta, b, c, z = (t.to(dtype) for t in (u, delta, b, c, z))
    return u, delta, a, b, c, d, z, bias


def scan_call(backend: str, args, grad: bool):
    u, delta, a, b, c, d, z, bias = args
    if grad:
        args = [t.detach().requires_grad_() for t in args]
        u, delta, a, b, c, d, z, bias = args
    y = selective_scan(u, delta, a, b, c, d, z, delta_bias=bias, delta_softplus=True,
                       backend=backend)
    return y, args


# ---------------------------------------------------------------- parity


@section("parity: triton vs float64 reference")
def parity_reference(rows: list) -> None:
    for harsh in (False, True):
        for dtype in (torch.float32, torch.bfloat16):
            args = scan_inputs(2, 1000, 24, harsh=harsh, dtype=dtype, seed=1)
            y, leaves = scan_call("triton", args, grad=True)
            gy = torch.randn_like(y)
            grads = torch.autograd.grad(y, leaves, gy)
            ref_leaves = [t.detach().double().requires_grad_() for t in args]
            u, delta, a, b, c, d, z, bias = ref_leaves
            yr = selective_scan_reference(u, delta, a, b, c, d, z, delta_bias=bias,
                                          delta_softplus=True)
            grads_r = torch.autograd.grad(yr, ref_leaves, gy.double())
            g_err = max(rel_err(x, r) for x, r in zip(grads, grads_r))
            rows.append([f"triton vs reference f64 ({'harsh' if harsh else 'plain'}, "
                         f"{str(dtype)[6:]} in)", "Bt=2 L=1000 E=24", rel_err(y, yr), g_err])


@section("parity: triton vs mamba_ssm")
def parity_mamba_scan(rows: list) -> None:
    args = scan_inputs(1, 65_536, 64, seed=2)
    y, leaves = scan_call("triton", args, grad=True)
    gy = torch.randn_like(y)
    grads = torch.autograd.grad(y, leaves, gy)
    ym, leaves_m = scan_call("mamba_ssm", args, grad=True)
    grads_m = torch.autograd.grad(ym, leaves_m, gy)
    rows.append(["triton vs mamba_ssm scan (fp32)", "Bt=1 L=65536 E=64", rel_err(y, ym),
                 max(rel_err(x, r) for x, r in zip(grads, grads_m))])


def official_mixer(ours: Mamba):
    """``mamba_ssm.Mamba`` of the same size holding ``ours``' weights."""
    from mamba_ssm import Mamba as MambaSSM

    theirs = MambaSSM(d_model=ours.d_model, d_state=ours.d_state, d_conv=ours.d_conv,
                      expand=ours.d_inner // ours.d_model).to(ours.A_log.device)
    missing = set(theirs.state_dict()) ^ set(ours.state_dict())
    if missing:
        raise RuntimeError(f"state-dict keys differ: {sorted(missing)}")
    theirs.load_state_dict(ours.state_dict())
    return theirs


def official_network(ours: LightMUNet) -> LightMUNet:
    """A copy of ``ours`` whose every mixer is ``mamba_ssm.Mamba`` (the released code's)."""
    net = copy.deepcopy(ours)
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, Mamba):
                setattr(module, name, official_mixer(child))
    return net


@section("parity: our Mamba / network vs mamba_ssm.Mamba")
def parity_official(rows: list) -> None:
    torch.manual_seed(0)
    ours = Mamba(32).to(DEV)
    theirs = official_mixer(ours)
    x = torch.randn(2, 4096, 32, device=DEV)
    y = ours(x)
    yt = theirs(x)
    gy = torch.randn_like(y)
    names = [name for name, _ in ours.named_parameters()]
    theirs_params = dict(theirs.named_parameters())
    g = torch.autograd.grad(y, list(ours.parameters()), gy)
    gt = torch.autograd.grad(yt, [theirs_params[name] for name in names], gy)
    worst = max(zip(g, gt, names), key=lambda p: rel_err(p[0], p[1]))
    print("worst parameter gradient:", worst[2], rel_err(worst[0], worst[1]))
    rows.append([f"our Mamba ({ours.backend}) vs mamba_ssm.Mamba", "d_model=32 Bt=2 L=4096",
                 rel_err(y, yt), rel_err(worst[0], worst[1])])
    ours.scan_backend = "mamba_ssm"
    rows.append(["our Mamba (mamba_ssm scan) vs mamba_ssm.Mamba", "d_model=32 Bt=2 L=4096",
                 rel_err(ours(x), yt), float("nan")])

    for dims, shape, cin, cout in ((3, (1, 1, 64, 64, 64), 1, 3), (2, (1, 3, 256, 256), 3, 2)):
        torch.manual_seed(1)
        net = LightMUNet.from_config("repo", dims, cin, cout).to(DEV)
        off = official_network(net)
        x = torch.randn(*shape, device=DEV)
        # cuDNN convolutions default to TF32, whose rounding turns 1e-7 differences between
        # the mixers into ~1e-3 ones downstream: compare in true float32
        tf32 = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        try:
            with torch.no_grad():
                y, yt = net(x), off(x)
        finally:
            torch.backends.cudnn.allow_tf32 = tf32
        rows.append([f"LightMUNet f=32 {dims}D ours vs mamba_ssm.Mamba inside",
                     "x".join(map(str, shape)), rel_err(y, yt), float("nan")])


# ---------------------------------------------------------------- scan timings


@section("triton sweep")
def triton_sweep() -> tuple[int, int] | None:
    """Time a few kernel settings at E=64, L=2M; keep the fastest for the later timings.

    Forward: (chunk, channels per program, warps); then backward (channels per
    program, warps) with the best forward setting, timed as fwd+bwd.
    """
    args = scan_inputs(1, 2_097_152, 64)
    rows, best = [], None

    def fwd():
        u, delta, a, b, c, d, z, bias = args
        return triton_scan.selective_scan_triton(u, delta, a, b, c, d, z, bias, True)

    for chunk, be, warps in ((32, 8, 4), (64, 4, 4), (32, 16, 4), (16, 16, 4), (64, 8, 8),
                             (32, 8, 2), (16, 32, 8), (128, 2, 4)):
        triton_scan.FWD_BLOCK_E, triton_scan.FWD_WARPS = be, warps
        triton_scan.DEFAULT_CHUNK = chunk
        try:
            ms = cuda_time(fwd, reps=5, warmup=1)
        except Exception as exc:  # e.g. out of registers / shared memory
            rows.append(["fwd", chunk, be, warps, f"failed: {type(exc).__name__}: {exc}"[:80]])
            continue
        rows.append(["fwd", chunk, be, warps, ms])
        if best is None or ms < best[0]:
            best = (ms, chunk, be, warps)
    if best is None:
        return None
    _, chunk, be, warps = best
    triton_scan.FWD_BLOCK_E, triton_scan.FWD_WARPS, triton_scan.DEFAULT_CHUNK = be, warps, chunk
    best_b = None
    for bbe, bwarps in ((4, 4), (2, 4), (8, 4), (4, 2), (8, 8), (2, 2)):
        triton_scan.BWD_BLOCK_E, triton_scan.BWD_WARPS = bbe, bwarps
        try:
            ms = cuda_time(lambda: fwd_bwd("triton", args), reps=3, warmup=1)
        except Exception as exc:
            rows.append(["fwd+bwd", chunk, bbe, bwarps, f"failed: {type(exc).__name__}"[:80]])
            continue
        rows.append(["fwd+bwd", chunk, bbe, bwarps, ms])
        if best_b is None or ms < best_b[0]:
            best_b = (ms, bbe, bwarps)
    if best_b is not None:
        triton_scan.BWD_BLOCK_E, triton_scan.BWD_WARPS = best_b[1], best_b[2]
    record("GPU: triton scan settings, E=64, L=2,097,152", ["pass", "chunk", "channels/program",
           "warps", "ms"], rows,
           notes=f"chosen: chunk={chunk}, fwd {be} channels x {warps} warps; bwd "
                 f"{triton_scan.BWD_BLOCK_E} channels x {triton_scan.BWD_WARPS} warps")
    return chunk, be


def fwd_bwd(backend: str, args):
    y, leaves = scan_call(backend, args, grad=True)
    y.backward(torch.ones_like(y))


@section("scan timings")
def scan_timings(chunk: int, quick: bool) -> None:
    backends = [b for b in ("mamba_ssm", "torch", "triton") if is_available(b)]
    rows = []
    for e, length in SCAN_SHAPES:
        args = scan_inputs(1, length, e)
        gbytes = (4 * e * length * 4 + 2 * 16 * length * 4) / 1e9  # u, delta, z, y + B, C
        times = {}
        for backend in backends:
            big = e * length > 2**24
            reps = 2 if backend == "torch" else 10
            try:
                f = cuda_time(lambda b=backend, a=args: scan_call(b, a, grad=False), reps=reps,
                              warmup=1)
            except Exception as exc:
                f = f"failed: {type(exc).__name__}"
            if backend == "torch" and (big or quick):
                fb = "skipped (autograd of the step loop stores every state)"
            else:
                try:
                    fb = cuda_time(lambda b=backend, a=args: fwd_bwd(b, a), reps=reps, warmup=1)
                except Exception as exc:
                    fb = f"failed: {type(exc).__name__}"
            times[backend] = (f, fb)
            rows.append([f"E={e} L={length:,}", backend, f, fb,
                         gbytes / (f / 1e3) if isinstance(f, float) else ""])
        if "mamba_ssm" in times and isinstance(times["mamba_ssm"][0], float):
            m = times["mamba_ssm"]
            t = times.get("triton", (None, None))
            if isinstance(t[0], float):
                rows.append([f"E={e} L={length:,}", "speed-up triton vs mamba_ssm",
                             m[0] / t[0], m[1] / t[1] if isinstance(t[1], float) else "", ""])
        del args
        torch.cuda.empty_cache()
    record("GPU: selective scan, mamba-ssm vs ours (fp32, Bt=1, N=16)",
           ["shape", "backend", "fwd ms", "fwd+bwd ms", "fwd GB/s (u,delta,z,y,B,C once)"], rows,
           notes=f"triton chunk={chunk}, channels/program={triton_scan.FWD_BLOCK_E}; "
                 f"reverse scan via flip: {triton_scan._flip_mode(DEV)}")


# ---------------------------------------------------------------- whole network


def peak_gib(fn) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / GiB


@section("whole network")
def network_timings(quick: bool) -> None:
    from napari_lightm.model.cuda_fast import enable_fast_norms, enable_rvm_checkpointing

    rows = []
    cases = [("3D f=32 inference", 3, (1, 1, 128, 128, 128), 1, 3),
             ("2D f=32 inference", 2, (1, 3, 512, 512), 3, 2),
             ("2D f=16 inference", 2, (1, 3, 512, 512), 3, 2)]
    for name, dims, shape, cin, cout in cases:
        torch.manual_seed(0)
        cfg = "light" if "f=16" in name else "repo"
        ours = LightMUNet.from_config(cfg, dims, cin, cout).to(DEV).eval()
        fast = copy.deepcopy(ours)
        enable_fast_norms(fast)
        nets = {"ours (" + ours.scan_backend + ")": ours,
                "ours (" + ours.scan_backend + ") + fast norms": fast}
        if is_available("mamba_ssm"):
            nets = {"official (mamba_ssm.Mamba)": official_network(ours), **nets}
        x = torch.randn(*shape, device=DEV)
        base = None
        for label, net in nets.items():
            with torch.no_grad():
                ms = cuda_time(lambda n=net, x=x: n(x), reps=5 if quick else 10)
                mem = peak_gib(lambda n=net, x=x: n(x))
            base = base or ms
            rows.append([name, "x".join(map(str, shape)), label, ms, mem, base / ms])
        del nets, ours, fast
        torch.cuda.empty_cache()

    # Adam train step, 2x1x128^3, 3 classes, CE loss
    torch.manual_seed(0)
    ours = LightMUNet.from_config("repo", 3, 1, 3).to(DEV)
    x = torch.randn(2, 1, 128, 128, 128, device=DEV)
    target = torch.randint(0, 3, (2, 128, 128, 128), device=DEV)
    variants = []  # (label, network, recompute RVM layers, fast norms)
    if is_available("mamba_ssm"):
        variants.append(("official (mamba_ssm.Mamba)", official_network(ours), False, False))
    name = "ours (" + ours.scan_backend + ")"
    variants += [(name + " + RVM recomputation", copy.deepcopy(ours), True, False),
                 (name + " + fast norms + RVM recomputation", copy.deepcopy(ours), True, True),
                 (name + " + fast norms, no recomputation", ours, False, True)]
    base = None
    for label, net, ckpt, fast_norms in variants:
        enable_fast_norms(net, fast_norms)
        enable_rvm_checkpointing(net, ckpt)
        opt = torch.optim.Adam(net.parameters(), lr=1e-4, weight_decay=1e-5, eps=1e-5)

        def step(net=net, opt=opt):
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(net(x), target)
            loss.backward()
            opt.step()

        try:
            mem = peak_gib(step)
            ms = cuda_time(step, reps=3 if quick else 5, warmup=1)
        except torch.cuda.OutOfMemoryError:
            rows.append(["train step Adam", "2x1x128x128x128", label, "out of memory", "", ""])
            del opt
            torch.cuda.empty_cache()
            continue
        base = base or ms
        rows.append(["train step Adam", "2x1x128x128x128", label, ms, mem, base / ms])
        del opt, net
        torch.cuda.empty_cache()
    record("GPU: LightM-UNet released layout, official mixers vs ours (fp32)",
           ["case", "input", "network", "ms", "peak GiB", "speed-up vs first row"], rows,
           notes="official = the same network with mamba_ssm.Mamba (2.3.2, no causal-conv1d) "
                 "as every mixer, same weights; fast norms / recomputation: "
                 "napari_lightm.model.cuda_fast")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--skip-network", action="store_true")
    opts = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA GPU")
    print(torch.cuda.get_device_name(0), "torch", torch.__version__, "mamba_ssm:",
          is_available("mamba_ssm"), "triton:", is_available("triton"), flush=True)
    print("reverse scan needs flip:", triton_scan._flip_mode(DEV), flush=True)
    rows: list = []
    parity_reference(rows)
    if is_available("mamba_ssm"):
        parity_mamba_scan(rows)
        parity_official(rows)
    record("GPU: parity (max |diff| / max |ref|)", ["check", "shape", "output", "gradients"],
           rows, notes="acceptance: <= 1e-4 (fp32 inputs); bf16 rows show input rounding")
    best = triton_sweep()
    rows = []
    parity_reference(rows)
    record("GPU: parity of triton with the settings chosen by the sweep", ["check", "shape",
           "output", "gradients"], rows)
    scan_timings(best[0] if best else triton_scan.DEFAULT_CHUNK, opts.quick)
    if not opts.skip_network:
        network_timings(opts.quick)


if __name__ == "__main__":
    main()
