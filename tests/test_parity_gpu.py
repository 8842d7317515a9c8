"""GPU parity: our Triton scan, our Mamba mixer and the whole network against their
references, at the shapes and bounds of the "GPU parity" table of docs/benchmarks.md
(``benchmarks/gpu/bench_gpu.py`` prints the measured errors; these tests hold the bounds).

Errors are max |ours - reference| / max |reference| in float64. Bounds: 1e-4 with float32
inputs; 1e-2 with bfloat16 inputs, where the output's own rounding (bf16 keeps 8 bits of
mantissa, half a unit ~ 4e-3) sets the error. Skip without CUDA (conftest) and, for the
``mamba_ssm`` comparisons, when mamba-ssm does not import.
"""

from __future__ import annotations

import copy

import pytest
import torch

from napari_lightm.model import LightMUNet, Mamba, selective_scan
from napari_lightm.model.scan import is_available, selective_scan_reference

pytestmark = pytest.mark.gpu
FP32_BOUND = 1e-4
BF16_BOUND = 1e-2


def need(backend: str) -> None:
    if not is_available(backend):
        reason = ("mamba-ssm is optional and does not import here" if backend == "mamba_ssm"
                  else f"scan backend {backend!r} does not import here")
        pytest.skip(reason)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def scan_inputs(bt: int, length: int, e: int, n: int = 16, dtype=torch.float32,
                harsh: bool = False, seed: int = 0) -> list[torch.Tensor]:
    """``u, delta, A, B, C, D, z, delta_bias`` on CUDA, token-major, as the mixer makes them;
    ``harsh``: large steps and decay rates over 3.5 decades (long memories next to fast)."""
    g = torch.Generator(device="cpu").manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).cuda()

    u = r(bt, length, e)
    delta = r(bt, length, e, scale=3.0 if harsh else 0.5)
    a = -torch.arange(1, n + 1).float().repeat(e, 1).cuda()
    if harsh:
        a = a * torch.logspace(-3, 0.5, e)[:, None].cuda()
    b, c = r(bt, length, n), r(bt, length, n)
    d, z = r(e), r(bt, length, e)
    bias = (torch.rand(e, generator=g) * 4 - 6).cuda()  # softplus(bias) ~ dt of the init
    u, delta, b, c, z = (t.to(dtype) for t in (u, delta, b, c, z))
    return [u, delta, a, b, c, d, z, bias]


def scan_with_grads(backend: str, args: list[torch.Tensor], gy: torch.Tensor | None = None):
    """Output and input gradients of one scan (``backend="reference"`` runs in float64)."""
    if backend == "reference":
        leaves = [t.detach().double().requires_grad_() for t in args]
        y = selective_scan_reference(*leaves[:7], delta_bias=leaves[7], delta_softplus=True)
    else:
        leaves = [t.detach().clone().requires_grad_() for t in args]
        y = selective_scan(*leaves[:7], delta_bias=leaves[7], delta_softplus=True,
                           backend=backend)
    if gy is None:  # in the output's dtype: the reference then gets the same values
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).cuda().to(y.dtype)
    grads = torch.autograd.grad(y, leaves, gy.to(y.dtype))
    return y.detach(), grads, gy


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("harsh", [False, True], ids=["plain", "harsh"])
def test_triton_scan_matches_float64_reference(harsh, dtype):
    need("triton")
    args = scan_inputs(2, 1000, 24, dtype=dtype, harsh=harsh, seed=1)
    y, grads, gy = scan_with_grads("triton", args)
    y64, grads64, _ = scan_with_grads("reference", args, gy)
    bound = FP32_BOUND if dtype == torch.float32 else BF16_BOUND
    assert rel_err(y, y64) < bound
    for name, g, g64 in zip("u delta A B C D z delta_bias".split(), grads, grads64):
        assert rel_err(g, g64) < bound, name


def test_triton_scan_matches_mamba_ssm_scan():
    need("triton")
    need("mamba_ssm")
    args = scan_inputs(1, 65_536, 64, seed=2)
    y, grads, gy = scan_with_grads("triton", args)
    ym, grads_m, _ = scan_with_grads("mamba_ssm", args, gy)
    assert rel_err(y, ym) < FP32_BOUND
    for name, g, gm in zip("u delta A B C D z delta_bias".split(), grads, grads_m):
        assert rel_err(g, gm) < FP32_BOUND, name


def official_mixer(ours: Mamba) -> torch.nn.Module:
    """``mamba_ssm.Mamba`` of the same size holding ``ours``' weights (same state-dict keys)."""
    from mamba_ssm import Mamba as MambaSSM

    theirs = MambaSSM(d_model=ours.d_model, d_state=ours.d_state, d_conv=ours.d_conv,
                      expand=ours.d_inner // ours.d_model).to(ours.A_log.device)
    assert set(theirs.state_dict()) == set(ours.state_dict())
    theirs.load_state_dict(ours.state_dict())
    return theirs


def test_our_mamba_matches_mamba_ssm_mamba():
    """Outputs and every parameter gradient, with our Triton scan and with mamba-ssm's scan
    inside our mixer."""
    need("triton")
    need("mamba_ssm")
    torch.manual_seed(0)
    ours = Mamba(32, scan_backend="triton").cuda()
    theirs = official_mixer(ours)
    x = torch.randn(2, 4096, 32, device="cuda")
    y, yt = ours(x), theirs(x)
    assert rel_err(y, yt) < FP32_BOUND
    gy = torch.randn_like(y)
    names = [name for name, _ in ours.named_parameters()]
    theirs_params = dict(theirs.named_parameters())
    g = torch.autograd.grad(y, list(ours.parameters()), gy)
    gt = torch.autograd.grad(yt, [theirs_params[name] for name in names], gy)
    for name, a, b in zip(names, g, gt):
        assert rel_err(a, b) < FP32_BOUND, name
    ours.scan_backend = "mamba_ssm"
    with torch.no_grad():
        assert rel_err(ours(x), yt) < FP32_BOUND


@pytest.mark.parametrize(("dims", "shape", "cin", "cout"),
                         [(3, (1, 1, 64, 64, 64), 1, 3), (2, (1, 3, 256, 256), 3, 2)],
                         ids=["3d", "2d"])
def test_network_matches_the_same_network_with_mamba_ssm_mixers(monkeypatch, dims, shape,
                                                                 cin, cout):
    """The released layout (f=32) with every mixer swapped for ``mamba_ssm.Mamba``, same
    weights. In true float32: TF32 convolutions or matmuls would turn 1e-7 differences
    between the mixers into ~1e-3 ones downstream."""
    need("triton")
    need("mamba_ssm")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(1)
    net = LightMUNet.from_config("repo", dims, cin, cout).cuda()
    official = copy.deepcopy(net)
    swapped = 0
    for module in list(official.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, Mamba):
                setattr(module, name, official_mixer(child))
                swapped += 1
    assert swapped > 0 and not any(isinstance(m, Mamba) for m in official.modules())
    x = torch.randn(*shape, device="cuda")
    with torch.no_grad():
        assert rel_err(net(x), official(x)) < FP32_BOUND
