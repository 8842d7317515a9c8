"""The Mamba v1 mixer: mamba_ssm's parameter names, shapes and init; forward on every backend."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from napari_lightm.model import Mamba, available_backends


def mamba_ssm_state_dict_shapes(d_model: int) -> dict[str, tuple[int, ...]]:
    """The state dict of ``mamba_ssm.Mamba(d_model)`` (d_state 16, d_conv 4, expand 2),
    written out by hand from mamba_ssm 2.x's module (no import: it needs CUDA)."""
    e, n, r = 2 * d_model, 16, math.ceil(d_model / 16)
    return {
        "in_proj.weight": (2 * e, d_model),
        "conv1d.weight": (e, 1, 4),
        "conv1d.bias": (e,),
        "x_proj.weight": (r + 2 * n, e),
        "dt_proj.weight": (e, r),
        "dt_proj.bias": (e,),
        "A_log": (e, n),
        "D": (e,),
        "out_proj.weight": (d_model, e),
    }


@pytest.mark.parametrize("d_model", [16, 40, 128])
def test_state_dict_matches_mamba_ssm(d_model):
    sd = Mamba(d_model).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == mamba_ssm_state_dict_shapes(d_model)
    c, r = d_model, math.ceil(d_model / 16)
    assert sum(v.numel() for v in sd.values()) == 6 * c * c + 4 * c * r + 110 * c


def test_init_as_mamba_ssm():
    torch.manual_seed(0)
    m = Mamba(64)
    r = m.dt_rank
    dt = F.softplus(m.dt_proj.bias.detach())
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    assert dt.std() > 0  # sampled, not constant
    assert m.dt_proj.weight.abs().max() <= r**-0.5
    expected_a_log = torch.log(torch.arange(1, 17, dtype=torch.float32)).repeat(m.d_inner, 1)
    assert torch.equal(m.A_log.detach(), expected_a_log)
    assert torch.equal(m.D.detach(), torch.ones(m.d_inner))
    assert m.A_log._no_weight_decay and m.D._no_weight_decay
    assert m.in_proj.bias is None and m.x_proj.bias is None and m.out_proj.bias is None


def test_causal_conv_is_the_padded_depthwise_conv():
    """Token-major causal conv == nn.Conv1d(padding=3) on channel-major input, cut to L."""
    torch.manual_seed(0)
    m = Mamba(16)
    x = torch.randn(2, 37, m.d_inner)
    expected = m.conv1d(x.transpose(1, 2))[..., :37].transpose(1, 2)
    torch.testing.assert_close(m.causal_conv(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("length", [1, 2, 3, 5, 257])
def test_fused_inference_conv_equals_autograd_path(length):
    torch.manual_seed(0)
    m = Mamba(24, scan_backend="cpu")  # E = 48
    x = torch.randn(2, length, m.d_inner)
    with torch.no_grad():
        fused = m.conv_silu(x)
    assert m._fused_conv_available(x) is False  # grad mode: the autograd path
    reference = F.silu(m.causal_conv(x))
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-6)


def reference_forward(m: Mamba, u: torch.Tensor) -> torch.Tensor:
    """The mixer's definition (MODEL.md) in float64, with the sequential scan (``m`` becomes
    float64)."""
    m = m.double()
    u = u.double()
    e, n, r = m.d_inner, m.d_state, m.dt_rank
    x, z = m.in_proj(u).split(e, dim=-1)
    x = F.silu(m.conv1d(x.transpose(1, 2))[..., : u.shape[1]].transpose(1, 2))
    dt, b, c = m.x_proj(x).split([r, n, n], dim=-1)
    delta = F.softplus(m.dt_proj(dt))
    a = -torch.exp(m.A_log)
    h = torch.zeros(u.shape[0], e, n, dtype=torch.float64)
    ys = []
    for t in range(u.shape[1]):
        d_t = delta[:, t, :, None]
        h = torch.exp(d_t * a) * h + d_t * b[:, t, None] * x[:, t, :, None]
        ys.append((h * c[:, t, None]).sum(-1) + m.D * x[:, t])
    y = torch.stack(ys, dim=1) * F.silu(z)
    return m.out_proj(y)


@pytest.mark.parametrize("backend", available_backends("cpu"))
@pytest.mark.parametrize("grad", [False, True])
def test_forward_matches_definition(backend, grad):
    torch.manual_seed(0)
    m = Mamba(16, scan_backend=backend)
    u = torch.randn(2, 50, 16)
    with torch.set_grad_enabled(grad):
        out = m(u)
    assert out.shape == u.shape and out.dtype == torch.float32
    twin = Mamba(16)
    twin.load_state_dict(m.state_dict())
    expected = reference_forward(twin, u)
    torch.testing.assert_close(out.double(), expected.detach(), rtol=1e-4, atol=1e-5)
    assert m.backend == backend


def test_training_gradients_reach_every_parameter():
    torch.manual_seed(0)
    m = Mamba(16, scan_backend="cpu")
    m(torch.randn(2, 40, 16)).square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_state_dict_round_trip():
    torch.manual_seed(0)
    a, b = Mamba(32), Mamba(32)
    b.load_state_dict(a.state_dict())
    u = torch.randn(1, 20, 32)
    with torch.no_grad():
        assert torch.equal(a(u), b(u))


def test_torch_compile_breaks_graphs_only_at_the_scans():
    """Under torch.compile the mixers' scans are the only graph breaks (one clean break
    each); everything around them stays traceable for the compiler to fuse."""
    import torch._dynamo

    from napari_lightm.model import LightMUNet

    torch.manual_seed(0)
    net = LightMUNet(2, 1, 2, init_filters=8, blocks_down=(1, 1), blocks_up=(1,),
                     scan_backend="torch").eval()
    torch._dynamo.reset()
    try:
        explained = torch._dynamo.explain(net)(torch.randn(1, 1, 16, 16))
    finally:
        torch._dynamo.reset()
    reasons = [r.reason for r in explained.break_reasons]
    assert reasons, "expected the scans to break the graph"
    assert all("disable" in r for r in reasons), reasons
