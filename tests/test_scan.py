"""Selective-scan backends against the float64 sequential reference, and the dispatch."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from napari_lightm.model.scan import (
    BACKENDS,
    ENV_VAR,
    ScanArgs,
    available_backends,
    is_available,
    resolve_backend,
    selective_scan,
    selective_scan_reference,
)

ARG_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def scan_inputs(case: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """float64 inputs ``u, delta, A, B, C, D, z, delta_bias`` for a named regime."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    # E = 40 is not a multiple of the cpu kernel's 16-channel block (exercises padding)
    bt, length, e, n = {"random": (2, 48, 40, 16), "long_decay": (1, 1200, 16, 8),
                        "large_dt": (2, 40, 24, 16)}[case]
    x = {
        "u": randn(bt, length, e),
        "B": randn(bt, length, n),
        "C": randn(bt, length, n),
        "D": randn(e),
        "z": randn(bt, length, e),
    }
    if case == "random":
        x["delta"] = randn(bt, length, e)
        x["A"] = -torch.exp(randn(e, n))
        x["delta_bias"] = randn(e) * 0.5
    elif case == "long_decay":  # softplus(-8) ~ 3e-4 and |A| <= 1: memory over ~10^4 tokens
        x["delta"] = randn(bt, length, e) * 0.5 - 8.0
        x["A"] = -(rand(e, n) * 0.9 + 0.1)
        x["delta_bias"] = rand(e) * 0.5
    else:  # large steps, beyond softplus' linear threshold: decays underflow to 0
        x["delta"] = rand(bt, length, e) * 30.0
        x["A"] = -torch.arange(1, n + 1, dtype=torch.float64).repeat(e, 1)
        x["delta_bias"] = rand(e) * 2.0
    return x


