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

Every table goes through ``benchmarks._results.record`` (JSON lines in the ignored
``benchmarks/results/``; set ``LIGHTM_RESULTS_DIR`` to collect them in another folder; the
current tables are in ``docs/benchmarks.md``; the parity checks are also the gpu-marked tests
of ``tests/test_parity_gpu.py``). Run: ``python benchmarks/gpu/bench_gpu.py [--quick]``.
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
from napari_lightm.model.ops.launch import Scan as scan_launch
from napari_lightm.model.scan import ScanArgs, is_available, selective_scan
from napari_lightm.model.scan.reference import selective_scan_reference
from napari_lightm.model.scan.triton import selective_scan_triton
from napari_lightm.model.scan.triton.common import flip_mode

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
            yr = selective_scan_reference(ScanArgs(u, delta, a, b, c, d, z, delta_bias=bias,
                                                   delta_softplus=True))
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

    Forward: (chunk, channels per program, warps, most chunks per program walk); then the
    backward (channels per program, warps, most chunks per walk) with the best forward
    setting, timed as fwd+bwd.
    """
    args = scan_inputs(1, 2_097_152, 64)
    rows, best = [], None
    ts = scan_launch

    def fwd():
        u, delta, a, b, c, d, z, bias = args
        return selective_scan_triton(ScanArgs(u, delta, a, b, c, d, z, bias, True))

    for chunk, be, warps, sub in ((32, 8, 4, 1), (16, 16, 4, 64), (16, 16, 4, 16),
                                  (16, 32, 8, 64), (16, 16, 8, 64), (8, 32, 4, 128),
                                  (16, 8, 4, 64), (32, 16, 4, 64)):
        ts.FWD_BLOCK_E, ts.FWD_WARPS, ts.INFER_CHUNK, ts.FWD_MAX_SUB = be, warps, chunk, sub
        try:
            ms = cuda_time(fwd, reps=5, warmup=1)
        except Exception as exc:  # e.g. out of registers / shared memory
            rows.append(["fwd", chunk, be, warps, sub, f"failed: {type(exc).__name__}"[:80]])
            continue
        rows.append(["fwd", chunk, be, warps, sub, ms])
        if best is None or ms < best[0]:
            best = (ms, chunk, be, warps, sub)
    if best is None:
        return None
    _, chunk, be, warps, sub = best
    ts.FWD_BLOCK_E, ts.FWD_WARPS, ts.INFER_CHUNK, ts.FWD_MAX_SUB = be, warps, chunk, sub
    best_b = None
    for bchunk, bbe, bwarps, bsub in ((32, 4, 2, 8), (32, 2, 2, 8), (32, 2, 2, 1),
                                      (32, 4, 4, 8), (16, 4, 2, 8), (32, 8, 4, 8),
                                      (64, 2, 2, 8), (32, 4, 2, 16)):
        ts.DEFAULT_CHUNK, ts.BWD_BLOCK_E, ts.BWD_WARPS, ts.BWD_MAX_SUB = bchunk, bbe, bwarps, bsub
        try:
            ms = cuda_time(lambda: fwd_bwd("triton", args), reps=3, warmup=1)
        except Exception as exc:
            rows.append(["fwd+bwd", bchunk, bbe, bwarps, bsub, f"failed: {type(exc).__name__}"])
            continue
        rows.append(["fwd+bwd", bchunk, bbe, bwarps, bsub, ms])
        if best_b is None or ms < best_b[0]:
            best_b = (ms, bchunk, bbe, bwarps, bsub)
    if best_b is not None:
        ts.DEFAULT_CHUNK, ts.BWD_BLOCK_E, ts.BWD_WARPS, ts.BWD_MAX_SUB = best_b[1:]
    record("GPU: triton scan settings, E=64, L=2,097,152", ["pass", "chunk", "channels/program",
           "warps", "max chunks per program walk", "ms"], rows,
           notes=f"chosen: forward alone: chunk={chunk}, {be} channels x {warps} warps, walks "
                 f"of <= {sub} chunks; with backward: chunk={ts.DEFAULT_CHUNK}, bwd "
                 f"{ts.BWD_BLOCK_E} channels x {ts.BWD_WARPS} warps, walks of <= "
                 f"{ts.BWD_MAX_SUB} (forward kernels as above)")
    return chunk, be


@section("fused kernels")
def kernel_timings() -> None:
    """The fused conv / norm kernels against the torch ops they replace, at the 128^3 level
    (L=2,097,152 tokens, C=32, E=64), with a small sweep of their launch constants."""
    from napari_lightm.model.ops.conv1d.triton import causal_conv1d_silu
    from napari_lightm.model.ops.launch import Conv1d as conv
    from napari_lightm.model.ops.launch import Norms as norms
    from napari_lightm.model.ops.norms.group_norm_triton import group_norm_relu
    from napari_lightm.model.ops.norms.layer_norm_triton import layer_norm, residual_layer_norm

    L, C, E = 2_097_152, 32, 64
    rows = []

    def timed(name, fn, gbytes, note=""):
        try:
            ms = cuda_time(fn, reps=10, warmup=2)
            rows.append([name, note, ms, gbytes / (ms / 1e3)])
        except Exception as exc:
            rows.append([name, note, f"failed: {type(exc).__name__}"[:60], ""])

    x = torch.randn(1, L, 2 * E, device=DEV)[..., :E]  # in_proj's x half, token stride 2E
    w, bias = torch.randn(E, 4, device=DEV) * 0.3, torch.randn(E, device=DEV)
    gb = 2 * L * E * 4 / 1e9
    timed("conv+SiLU fwd, torch ops", lambda: torch.nn.functional.silu(
        torch.nn.functional.conv1d(x.transpose(1, 2), w[:, None], bias, padding=3,
                                   groups=E)[..., :L]), gb)
    keep = conv.FWD_BLOCK_L, conv.FWD_BLOCK_E, conv.FWD_WARPS
    for bl, be, warps in (keep, (32, 64, 8), (16, 64, 4), (128, 32, 8)):
        conv.FWD_BLOCK_L, conv.FWD_BLOCK_E, conv.FWD_WARPS = bl, be, warps
        timed("conv+SiLU fwd, triton", lambda: causal_conv1d_silu(x, w, bias), gb,
              f"{bl}x{be}, {warps} warps")
    conv.FWD_BLOCK_L, conv.FWD_BLOCK_E, conv.FWD_WARPS = keep
    xg = x.detach().clone().requires_grad_()
    wg = w.clone().requires_grad_()
    y = causal_conv1d_silu(xg, wg, bias)
    gy = torch.randn_like(y)
    keep = conv.BWD_BLOCK_L, conv.BWD_BLOCK_E, conv.BWD_WARPS, conv.DX_WARPS
    for bl, be, warps, dx_warps in (keep, (32, 64, 4, 4), (16, 64, 2, 2), (16, 32, 4, 4),
                                    (8, 64, 2, 2), (32, 64, 8, 4)):
        conv.BWD_BLOCK_L, conv.BWD_BLOCK_E, conv.BWD_WARPS, conv.DX_WARPS = (bl, be, warps,
                                                                              dx_warps)
        timed("conv+SiLU bwd, triton (2 passes)", lambda: torch.autograd.grad(
              y, [xg, wg], gy, retain_graph=True), 3 * L * E * 4 / 1e9,
              f"{bl}x{be}, {warps}/{dx_warps} warps")
    conv.BWD_BLOCK_L, conv.BWD_BLOCK_E, conv.BWD_WARPS, conv.DX_WARPS = keep

    t = torch.randn(1, L, C, device=DEV)
    a = torch.randn(1, L, C, device=DEV)
    lw, lb = torch.randn(C, device=DEV), torch.randn(C, device=DEV)
    s1 = torch.ones(1, device=DEV)
    gb = 2 * L * C * 4 / 1e9
    timed("LayerNorm fwd, torch", lambda: torch.nn.functional.layer_norm(t, (C,), lw, lb), gb)
    keep = norms.LN_FWD_TILE, norms.LN_FWD_WARPS
    for tile, warps in (keep, (4096, 4), (8192, 8), (1024, 2)):
        norms.LN_FWD_TILE, norms.LN_FWD_WARPS = tile, warps
        timed("LayerNorm fwd, triton", lambda: layer_norm(t, lw, lb), gb,
              f"tile {tile}, {warps} warps")
        timed("residual+LayerNorm fwd, triton",
              lambda: residual_layer_norm(a, t, s1, lw, lb), 1.5 * gb,
              f"tile {tile}, {warps} warps")
    norms.LN_FWD_TILE, norms.LN_FWD_WARPS = keep

    fmap = torch.randn(1, C, 128, 128, 128, device=DEV)
    gw, gbias = torch.randn(C, device=DEV), torch.randn(C, device=DEV)
    timed("GroupNorm+ReLU fwd, torch (NCDHW)", lambda: torch.relu(
        torch.nn.functional.group_norm(fmap, 8, gw, gbias)), gb)
    fmap_cl = fmap.contiguous(memory_format=torch.channels_last_3d)
    for tile, sw, aw in ((4096, 4, 4), (8192, 8, 8), (2048, 4, 4), (16384, 8, 8)):
        norms.GN_TILE, norms.GN_STATS_WARPS, norms.GN_APPLY_WARPS = tile, sw, aw
        timed("GroupNorm+ReLU fwd, triton (channels-last)",
              lambda: group_norm_relu(fmap_cl, 8, gw, gbias), 1.5 * gb,
              f"tile {tile}, {sw}/{aw} warps")
    norms.GN_TILE, norms.GN_STATS_WARPS, norms.GN_APPLY_WARPS = 4096, 4, 4
    timed("GroupNorm+ReLU fwd, triton (NCDHW input)",
          lambda: group_norm_relu(fmap, 8, gw, gbias), 1.5 * gb)
    xg = fmap_cl.clone().requires_grad_()
    y = group_norm_relu(xg, 8, gw.requires_grad_(), gbias)
    gy = torch.randn_like(y)
    timed("GroupNorm+ReLU bwd, triton", lambda: torch.autograd.grad(y, [xg, gw], gy,
          retain_graph=True), 2.5 * gb)
    tg = t.clone().requires_grad_()
    y = layer_norm(tg, lw.requires_grad_(), lb)
    gl = torch.randn_like(y)
    timed("LayerNorm bwd, triton", lambda: torch.autograd.grad(y, [tg, lw], gl,
          retain_graph=True), 3 * gb)
    record("GPU: fused kernels vs torch at the 128^3 level (fp32)",
           ["kernel", "launch setting", "ms", "GB/s (ideal bytes)"], rows,
           notes="L=2,097,152 tokens; conv E=64 (input read from in_proj's strided half); "
                 "norms C=32; GB/s counts each tensor read or written once")


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
           notes=f"triton chunk={chunk}, channels/program={scan_launch.FWD_BLOCK_E}; "
                 f"reverse scan via flip: {flip_mode(DEV)}")


# ---------------------------------------------------------------- whole network


def peak_gib(fn) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / GiB


def agreement(y: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """max |y - ref| / max |ref| of the logits, and the % of voxels whose argmax agrees."""
    y, ref = y.float(), ref.float()
    return rel_err(y, ref), 100.0 * (y.argmax(1) == ref.argmax(1)).float().mean().item()


def inference_variants(ours: LightMUNet, compile_: bool) -> list[tuple[str, object, str]]:
    """(label, callable network, precision) for one case; official first when present.

    precision: "fp32" (full-precision float32 matmuls, torch's default), "tf32" (float32
    tensors, TF32 tensor-core matmuls and convolutions) or "bf16" (autocast).
    """
    from napari_lightm.model.cuda_fast import (
        GraphedInference,
        enable_fast_norms,
        enable_fast_path,
    )

    out = []
    if is_available("mamba_ssm"):
        official = official_network(ours)
        out += [("official (mamba_ssm.Mamba), fp32", official, "fp32"),
                ("official (mamba_ssm.Mamba), TF32 matmuls", official, "tf32"),
                ("official (mamba_ssm.Mamba), bf16 autocast", official, "bf16")]
    fast_norms = copy.deepcopy(ours)
    enable_fast_norms(fast_norms)
    fused = copy.deepcopy(ours)
    how = enable_fast_path(fused)
    name = f"ours ({ours.scan_backend})"
    out += [(f"{name}, plain modules, fp32", ours, "fp32"),
            (f"{name} + fast norms, fp32", fast_norms, "fp32"),
            (f"{name} + {how}, fp32", fused, "fp32"),
            (f"{name} + {how} + CUDA graph, fp32", GraphedInference(fused), "fp32"),
            (f"{name} + {how} + CUDA graph, TF32 matmuls", GraphedInference(fused), "tf32"),
            (f"{name} + {how} + CUDA graph, bf16 autocast", GraphedInference(fused), "bf16")]
    if compile_:
        compiled = torch.compile(copy.deepcopy(ours), dynamic=False)
        out += [(f"{name} torch.compile, fp32", compiled, "fp32"),
                (f"{name} torch.compile, bf16 autocast", compiled, "bf16")]
    return out


def precision(mode: str):
    """fp32 / tf32 / bf16 (see inference_variants) for the code inside: the engine's own
    switch, so the rows measure what ``Segmenter.predict`` runs."""
    from napari_lightm.engine.inference import precision_context

    return precision_context(DEV, mode)


@section("whole network: inference")
def network_inference(quick: bool, compile_: bool, cases: str = "3d,2d32,2d16") -> None:
    rows = []
    all_cases = {"3d": ("3D f=32 inference", 3, (1, 1, 128, 128, 128), 1, 3, "repo"),
                 "2d32": ("2D f=32 inference", 2, (1, 3, 512, 512), 3, 2, "repo"),
                 "2d16": ("2D f=16 inference", 2, (1, 3, 512, 512), 3, 2, "light")}
    for key in cases.split(","):
        name, dims, shape, cin, cout, cfg = all_cases[key]
        torch.manual_seed(0)
        ours = LightMUNet.from_config(cfg, dims, cin, cout).to(DEV).eval()
        x = torch.randn(*shape, device=DEV)
        base = ref = None
        for label, net, mode in inference_variants(ours, compile_):
            try:
                with torch.no_grad(), precision(mode):
                    t0 = time.time()
                    y = net(x)
                    torch.cuda.synchronize()
                    first = time.time() - t0
                    ms = cuda_time(lambda n=net, x=x: n(x), reps=5 if quick else 10)
                    mem = peak_gib(lambda n=net, x=x: n(x))
            except Exception as exc:
                traceback.print_exc()
                rows.append([name, label, f"failed: {type(exc).__name__}"[:60], "", "", "", "",
                             ""])
                continue
            ref = y if ref is None else ref
            base = base or ms
            err, agree = agreement(y, ref)
            rows.append([name, label, ms, mem, base / ms, err, agree, first])
            print(rows[-1], flush=True)
        del ours
        torch.cuda.empty_cache()
    record("GPU: LightM-UNet released layout, inference, official mixers vs ours",
           ["case", "network", "ms", "peak GiB", "speed-up vs first row",
            "logits max diff / max (vs first row)", "argmax agrees %", "first call s"], rows,
           notes="official = the same network with mamba_ssm.Mamba (2.3.2, no causal-conv1d) "
                 "as every mixer, same weights; fused kernels / fast norms: "
                 "napari_lightm.model.cuda_fast; first call includes torch.compile's compile")


@section("whole network: train step")
def network_training(quick: bool, compile_: bool) -> None:
    """Adam step, 2x1x128^3, 3 classes, cross-entropy; official (fp32, as released) vs ours."""
    from napari_lightm.model.cuda_fast import enable_fast_path, enable_rvm_checkpointing

    torch.manual_seed(0)
    ours = LightMUNet.from_config("repo", 3, 1, 3).to(DEV)
    x = torch.randn(2, 1, 128, 128, 128, device=DEV)
    target = torch.randint(0, 3, (2, 128, 128, 128), device=DEV)
    variants = []  # (label, network, precision: see inference_variants)
    if is_available("mamba_ssm"):
        official = official_network(ours)
        variants += [("official (mamba_ssm.Mamba), fp32", official, "fp32"),
                     ("official (mamba_ssm.Mamba), TF32 matmuls", official, "tf32")]
    fused = copy.deepcopy(ours)
    how = enable_fast_path(fused, training=True)
    name = "ours (" + ours.scan_backend + ")"
    variants += [(f"{name} + {how}, fp32", fused, "fp32"),
                 (f"{name} + {how}, TF32 matmuls", fused, "tf32")]
    other = not scan_launch.WALK_BWD  # the scan's other backward, same network
    variants.append((f"{name} + {how}, fp32, {'walk' if other else 'chunk'} backward "
                     f"(WALK_BWD={other})", fused, "fp32", {"WALK_BWD": other}))
    if compile_:
        plain = copy.deepcopy(ours)
        enable_rvm_checkpointing(plain, False)
        variants.append((f"{name} torch.compile, bf16 autocast",
                         torch.compile(plain, dynamic=False), "bf16"))
    del ours
    rows, base = [], None
    for label, net, mode, *settings in variants:
        opt = torch.optim.Adam(net.parameters(), lr=1e-4, weight_decay=1e-5, eps=1e-5)
        keep = {k: getattr(scan_launch, k) for k in (settings[0] if settings else {})}
        for k, v in (settings[0] if settings else {}).items():
            setattr(scan_launch, k, v)

        def step(net=net, opt=opt, mode=mode):
            opt.zero_grad(set_to_none=True)
            with precision(mode):  # the backward's matmuls too (iter_train sets TF32 globally)
                loss = torch.nn.functional.cross_entropy(net(x), target)
                loss.backward()
            opt.step()

        try:
            t0 = time.time()
            step()
            torch.cuda.synchronize()
            first = time.time() - t0
            mem = peak_gib(step)
            ms = cuda_time(step, reps=3 if quick else 5, warmup=1)
        except Exception as exc:  # out of memory, or a failed compile
            traceback.print_exc()
            rows.append(["2x1x128x128x128", label, f"failed: {type(exc).__name__}"[:60], "", "",
                         ""])
            del opt
            torch.cuda.empty_cache()
            continue
        finally:
            for k, v in keep.items():
                setattr(scan_launch, k, v)
        base = base or ms
        rows.append(["2x1x128x128x128", label, ms, mem, base / ms, first])
        print(rows[-1], flush=True)
        del opt
        torch.cuda.empty_cache()
    record("GPU: LightM-UNet released layout, Adam train step, official mixers vs ours",
           ["input", "network", "ms", "peak GiB", "speed-up vs first row", "first step s"], rows,
           notes="cross-entropy over 3 classes; recomputation = RVM layers recompute their "
                 "activations in backward (napari_lightm.model.cuda_fast)")


@section("backward launch settings")
def backward_sweep() -> None:
    """fwd+bwd at E=64, L=2M, Bt=2 (the train step's batch) for the launch settings of the
    kernel groups a backward pass adds, one group at a time (the others at their defaults;
    the defaults first): the walk backward against the chunk backward (and the walk's
    channels per program, warps, super-chunks), the chunk backward's gradient kernel
    (chunk, channels per program, warps) and the adjoint pass both use (channels, warps)."""
    ts = scan_launch
    groups = {
        "walk backward": (("WALK_BWD", "WALK_BLOCK_E", "WALK_WARPS"),
                          ((False, 32, 1), (True, 64, 2), (True, 64, 1), (True, 32, 2),
                           (True, 16, 1))),
        "walk super-chunks": (("WALK_MIN_PROGRAMS", "WALK_MAX_SUB"),
                              ((16384, 1), (8192, 16), (32768, 16), (16384, 64))),
        "chunk backward's gradient kernel": (
            ("WALK_BWD", "DEFAULT_CHUNK", "BWD_BLOCK_E", "BWD_WARPS"),
            ((False, 16, 2, 1), (False, 16, 4, 1), (False, 32, 2, 1))),
        "adjoint pass": (("ADJ_BLOCK_E", "ADJ_WARPS"), ((16, 4), (8, 1), (64, 8))),
    }
    args = scan_inputs(2, 2_097_152, 64)
    rows = []
    for group, (names, settings) in groups.items():
        keep = tuple(getattr(ts, name) for name in names)
        for values in (keep, *[v for v in settings if v != keep]):
            for name, value in zip(names, values):
                setattr(ts, name, value)
            try:
                ms = cuda_time(lambda: fwd_bwd("triton", args), reps=3, warmup=1)
            except Exception as exc:
                ms = f"failed: {type(exc).__name__}"
            rows.append([group, ", ".join(f"{n}={v}" for n, v in zip(names, values)), ms])
            print(rows[-1], flush=True)
        for name, value in zip(names, keep):
            setattr(ts, name, value)
    record("GPU: triton scan backward settings, Bt=2, E=64, L=2,097,152 (fwd+bwd)",
           ["kernels", "setting", "ms"], rows,
           notes=f"first row of each group = the defaults; forward alone: chunk {ts.INFER_CHUNK}")


@section("engine: Segmenter.predict")
def engine_predict() -> None:
    """End to end through the product's path (preprocessing, sliding window with Gaussian
    weighting, CUDA graphs, resampling back): a 3D CT volume, released layout f=32."""
    from napari_lightm.engine import Segmenter

    torch.manual_seed(0)
    seg = Segmenter.new(3, ["background", "liver", "tumour"], modality="CT", config="repo",
                        patch_size=(128, 128, 128), device="cuda")
    image = (torch.rand(256, 256, 256) * 2000 - 1000).numpy()
    from napari_lightm.engine import inference

    rows = []
    keep = inference.GRAPH_MIN_CALLS
    for precision, min_calls in (("tf32", keep), ("fp32", keep), ("tf32", 1)):
        seg.precision = precision
        inference.GRAPH_MIN_CALLS = min_calls
        seg.predict(image)  # warm-up: kernels compiled (graphs are captured once per call)
        torch.cuda.synchronize()
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            seg.predict(image)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        graphs = "CUDA graphs" if 7 >= min_calls else "eager"
        rows.append(["256^3 CT, patch 128^3, overlap 0.5", precision, graphs, min(times),
                     256**3 / min(times) / 1e6])
        print(rows[-1], flush=True)
    inference.GRAPH_MIN_CALLS = keep
    record("GPU: engine Segmenter.predict, 3D f=32 (end to end)",
           ["input", "precision", "tiles", "s", "Mvoxels/s"], rows,
           notes=f"27 windows in batches of 4 = 7 model calls; GRAPH_MIN_CALLS = {keep}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--skip-network", action="store_true")
    parser.add_argument("--skip-scan", action="store_true", help="no sweep / scan timings")
    parser.add_argument("--skip-sweep", action="store_true",
                        help="scan timings with the default launch settings, no sweep")
    parser.add_argument("--skip-kernels", action="store_true", help="no fused-kernel table")
    parser.add_argument("--bwd-sweep", action="store_true", help="backward launch settings")
    parser.add_argument("--engine", action="store_true", help="Segmenter.predict end to end")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--cases", default="3d,2d32,2d16", help="inference cases")
    opts = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA GPU")
    import triton

    print(torch.cuda.get_device_name(0), "torch", torch.__version__, "triton", triton.__version__,
          "mamba_ssm:",
          is_available("mamba_ssm"), "triton:", is_available("triton"), flush=True)
    print("reverse scan needs flip:", flip_mode(DEV), flush=True)
    rows: list = []
    parity_reference(rows)
    if is_available("mamba_ssm"):
        parity_mamba_scan(rows)
        parity_official(rows)
    record("GPU: parity (max |diff| / max |ref|)", ["check", "shape", "output", "gradients"],
           rows, notes="acceptance: <= 1e-4 (fp32 inputs); bf16 rows show input rounding")
    if not opts.skip_scan:
        if not opts.skip_kernels:
            kernel_timings()
        best = None
        if not opts.skip_sweep:
            best = triton_sweep()
            rows = []
            parity_reference(rows)
            record("GPU: parity of triton with the settings chosen by the sweep",
                   ["check", "shape", "output", "gradients"], rows)
        scan_timings(best[0] if best else scan_launch.INFER_CHUNK, opts.quick)
    if opts.bwd_sweep:
        backward_sweep()
    if opts.engine:
        engine_predict()
    if not opts.skip_network:
        network_inference(opts.quick, opts.compile, opts.cases)
        network_training(opts.quick, opts.compile)


if __name__ == "__main__":
    main()
