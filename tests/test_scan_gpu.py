"""CUDA scan backends (triton, mamba_ssm) against the float64 reference; skip without CUDA."""

from __future__ import annotations

import pytest
import torch

from napari_lightm.model import Mamba
from napari_lightm.model.scan import ScanArgs, is_available, resolve_backend, selective_scan
from napari_lightm.model.scan.reference import selective_scan_reference

pytestmark = pytest.mark.gpu
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def inputs(bt=2, length=3000, e=40, n=16, harsh=False, dtype=torch.float32, seed=0):
    """Token-major inputs on CUDA; L spans several carry blocks of the triton kernel."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    delta = r(bt, length, e) * (3.0 if harsh else 0.5)
    a = -torch.arange(1, n + 1).float().repeat(e, 1)
    if harsh:  # decay rates over four decades: long memories next to fast ones
        a = a * torch.logspace(-3, 0.7, e)[:, None]
    args = [r(bt, length, e), delta, a, r(bt, length, n), r(bt, length, n), r(e),
            r(bt, length, e), torch.rand(e, generator=g) * 4 - 6]
    return [t.cuda().to(dtype) if t.dim() == 3 else t.cuda() for t in args]


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def backend_or_skip(name):
    if not is_available(name):
        pytest.skip(f"scan backend {name!r} does not import here")
    return name


@pytest.mark.parametrize("harsh", [False, True], ids=["plain", "harsh"])
@pytest.mark.parametrize("backend", ["triton", "mamba_ssm"])
def test_backend_matches_float64_reference(backend, harsh):
    backend_or_skip(backend)
    args = inputs(harsh=harsh)
    leaves = [t.clone().requires_grad_() for t in args]
    y = selective_scan(*leaves[:7], delta_bias=leaves[7], delta_softplus=True, backend=backend)
    leaves64 = [t.detach().double().requires_grad_() for t in args]
    y64 = selective_scan_reference(ScanArgs(*leaves64, delta_softplus=True))
    assert rel(y, y64) < 1e-4
    gy = torch.randn_like(y64)
    grads = torch.autograd.grad(y, leaves, gy.float())
    grads64 = torch.autograd.grad(y64, leaves64, gy)
    for name, g, g64 in zip(NAMES, grads, grads64):
        assert rel(g, g64) < 1e-4, name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_half_inputs(dtype):
    backend_or_skip("triton")
    args = inputs(dtype=dtype, seed=1)
    y = selective_scan(*args[:7], delta_bias=args[7], delta_softplus=True, backend="triton")
    y64 = selective_scan_reference(ScanArgs(*[t.double() for t in args], delta_softplus=True))
    assert y.dtype == dtype
    assert rel(y, y64) < 1e-2  # the float32 state leaves only the output rounding
    leaves = [t.clone().requires_grad_() for t in args]
    y = selective_scan(*leaves[:7], delta_bias=leaves[7], delta_softplus=True, backend="triton")
    y.float().square().sum().backward()
    assert all(t.grad.dtype == t.dtype and torch.isfinite(t.grad).all() for t in leaves)


def test_auto_selection_picks_triton_on_cuda():
    backend_or_skip("triton")
    assert resolve_backend("cuda") == "triton"
    assert Mamba(16).cuda().backend == "triton"


def test_mixer_backends_agree_on_cuda():
    """The whole mixer with ``triton`` vs ``torch`` scans (same weights, fp32)."""
    backend_or_skip("triton")
    torch.manual_seed(0)
    mixer = Mamba(32).cuda()
    x = torch.randn(2, 5000, 32, device="cuda")
    y = mixer(x)
    mixer.scan_backend = "torch"
    assert rel(y, mixer(x)) < 1e-4


def _grads_of(fn, args):
    leaves = [t.clone().requires_grad_() for t in args]
    y = fn(leaves)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(5)).to(y.device, y.dtype)
    return y.detach(), torch.autograd.grad(y, leaves, gy)


@pytest.mark.parametrize("harsh", [False, True], ids=["plain", "harsh"])
def test_triton_super_chunks_match_float64_reference(monkeypatch, harsh):
    """Super-chunks forced at L=3000 (94 chunks of 32): forward 8 a program (last one 6),
    backward 11 a program with one group of 20 channel blocks."""
    backend_or_skip("triton")
    from napari_lightm.model.ops.launch import Scan
    from napari_lightm.model.scan import triton as ts

    monkeypatch.setattr(Scan, "FWD_MIN_PROGRAMS", 100)
    monkeypatch.setattr(Scan, "FWD_MAX_SUB", 8)
    monkeypatch.setattr(Scan, "BWD_MIN_PROGRAMS", 16)
    monkeypatch.setattr(Scan, "BWD_MAX_SUB", 16)
    monkeypatch.setattr(Scan, "CARRY_BLOCK_K", 4)
    args = inputs(harsh=harsh, seed=2)
    run = lambda t: ts.selective_scan_triton(ScanArgs(*t, delta_softplus=True))  # noqa: E731
    y, grads = _grads_of(run, args)
    run64 = lambda t: selective_scan_reference(ScanArgs(*t, delta_softplus=True))  # noqa: E731
    y64, grads64 = _grads_of(run64, [t.double() for t in args])
    assert rel(y, y64) < 1e-4
    for name, g, g64 in zip(NAMES, grads, grads64):
        assert rel(g, g64) < 1e-4, name


def test_triton_default_super_chunks_agree_with_single_chunks(monkeypatch):
    """Realistic shape (E=64, L=2^20: 32 chunks a program forward, 4 backward by default)
    against the same kernels with one chunk per program."""
    backend_or_skip("triton")
    from napari_lightm.model.ops.launch import Scan
    from napari_lightm.model.scan import triton as ts
    from napari_lightm.model.scan.triton.autograd import _sub_chunks

    args = inputs(bt=1, length=2**20, e=64, seed=3)
    run = lambda t: ts.selective_scan_triton(ScanArgs(*t, delta_softplus=True))  # noqa: E731
    assert _sub_chunks(2**20 // Scan.DEFAULT_CHUNK, 8, Scan.FWD_MIN_PROGRAMS, Scan.FWD_MAX_SUB) > 1
    y, grads = _grads_of(run, args)
    monkeypatch.setattr(Scan, "FWD_MAX_SUB", 1)
    monkeypatch.setattr(Scan, "BWD_MAX_SUB", 1)
    y1, grads1 = _grads_of(run, args)
    assert rel(y, y1) < 1e-5
    for name, g, g1 in zip(NAMES, grads, grads1):
        assert rel(g, g1) < 1e-4, name
