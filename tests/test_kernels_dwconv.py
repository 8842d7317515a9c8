"""Depthwise 3x3(x3) convolution on channels-last maps (Triton) against float64 torch.

CPU tests run the kernels in Triton's interpreter on tiny shapes (a private copy of the
module, see ``conftest.interpreted_module``); ``gpu``-marked tests run them compiled.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from napari_lightm.model.ops.launch import DWConv

if importlib.util.find_spec("triton") is None:
    pytest.skip("Triton is not installed", allow_module_level=True)

INTERPRETED_SOURCE = "src/napari_lightm/model/ops/dwconv.py"


@pytest.fixture(scope="module")
def kd(interpreted_module):
    """A private copy of ``ops.dwconv`` whose kernels run in Triton's interpreter."""
    return interpreted_module


@pytest.fixture
def small_tiles(kd, monkeypatch):
    """Tiny tiles so that small maps span several W and channel blocks."""
    for name, value in (("BLOCK_W", 4), ("BLOCK_C", 4), ("WGRAD_BLOCK_W", 4)):
        monkeypatch.setattr(DWConv, name, value)
    return kd


def make(shape, dtype=torch.float32, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    w = torch.randn(shape[1], 1, *([3] * (len(shape) - 2)), generator=g) * 0.5
    return x.to(device=device, dtype=dtype), w.to(device)


def reference(x, w):
    conv = F.conv2d if x.ndim == 4 else F.conv3d
    return conv(x, w, padding=1, groups=x.shape[1])


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def grads_both(fn, x, w):
    """Our output and gradients next to float64 autograd of the reference."""
    leaves = [x.clone().requires_grad_(), w.clone().requires_grad_()]
    y = fn(*leaves)
    leaves64 = [t.detach().double().requires_grad_() for t in (x, w)]
    y64 = reference(*leaves64)
    gy = torch.randn(y64.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    grads = torch.autograd.grad(y, leaves, gy.to(device=y.device, dtype=y.dtype))
    grads64 = torch.autograd.grad(y64, leaves64, gy.to(y64.device))
    return y, y64, list(zip(("x", "weight"), leaves, grads, grads64))


SHAPES = [(2, 5, 7, 9), (1, 3, 1, 6), (2, 3, 4, 5, 6), (1, 2, 3, 1, 9)]
SHAPE_IDS = ["2D 7x9, C=5", "2D one row", "3D 4x5x6", "3D H=1"]


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_forward_and_gradients_match_float64(small_tiles, shape):
    x, w = make(shape, seed=sum(shape))
    y, y64, grads = grads_both(small_tiles.depthwise_conv, x, w)
    assert y.shape == x.shape and y.dtype == torch.float32
    fmt = torch.channels_last if x.ndim == 4 else torch.channels_last_3d
    assert y.is_contiguous(memory_format=fmt)
    assert rel(y, y64) < 1e-5
    for name, leaf, g, g64 in grads:
        assert g.shape == leaf.shape and g.dtype == leaf.dtype, name
        assert rel(g, g64) < 1e-5, name


@pytest.mark.parametrize("min_programs", [1, 5, 10**6],
                         ids=["one group of rows", "partial last group", "one row each"])
def test_weight_gradient_row_groups(small_tiles, monkeypatch, min_programs):
    """Programs summing several rows (partial sums per group) give the same dweight."""
    monkeypatch.setattr(DWConv, "WGRAD_MIN_PROGRAMS", min_programs)
    x, w = make((2, 3, 3, 4, 5), seed=4)  # 24 rows x 2 W blocks x 1 channel block
    _, _, grads = grads_both(small_tiles.depthwise_conv, x, w)
    for name, _, g, g64 in grads:
        assert rel(g, g64) < 1e-5, name


def test_default_layout_input_and_strided_gradient(small_tiles):
    """A default-layout x is read as channels-last; a non-contiguous upstream gradient too."""
    x, w = make((2, 4, 5, 6), seed=5)
    y_cl = small_tiles.depthwise_conv(x.contiguous(memory_format=torch.channels_last), w)
    torch.testing.assert_close(small_tiles.depthwise_conv(x, w), y_cl, rtol=0, atol=0)
    leaf = x.clone().requires_grad_()
    gy = torch.randn(2, 4, 6, 5).transpose(2, 3)  # neither layout
    (g,) = torch.autograd.grad(small_tiles.depthwise_conv(leaf, w), leaf, gy)
    x64 = x.double().requires_grad_()
    (g64,) = torch.autograd.grad(reference(x64, w.double()), x64, gy.double())
    assert rel(g, g64) < 1e-5


def test_no_leak_across_batch_and_map_edges(small_tiles):
    """Zero padding at every edge: a huge value in one sample or corner stays put."""
    x, w = make((2, 2, 3, 4, 4), seed=6)
    x[0, :, -1, -1, -1] = 1e4
    both = small_tiles.depthwise_conv(x, w)
    alone = small_tiles.depthwise_conv(x[1:].clone(), w)
    torch.testing.assert_close(both[1:], alone, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_use_float32_math(small_tiles, dtype):
    x, w = make((2, 3, 5, 6), dtype=dtype, seed=7)
    y, y64, grads = grads_both(small_tiles.depthwise_conv, x, w.to(dtype))
    assert y.dtype == dtype
    tol = 8e-3 if dtype == torch.bfloat16 else 1e-3
    assert rel(y, y64) < tol
    for name, leaf, g, g64 in grads:
        assert g.dtype == leaf.dtype, name
        assert rel(g, g64) < 4 * tol, name


def test_is_supported(kd):
    from torch import nn

    assert kd.is_supported(nn.Conv3d(8, 8, 3, padding=1, groups=8, bias=False))
    assert kd.is_supported(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False))
    assert not kd.is_supported(nn.Conv3d(8, 8, 3, padding=1, groups=8, bias=True))
    assert not kd.is_supported(nn.Conv3d(8, 8, 3, padding=1, groups=1, bias=False))
    assert not kd.is_supported(nn.Conv3d(8, 8, 1, groups=8, bias=False))
    assert not kd.is_supported(nn.Conv3d(8, 8, 3, padding=1, stride=2, groups=8, bias=False))
    assert not kd.is_supported(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False,
                                         padding_mode="reflect"))


@pytest.mark.parametrize(
    ("kind", "message"),
    [("ndim", r"x must be \[B, C, H, W\]"), ("float64", "float32, bfloat16 or float16"),
     ("weight", r"weight must be \[3, 1, 3, 3\]"), ("device", "weight is on meta")],
)
def test_bad_input_is_named(kd, kind, message):
    x, w = make((1, 3, 4, 4))
    if kind == "ndim":
        x = x[0]
    elif kind == "float64":
        x = x.double()
    elif kind == "device":
        w = w.to("meta")
    else:
        w = w[..., :2]
    with pytest.raises(ValueError, match=message):
        kd.depthwise_conv(x, w)


def test_cpu_tensors_need_the_interpreter(kd, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        kd.depthwise_conv(*make((1, 3, 4, 4)))


# ---------------------------------------------------------------- compiled, on CUDA


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(2, 32, 64, 64, 64), (2, 16, 256, 256)], ids=["3D", "2D"])
def test_gpu_realistic_shape_against_float64(shape):
    from napari_lightm.model.ops.dwconv import depthwise_conv

    x, w = make(shape, seed=20, device="cuda")
    y, y64, grads = grads_both(depthwise_conv, x, w)
    assert rel(y, y64) < 1e-5
    for name, _, g, g64 in grads:
        # dweight sums over 2 x 64^3 voxels: float32 accumulation error grows
        assert rel(g, g64) < (1e-5 if name == "x" else 1e-4), name
