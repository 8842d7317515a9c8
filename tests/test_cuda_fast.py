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
)
from napari_lightm.model.ops.norms.var_mean import group_norm, layer_norm_tokens
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
    assert not any(type(m).__module__.endswith("cuda_fast") for m in net.modules())


def test_fastest_scan_backend_is_the_auto_choice():
    assert fastest_scan_backend("cpu") == resolve_backend("cpu", "auto")


def _interpreting_triton() -> bool:
    """True when Triton imports and runs its kernels in the interpreter (no GPU here)."""
    import importlib.util
    import os

    if torch.cuda.is_available() or importlib.util.find_spec("triton") is None:
        return False
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.standard.sum, InterpretedFunction)


def _worst_rel(grads, grads64) -> float:
    """Largest per-parameter max |g - g64| / max |g64| (parameters with a real gradient)."""
    return max(((a.double() - b).abs().max() / b.abs().max()).item()
               for a, b in zip(grads, grads64) if b.abs().max() > 1e-6)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "with recomputation"])
def test_fused_kernels_match_plain_network(checkpointing):
    """The Triton-kernel path (interpreted here) against float64: as close as the plain path."""
    import copy

    if not _interpreting_triton():
        pytest.skip("needs Triton's interpreter (CPU-only machine, TRITON_INTERPRET=1 before "
                    "the first import of triton); on CUDA the gpu tests cover this path")
    from napari_lightm.model.cuda_fast import disable_fast_path, enable_fused_kernels

    torch.manual_seed(0)
    net = randomize_small(LightMUNet(2, 1, 2, init_filters=8, scan_backend="torch"))
    x = torch.randn(2, 1, 16, 16)
    y_ref, g_ref = outputs_and_grads(net, x)
    net64 = copy.deepcopy(net).double()
    y64, g64 = outputs_and_grads(net64, x.double())
    keys = list(net.state_dict())

    fused = copy.deepcopy(net)
    assert enable_fused_kernels(fused) == 21 + 9 + 3 + 1  # RVM layers, blocks, head
    enable_rvm_checkpointing(fused, checkpointing)
    fused = copy.deepcopy(fused)  # the switch survives a copy
    y, g = outputs_and_grads(fused, x)
    assert (y.double() - y64).abs().max() <= 2 * (y_ref.double() - y64).abs().max() + 1e-6
    assert _worst_rel(g, g64) <= 2 * _worst_rel(g_ref, g64) + 1e-4
    assert list(fused.state_dict()) == keys
    disable_fast_path(fused)
    assert not any(type(m).__module__.endswith("cuda_fast") for m in fused.modules())
    assert fused.channels_last is None


def randomize_small(module: nn.Module, scale: float = 0.1) -> nn.Module:
    """Perturb every parameter a little (biases and scales away from their init values)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)
    return module


@pytest.mark.gpu
@pytest.mark.parametrize("dims", [2, 3])
def test_fast_path_on_cuda_matches_plain(dims):
    """enable_fast_path on CUDA (fused kernels, channels-last, recomputation) against a
    float64 CPU reference: as close as the plain modules on CUDA; CUDA graphs replay it."""
    import copy

    from napari_lightm.model.cuda_fast import GraphedInference, enable_fast_path

    torch.manual_seed(0)
    net = randomize_small(LightMUNet(dims, 1, 3, init_filters=16))
    x = torch.randn(2, 1, *([32] * dims))
    net64 = copy.deepcopy(net).double()
    net64.set_scan_backend("torch")
    y64, g64 = outputs_and_grads(net64, x.double())
    net = net.cuda()
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        y_ref, g_ref = outputs_and_grads(net, x.cuda())
        fast = copy.deepcopy(net)
        assert enable_fast_path(fast, training=True).startswith("fused")
        y, g = outputs_and_grads(fast, x.cuda())
        with torch.no_grad():
            graphed = GraphedInference(fast.eval())
            y_graph = graphed(x.cuda())
            y_eval = fast(x.cuda())
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    err_ref = (y_ref.cpu().double() - y64).abs().max()
    assert (y.cpu().double() - y64).abs().max() <= 2 * err_ref + 1e-6
    assert (y_graph - y_eval).abs().max() <= 1e-5 * y_eval.abs().max()
    g, g_ref = [t.cpu() for t in g], [t.cpu() for t in g_ref]
    assert _worst_rel(g, g64) <= 2 * _worst_rel(g_ref, g64) + 1e-4


@pytest.mark.gpu
def test_sliding_window_with_cuda_graphs_matches_eager():
    """The engine's CUDA path (fast path + CUDA graphs, mirroring on) equals eager calls."""
    from napari_lightm.engine.inference import iter_sliding_window
    from napari_lightm.model.cuda_fast import enable_fast_path

    def run(gen):
        try:
            while True:
                next(gen)
        except StopIteration as stop:
            return stop.value

    torch.manual_seed(0)
    net = randomize_small(LightMUNet(2, 1, 3, init_filters=16)).cuda().eval()
    enable_fast_path(net)
    volume = torch.randn(2, 1, 80, 72)
    kw = dict(overlap=0.5, tta=True, tile_batch=3, precision="fp32")
    eager = run(iter_sliding_window(net, volume, (32, 32), 3, cuda_graphs=False, **kw))
    graphed = run(iter_sliding_window(net, volume, (32, 32), 3, cuda_graphs=True, **kw))
    assert (graphed - eager).abs().max() <= 1e-5 * eager.abs().max()