def relative_error(a: torch.Tensor, ref: torch.Tensor) -> float:
    """Max-norm error of ``a`` relative to the max-norm of ``ref``."""
    return ((a.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def run(backend: str, x: dict[str, torch.Tensor], dtype: torch.dtype, grad_out=None):
    """y (and the gradients of <y, grad_out> when grad_out is given) with ``backend``."""
    leaves = {k: v.detach().to(dtype).clone().requires_grad_(grad_out is not None)
              for k, v in x.items()}
    y = selective_scan(*(leaves[k] for k in ARG_NAMES), delta_softplus=True, backend=backend)
    if grad_out is None:
        return y, None
    (y * grad_out.to(dtype)).sum().backward()
    return y, {k: v.grad for k, v in leaves.items()}


CPU_BACKENDS = available_backends("cpu")


def test_cpu_backends_listed_fastest_first():
    assert CPU_BACKENDS[-1] == "reference"
    assert {"cpu", "torch"} <= set(CPU_BACKENDS)  # numba is a dependency
    assert resolve_backend("cpu") == "cpu"


@pytest.mark.parametrize("case", ["random", "long_decay", "large_dt"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backend_matches_float64_reference(backend, case):
    x = scan_inputs(case)
    grad_out = torch.randn(x["u"].shape, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(1))
    y_ref, g_ref = run("reference", x, torch.float64, grad_out)
    y, g = run(backend, x, torch.float32, grad_out)
    assert y.dtype == torch.float32
    assert relative_error(y, y_ref) < 1e-5
    for name in ARG_NAMES:
        assert relative_error(g[name], g_ref[name]) < 1e-5, name


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backend_float64_is_exact(backend):
    x = scan_inputs("random")
    y_ref, _ = run("reference", x, torch.float64)
    y, _ = run(backend, x, torch.float64)
    assert y.dtype == torch.float64
    assert relative_error(y, y_ref) < 1e-12


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_optional_arguments_absent(backend):
    """No D, no z, no bias, no softplus: the bare recurrence."""
    x = scan_inputs("random")
    u, delta, A, B, C = (x[k] for k in ("u", "delta", "A", "B", "C"))
    delta = delta.abs() * 0.1
    y_ref = selective_scan_reference(ScanArgs(u, delta, A, B, C))
    y = selective_scan(u.float(), delta.float(), A.float(), B.float(), C.float(), backend=backend)
    assert relative_error(y, y_ref) < 1e-5


@pytest.mark.parametrize("softplus", [True, False])
def test_cpu_backend_gradcheck(softplus):
    from napari_lightm.model.scan.cpu import selective_scan_cpu

    g = torch.Generator().manual_seed(2)
    bt, length, e, n = 2, 7, 3, 4  # 7 tokens over 3 recomputation chunks
    shapes = {"u": (bt, length, e), "delta": (bt, length, e), "A": (e, n), "B": (bt, length, n),
              "C": (bt, length, n), "D": (e,), "z": (bt, length, e), "delta_bias": (e,)}
    x = {k: torch.randn(*s, generator=g, dtype=torch.float64) for k, s in shapes.items()}
    x["A"] = -torch.exp(x["A"])
    if not softplus:  # positive step sizes without the softplus
        x["delta"] = x["delta"].abs()
    inputs = tuple(x[k].requires_grad_() for k in ARG_NAMES)

    def scan(*args):
        return selective_scan_cpu(ScanArgs(*args, delta_softplus=softplus), chunk=3)

    assert torch.autograd.gradcheck(scan, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_cpu_backend_long_sequence_many_chunks():
    """Several recomputation chunks and a ragged last one; forward and gradients."""
    from napari_lightm.model.scan.cpu import selective_scan_cpu

    x = scan_inputs("long_decay")
    x = {k: v[:, :333] if v.ndim == 3 else v for k, v in x.items()}
    leaves = [x[k].clone().requires_grad_() for k in ARG_NAMES]
    y = selective_scan_cpu(ScanArgs(*leaves, delta_softplus=True), chunk=16)
    y.sum().backward()
    ref_leaves = [x[k].clone().requires_grad_() for k in ARG_NAMES]
    y_ref = selective_scan_reference(ScanArgs(*ref_leaves, delta_softplus=True))
    y_ref.sum().backward()
    assert relative_error(y, y_ref) < 1e-12
    for a, b in zip(leaves, ref_leaves):
        assert relative_error(a.grad, b.grad) < 1e-12


def test_cpu_backend_same_result_on_any_thread_count():
    from napari_lightm.model.scan.cpu import selective_scan_cpu

    x = {k: v.float() for k, v in scan_inputs("random").items()}
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1 = selective_scan_cpu(ScanArgs(*(x[k] for k in ARG_NAMES), delta_softplus=True))
        torch.set_num_threads(2)
        y2 = selective_scan_cpu(ScanArgs(*(x[k] for k in ARG_NAMES), delta_softplus=True))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(y1, y2)


def test_cpu_backend_reads_strided_views_and_half_inputs():
    from napari_lightm.model.scan.cpu import selective_scan_cpu

    x = {k: v.float() for k, v in scan_inputs("random").items()}
    y = selective_scan_cpu(ScanArgs(*(x[k] for k in ARG_NAMES), delta_softplus=True))
    # B and C as views into one projection, as the mixer produces them
    bc = torch.cat([x["B"], x["C"]], dim=-1)
    b_view, c_view = bc.split(x["B"].shape[-1], dim=-1)
    args = [x[k] for k in ARG_NAMES]
    args[3], args[4] = b_view, c_view
    assert torch.equal(selective_scan_cpu(ScanArgs(*args, delta_softplus=True)), y)
    half = ScanArgs(*(v.bfloat16() for v in (x["u"], x["delta"])), *args[2:],
                    delta_softplus=True)
    y_bf16 = selective_scan_cpu(half)
    assert y_bf16.dtype == torch.bfloat16
    assert relative_error(y_bf16.float(), y.double()) < 0.05


def test_dispatch_argument_and_env_var(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_backend("cpu", "torch") == "torch"
    monkeypatch.setenv(ENV_VAR, "reference")
    assert resolve_backend("cpu") == "reference"
    assert resolve_backend("cpu", "cpu") == "cpu"  # the argument wins over the env var
    monkeypatch.setenv(ENV_VAR, "auto")
    assert resolve_backend("cpu") == "cpu"


@pytest.mark.parametrize("name", ["nonsense", "CPU"])
def test_unknown_backend_is_a_clear_error(name, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(ValueError, match="unknown scan backend"):
        resolve_backend("cpu", name)
    monkeypatch.setenv(ENV_VAR, name)
    with pytest.raises(ValueError, match="unknown scan backend"):
        resolve_backend("cpu")


@pytest.mark.parametrize("name", [n for n, b in BACKENDS.items() if "cpu" not in b.devices])
def test_gpu_only_backend_refused_on_cpu(name):
    with pytest.raises(ValueError, match="does not run on cpu"):
        resolve_backend("cpu", name)


@pytest.fixture
def fresh_availability():
    """``is_available`` answers afresh during the test and after it (it caches per name)."""
    is_available.cache_clear()
    yield
    is_available.cache_clear()


@pytest.mark.parametrize(("name", "package"),
                         [("cpu", "numba"), ("triton", "triton"), ("mamba_ssm", "mamba_ssm")])
def test_backend_whose_package_does_not_import_is_unavailable(name, package, monkeypatch,
                                                              fresh_availability):
    """Availability probes the package a backend runs on, not only our wrapper module,
    which may import without it (or be imported already)."""
    if name == "triton" and importlib.util.find_spec("triton") is None:
        pytest.skip("Triton is not installed")
    if name != "mamba_ssm":
        BACKENDS[name].load()  # our wrapper module is imported already
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # CUDA backends are probed
    for module in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setitem(sys.modules, package, None)  # `import package` raises ImportError
    assert not is_available(name)
    device = BACKENDS[name].devices[0]
    assert name not in available_backends(device)
    with pytest.raises(ValueError, match="not available"):
        resolve_backend(device, name)
