"""The opt-in speed-ups of model/cuda_fast.py equal the plain modules (run on the CPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from napari_lightm.model import LightMUNet
from napari_lightm.model.cuda_fast import (
    enable_fast_norms,
    enable_rvm_checkpointing,
    fastest_scan_backend,
    group_norm,
    layer_norm_tokens,
)
from napari_lightm.model.scan import resolve_backend


def randomize(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p))
    return module


@pytest.mark.parametrize("shape", [(2, 16, 6, 10), (1, 32, 4, 6, 8)], ids=["2D", "3D"])
def test_group_norm_matches_nn(shape):
    gn = randomize(nn.GroupNorm(8, shape[1]))
    x = (torch.randn(*shape) * 3 + 1).requires_grad_()
    y, y_ref = group_norm(gn, x), gn(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g = torch.autograd.grad(y.square().sum(), [x, gn.weight, gn.bias])
    g_ref = torch.autograd.grad(y_ref.square().sum(), [x, gn.weight, gn.bias])
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_layer_norm_tokens_matches_nn():
    ln = randomize(nn.LayerNorm(24))
    t = (torch.randn(2, 50, 24) * 2 - 1).requires_grad_()
    y, y_ref = layer_norm_tokens(ln, t), ln(t)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g = torch.autograd.grad(y.square().sum(), [t, ln.weight, ln.bias])
    g_ref = torch.autograd.grad(y_ref.square().sum(), [t, ln.weight, ln.bias])
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def outputs_and_grads(net, x):
    y = net(x)
    return y, torch.autograd.grad(y.square().mean(), list(net.parameters()))


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "with recomputation"])
def test_network_speedups_keep_results_and_state_dict(checkpointing):
    torch.manual_seed(0)
    net = LightMUNet(2, 1, 2, init_filters=8, scan_backend="torch")
    x = torch.randn(1, 1, 16, 16)
    keys = list(net.state_dict())
    y_ref, g_ref = outputs_and_grads(net, x)
    assert enable_fast_norms(net) == 21 + 9 * 2 + 3 * 2 + 1  # RVM layers + GroupNorms
    enable_rvm_checkpointing(net, checkpointing)
    y, g = outputs_and_grads(net, x)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    for a, b in zip(g, g_ref):  # float32 rounding through 40 layers: relative to the scale
        assert (a - b).abs().max() <= 1e-3 * b.abs().max() + 1e-7
    assert list(net.state_dict()) == keys
    enable_fast_norms(net, False)
    enable_rvm_checkpointing(net, False)
    assert not any("forward" in vars(m) for m in net.modules())  # class forwards again


def test_fastest_scan_backend_is_the_auto_choice():
    assert fastest_scan_backend("cpu") == resolve_backend("cpu", "auto")