@pytest.mark.gpu
def test_sliding_window_precisions_agree_and_restore_the_tf32_switches():
    """tf32 (the CUDA default) stays close to full fp32, bf16 agrees on most voxels; the
    global TF32 switches come back as they were."""
    from napari_lightm.engine.callbacks import drain as _drain
    from napari_lightm.engine.inference import iter_sliding_window
    from napari_lightm.model.cuda_fast import enable_fast_path

    torch.manual_seed(0)
    net = randomize_small(LightMUNet(3, 1, 3, init_filters=16)).cuda().eval()
    enable_fast_path(net)
    volume = torch.randn(1, 1, 48, 40, 40)
    keep = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    out = {p: _drain(iter_sliding_window(net, volume, (32, 32, 32), 3, precision=p), None)
           for p in ("fp32", "tf32", "bf16")}
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == keep
    # (random weights: an H200 run gave tf32 0.061 of the logits' max 3.1 through 40 layers)
    scale = out["fp32"].abs().max()
    assert (out["tf32"] - out["fp32"]).abs().max() <= 5e-2 * scale
    assert torch.isfinite(out["bf16"]).all()
    for p, least in (("tf32", 0.99), ("bf16", 0.9)):
        assert (out[p].argmax(1) == out["fp32"].argmax(1)).float().mean() >= least, p


def test_graphed_inference_refuses_a_cpu_input_and_keeps_the_model_usable():
    from napari_lightm.model.cuda_fast import GraphedInference

    torch.manual_seed(0)
    net = LightMUNet(2, 1, 2, init_filters=8, scan_backend="torch").eval()
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        before = net(x)
    graphed = GraphedInference(net)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA input, got cpu"):
        graphed(x)
    assert graphed._graphs == {}  # nothing captured or cached
    with torch.no_grad():
        torch.testing.assert_close(net(x), before, rtol=0, atol=0)


@pytest.mark.gpu
def test_sliding_window_sums_on_the_gpu_or_the_host_agree_with_the_cpu(monkeypatch):
    """The volume and weighted sums on the device or on the host give the same logits; both
    match the CPU's for the same weights to the fast path's float32 rounding (an H200 run:
    7e-4 of the logits' max with random weights)."""
    import copy

    from napari_lightm.engine import inference
    from napari_lightm.engine.callbacks import drain as _drain
    from napari_lightm.model.cuda_fast import enable_fast_path

    torch.manual_seed(0)
    net = randomize_small(LightMUNet(2, 1, 3, init_filters=16)).eval()
    gpu = copy.deepcopy(net).cuda()
    enable_fast_path(gpu)
    volume = torch.randn(3, 1, 56, 72)
    want = _drain(inference.iter_sliding_window(net, volume, (32, 32), 3), None)
    got = {}
    for where, fraction in (("gpu", 0.25), ("host", 0.0)):
        monkeypatch.setattr(inference, "ACCUMULATE_ON_GPU_FRACTION", fraction)
        got[where] = _drain(inference.iter_sliding_window(gpu, volume, (32, 32), 3,
                                                          precision="fp32"), None)
        assert got[where].device.type == "cpu" and got[where].shape == want.shape
    scale = want.abs().max()
    assert (got["gpu"] - got["host"]).abs().max() <= 1e-6 * scale
    assert (got["gpu"] - want).abs().max() <= 5e-3 * scale
    assert (got["gpu"].argmax(1) == want.argmax(1)).float().mean() >= 0.995
