"""Fused Triton norms (LayerNorm, residual LayerNorm, GroupNorm + ReLU) against float64 torch.

CPU tests run the kernels in Triton's interpreter on a private copy of the module with tiny
tiles (so that several blocks, partial blocks and multi-tile backward programs occur at
small shapes). The ``gpu`` tests run the compiled kernels at realistic sizes; run them with
``pytest -m gpu tests/test_kernels_norms.py`` on a CUDA machine.
"""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from napari_lightm.model.ops.launch import Norms

if importlib.util.find_spec("triton") is None:
    pytest.skip("Triton is not installed", allow_module_level=True)

# the kernels the interpreted_module fixture (conftest.py) loads
INTERPRETED_SOURCE = "src/napari_lightm/model/ops/norms"


@pytest.fixture(scope="module")
def nm_module(interpreted_module):
    """The norms of a private copy of ``ops.norms`` whose kernels run in Triton's interpreter."""
    return entry_points(interpreted_module.layer_norm_triton,
                        interpreted_module.group_norm_triton)


def entry_points(ln, gn) -> SimpleNamespace:
    """The three Triton norms of the ``layer_norm_triton`` and ``group_norm_triton`` modules."""
    return SimpleNamespace(layer_norm=ln.layer_norm, residual_layer_norm=ln.residual_layer_norm,
                           group_norm_relu=gn.group_norm_relu)


@pytest.fixture
def nm(nm_module, monkeypatch):
    """The interpreted norms with tiny tiles (128 / 256 elements), 3 LN backward programs."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the module checks it per call too
    for name in ("LN_FWD_TILE", "LN_BWD_TILE"):
        monkeypatch.setattr(Norms, name, 128)
    monkeypatch.setattr(Norms, "GN_TILE", 256)
    monkeypatch.setattr(Norms, "LN_BWD_PROGRAMS", 3)
    return nm_module


def gen(seed):
    return torch.Generator().manual_seed(seed)


def rel(a, b):
    """Largest absolute error relative to the reference's largest magnitude."""
    b = b.double()
    return ((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def leaves(*tensors, dtype=None):
    """Fresh leaf copies requiring grad (``None`` passes through)."""
    out = []
    for t in tensors:
        if t is None:
            out.append(None)
        else:
            t = t.detach()
            out.append((t.to(dtype) if dtype is not None else t.clone()).requires_grad_())
    return out


def check_grads(y, y64, inputs, inputs64, names, tol, seed=9):
    """Compare ``y`` and the gradients of every input under one random cotangent."""
    assert y.shape == y64.shape
    assert rel(y, y64) < tol, "output"
    gy = torch.randn(y64.shape, generator=gen(seed), dtype=torch.float64).to(y64.device)
    grads = torch.autograd.grad(y, inputs, gy.to(y.dtype))
    grads64 = torch.autograd.grad(y64, inputs64, gy)
    for name, g, g64, x in zip(names, grads, grads64, inputs):
        assert g.shape == x.shape and g.dtype == x.dtype, name
        assert rel(g, g64) < tol, name


def token_input(shape, layout, seed, dtype=torch.float32):
    """``[..., C]`` tokens: contiguous, a strided view (token stride 2C + 3), or 4-D."""
    g = gen(seed)
    if layout == "contiguous":
        return torch.randn(*shape, generator=g).to(dtype)
    if layout == "strided":
        *lead, c = shape
        big = torch.randn(*lead[:-1], lead[-1] * 2, c * 2 + 3, generator=g).to(dtype)
        return big[..., ::2, 1:c + 1]  # unit channel stride, irregular token stride
    raise AssertionError(layout)


# ---------------------------------------------------------------- LayerNorm


@pytest.mark.parametrize("c", [16, 32, 48])
@pytest.mark.parametrize(
    ("shape", "layout"),
    [((2, 13), "contiguous"), ((2, 11), "strided"), ((2, 3, 5), "contiguous")],
    ids=["B,L", "strided view", "4-d"],
)
def test_layer_norm_matches_float64(nm, c, shape, layout):
    x = token_input((*shape, c), layout, seed=c)
    w = torch.randn(c, generator=gen(1)) * 0.5 + 1
    b = torch.randn(c, generator=gen(2)) * 0.5
    x_, w_, b_ = leaves(x, w, b)
    x64, w64, b64 = leaves(x, w, b, dtype=torch.float64)
    y = nm.layer_norm(x_, w_, b_, 1e-5)
    y64 = F.layer_norm(x64, (c,), w64, b64, 1e-5)
    assert y.dtype == torch.float32 and y.is_contiguous()
    check_grads(y, y64, [x_, w_, b_], [x64, w64, b64], ["x", "weight", "bias"], 1e-5)


def test_layer_norm_without_affine(nm):
    x = token_input((3, 7, 32), "contiguous", seed=3)
    (x_,), (x64,) = leaves(x), leaves(x, dtype=torch.float64)
    y = nm.layer_norm(x_, None, None, 1e-6)
    check_grads(y, F.layer_norm(x64, (32,), eps=1e-6), [x_], [x64], ["x"], 1e-5)


def test_layer_norm_large_mean_is_stable(nm):
    """Rows with |mean| = 1e3 >> std = 1: a one-pass sum of squares would lose the variance."""
    x = torch.randn(2, 9, 32, generator=gen(4)) + 1e3
    y = nm.layer_norm(x, None, None, 1e-5)
    y64 = F.layer_norm(x.double(), (32,), eps=1e-5)
    assert rel(y, y64) < 1e-4  # the float32 input's own rounding at 1e3 is ~3e-5


def test_layer_norm_gradient_with_any_strides(nm):
    """An upstream gradient without a unit channel stride (here: of a transposed output)."""
    x = token_input((2, 6, 16), "contiguous", seed=26)
    (x_,), (x64,) = leaves(x), leaves(x, dtype=torch.float64)
    y = nm.layer_norm(x_, None, None, 1e-5).transpose(-1, -2)
    y64 = F.layer_norm(x64, (16,), eps=1e-5).transpose(-1, -2)
    check_grads(y, y64, [x_], [x64], ["x"], 1e-5)


def test_layer_norm_double_backward_is_refused(nm):
    x = torch.randn(3, 16, generator=gen(27), requires_grad=True)
    (g,) = torch.autograd.grad(nm.layer_norm(x, None, None).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()


# ---------------------------------------------------------------- residual LayerNorm


@pytest.mark.parametrize("c", [16, 32, 48])
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_residual_layer_norm_matches_float64(nm, c, layout):
    a = token_input((2, 13, c), layout, seed=c + 1)
    t = token_input((2, 13, c), "strided" if layout == "contiguous" else "contiguous",
                    seed=c + 2)
    s = torch.tensor([0.7])
    w = torch.randn(c, generator=gen(5)) * 0.5 + 1
    b = torch.randn(c, generator=gen(6)) * 0.5
    ins = leaves(a, t, s, w, b)
    ins64 = leaves(a, t, s, w, b, dtype=torch.float64)
    y = nm.residual_layer_norm(*ins, 1e-5)
    a64, t64, s64, w64, b64 = ins64
    y64 = F.layer_norm(a64 + s64 * t64, (c,), w64, b64, 1e-5)
    assert y.dtype == torch.float32 and y.is_contiguous()
    check_grads(y, y64, ins, ins64, ["a", "t", "scale", "weight", "bias"], 1e-5)


@pytest.mark.parametrize("which", ["a", "t"])
def test_residual_layer_norm_gradient_for_one_input(nm, which):
    """Only one of a, t needs a gradient: the other output buffer is skipped."""
    a = torch.randn(2, 10, 16, generator=gen(7))
    t = torch.randn(2, 10, 16, generator=gen(8))
    s = torch.tensor([1.3])
    w, b = torch.ones(16) * 1.1, torch.zeros(16) + 0.2
    leaf = (a if which == "a" else t).clone().requires_grad_()
    args = (leaf, t) if which == "a" else (a, leaf)
    y = nm.residual_layer_norm(*args, s, w, b, 1e-5)
    leaf64 = leaf.detach().double().requires_grad_()
    args64 = (leaf64, t.double()) if which == "a" else (a.double(), leaf64)
    y64 = F.layer_norm(args64[0] + 1.3 * args64[1], (16,), w.double(), b.double(), 1e-5)
    check_grads(y, y64, [leaf], [leaf64], [which], 1e-5)


def test_residual_layer_norm_zero_dim_scale(nm):
    """A 0-d scale gets a 0-d gradient."""
    a, t = torch.randn(5, 16, generator=gen(28)), torch.randn(5, 16, generator=gen(29))
    s = torch.tensor(0.5, requires_grad=True)
    y = nm.residual_layer_norm(a, t, s, None, None, 1e-5)
    s64 = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    y64 = F.layer_norm(a.double() + s64 * t.double(), (16,), eps=1e-5)
    check_grads(y, y64, [s], [s64], ["scale"], 1e-5)


# ---------------------------------------------------------------- half precision


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_layer_norms_half_inputs_keep_float32_statistics(nm, dtype):
    a = torch.randn(2, 9, 32, generator=gen(10)).to(dtype)
    t = torch.randn(2, 9, 32, generator=gen(11)).to(dtype)
    s = torch.tensor([0.9])
    w = torch.randn(32, generator=gen(12)) * 0.5 + 1
    b = torch.randn(32, generator=gen(13)) * 0.5
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3  # the output rounding only
    y = nm.layer_norm(a, w, b, 1e-5)
    assert y.dtype == dtype
    assert rel(y, F.layer_norm(a.double(), (32,), w.double(), b.double(), 1e-5)) < tol
    ins = leaves(a, t, s, w, b)
    ins64 = leaves(a, t, s, w, b, dtype=torch.float64)
    y = nm.residual_layer_norm(*ins, 1e-5)
    a64, t64, s64, w64, b64 = ins64
    y64 = F.layer_norm(a64 + s64 * t64, (32,), w64, b64, 1e-5)
    assert y.dtype == dtype
    # gradients of a, t come back in their (half) dtype; scale/weight/bias in float32
    check_grads(y, y64, ins, ins64, ["a", "t", "scale", "weight", "bias"], 2 * tol)


# ---------------------------------------------------------------- GroupNorm + ReLU


def feature_map(shape, layout, seed, dtype=torch.float32, offset=0.0):
    """``[B, C, *S]`` in NC(D)HW, channels-last memory, or an RVM layer's output view."""
    g = gen(seed)
    b, c, *spatial = shape
    if layout == "rvm":  # movedim of a contiguous [B, L, C] token tensor
        t = torch.randn(b, int(torch.tensor(spatial).prod()), c, generator=g) + offset
        return torch.movedim(t.to(dtype).reshape(b, *spatial, c), -1, 1)
    if layout == "permuted":  # neither layout: the last two spatial axes swapped in memory
        x = torch.randn(b, c, *spatial[:-2], spatial[-1], spatial[-2], generator=g) + offset
        return x.to(dtype).transpose(-1, -2)
    x = (torch.randn(*shape, generator=g) + offset).to(dtype)
    if layout == "channels_last":
        fmt = torch.channels_last if len(spatial) == 2 else torch.channels_last_3d
        x = x.contiguous(memory_format=fmt)
    return x


def gn_affine(c, seed):
    """GroupNorm weight (around 1) and bias for ``c`` channels, from seeds ``seed, seed+1``."""
    return (torch.randn(c, generator=gen(seed)) * 0.5 + 1,
            torch.randn(c, generator=gen(seed + 1)) * 0.5)


def gn_relu_both(fn, x, groups, w, b):
    """``fn``'s ReLU(GroupNorm(x)) and float64 torch's, with the leaves of each."""
    ins, ins64 = leaves(x, w, b), leaves(x, w, b, dtype=torch.float64)
    y = fn(ins[0], groups, ins[1], ins[2], 1e-5)
    y64 = F.relu(F.group_norm(ins64[0], groups, ins64[1], ins64[2], 1e-5))
    return y, y64, ins, ins64


def assert_channels_last(y):
    b, c = y.shape[:2]
    assert torch.movedim(y, 1, -1).is_contiguous()  # the token view [B, L, C] is free
    fmt = torch.channels_last if y.ndim == 4 else torch.channels_last_3d
    assert y.is_contiguous(memory_format=fmt)
    assert torch.movedim(y, 1, -1).reshape(b, -1, c).data_ptr() == y.data_ptr()


@pytest.mark.parametrize(
    ("c", "groups", "spatial", "layout"),
    [
        # every layout in 2D and 3D at C=16 (8 groups of 2 channels)
        *[(16, 8, sp, lay) for sp in ((5, 7), (3, 4, 5)) for lay in ("nchw", "channels_last",
                                                                     "rvm")],
        # wider and non-power-of-two group widths
        (32, 8, (5, 7), "channels_last"),
        (48, 8, (5, 7), "rvm"),  # 6 channels per group
        (48, 4, (3, 4, 5), "nchw"),
        (16, 8, (5, 7), "permuted"),  # the token view is a copy
    ],
    ids=["2d-nchw", "2d-cl", "2d-rvm", "3d-nchw", "3d-cl", "3d-rvm", "C32-2d-cl", "C48G8-2d-rvm",
         "C48G4-3d-nchw", "2d-permuted"],
)
def test_group_norm_relu_matches_float64(nm, c, groups, spatial, layout):
    x = feature_map((2, c, *spatial), layout, seed=c + len(spatial))
    y, y64, ins, ins64 = gn_relu_both(nm.group_norm_relu, x, groups, *gn_affine(c, 14))
    assert ins[0].stride() == x.stride()  # clone kept the layout under test
    assert y.dtype == torch.float32
    assert_channels_last(y)
    assert (y == 0).any() and (y > 0).any()  # the ReLU mask matters in the gradients
    check_grads(y, y64, ins, ins64, ["x", "weight", "bias"], 1e-5)


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no affine"])
def test_group_norm_without_relu(nm, affine):
    x = feature_map((2, 32, 6, 5), "nchw", seed=16)
    w = torch.randn(32, generator=gen(17)) if affine else None
    b = torch.randn(32, generator=gen(18)) if affine else None
    ins = [t for t in leaves(x, w, b) if t is not None]
    ins64 = [t for t in leaves(x, w, b, dtype=torch.float64) if t is not None]
    y = nm.group_norm_relu(ins[0], 8, *(ins[1:] or [None, None]), 1e-5, relu=False)
    y64 = F.group_norm(ins64[0], 8, *(ins64[1:] or [None, None]), 1e-5)
    assert (y < 0).any()
    check_grads(y, y64, ins, ins64, ["x", "weight", "bias"][:len(ins)], 1e-5)


@pytest.mark.parametrize("layout", ["nchw", "rvm"])
def test_group_norm_large_mean_is_stable(nm, layout):
    """mean 1e3, std 1 over many token blocks: Chan's combination keeps the variance."""
    x = feature_map((2, 16, 9, 10), layout, seed=19, offset=1e3)
    y, y64, ins, ins64 = gn_relu_both(nm.group_norm_relu, x, 8, *gn_affine(16, 20))
    # float32 rounding of a 1e3 input is ~3e-5 of its std; a one-pass E[x^2] - E[x]^2 in
    # float32 would be off by O(1)
    check_grads(y, y64, ins, ins64, ["x", "weight", "bias"], 2e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_group_norm_relu_half_inputs(nm, dtype):
    x = feature_map((2, 32, 3, 4, 5), "channels_last", seed=22, dtype=dtype)
    y, y64, ins, ins64 = gn_relu_both(nm.group_norm_relu, x, 8, *gn_affine(32, 23))
    assert y.dtype == dtype
    assert_channels_last(y)
    tol = 2e-2 if dtype == torch.bfloat16 else 4e-3  # the output/gradient rounding only
    check_grads(y, y64, ins, ins64, ["x", "weight", "bias"], tol)


def test_group_norm_single_block_and_batch_one(nm, monkeypatch):
    """Default tile size (one block holds every token), batch 1."""
    monkeypatch.setattr(Norms, "GN_TILE", 4096)
    x = feature_map((1, 16, 4, 6), "rvm", seed=25)
    x_, (x64,) = leaves(x)[0], leaves(x, dtype=torch.float64)
    y = nm.group_norm_relu(x_, 2, None, None, 1e-5)
    check_grads(y, F.relu(F.group_norm(x64, 2, eps=1e-5)), [x_], [x64], ["x"], 1e-5)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda nm: nm.group_norm_relu(torch.randn(1, 12, 4, 4), 8, None, None), "divisible"),
        (lambda nm: nm.group_norm_relu(torch.randn(1, 16, 4, 4), 8, torch.ones(8), None),
         "weight must be"),
        (lambda nm: nm.group_norm_relu(torch.randn(1, 16, 4, 4), 8, None, torch.ones(16, 1)),
         "bias must be"),
        (lambda nm: nm.group_norm_relu(torch.randn(16, 4), 8, None, None), r"\[B, C, \*spatial"),
        (lambda nm: nm.group_norm_relu(torch.randn(1, 16, 4, 4), 0, None, None), "num_groups"),
        (lambda nm: nm.group_norm_relu(torch.randn(1, 16, 4, 4).double(), 8, None, None),
         "float64"),
        (lambda nm: nm.layer_norm(torch.randn(3, 16), torch.ones(15), None), "weight must be"),
        (lambda nm: nm.layer_norm(torch.randn(3, 16), None, torch.ones(1)), "bias must be"),
        (lambda nm: nm.residual_layer_norm(torch.randn(3, 16), torch.randn(3, 8),
                                           torch.ones(1), None, None), "same shape"),
        (lambda nm: nm.residual_layer_norm(torch.randn(3, 16), torch.randn(3, 16),
                                           torch.ones(2), None, None), "1-element"),
    ],
    ids=["C % G", "weight", "bias", "ndim", "groups", "float64", "LN weight", "LN bias",
         "shapes", "scale"],
)
def test_bad_input_is_named(nm, call, message):
    with pytest.raises(ValueError, match=message):
        call(nm)


def test_cpu_tensors_need_the_interpreter(nm, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="CUDA"):
        nm.layer_norm(torch.randn(2, 16), None, None)


# ---------------------------------------------------------------- GPU (compiled kernels)


@pytest.fixture
def nm_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    if isinstance(tl.standard.sum, InterpretedFunction):
        pytest.skip("triton runs in interpreter mode in this session; run "
                    "`pytest -m gpu tests/test_kernels_norms.py`")
    from napari_lightm.model.ops.norms import group_norm_triton, layer_norm_triton

    return entry_points(layer_norm_triton, group_norm_triton)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "rvm"])
def test_gpu_group_norm_relu_realistic(nm_gpu, layout, dtype):
    """1x32x64^3, the 3D network's full-resolution width, against float64 torch."""
    x = feature_map((1, 32, 64, 64, 64), layout, seed=30, offset=0.5).cuda().to(dtype)
    w, b = (t.cuda() for t in gn_affine(32, 31))
    y, y64, ins, ins64 = gn_relu_both(nm_gpu.group_norm_relu, x, 8, w, b)
    assert y.dtype == dtype
    assert_channels_last(y)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    check_grads(y, y64, ins, ins64, ["x", "weight", "bias"], tol)


@pytest.mark.gpu
@pytest.mark.parametrize(("length", "c"), [(64 ** 3, 32), (8 ** 3 * 3, 256), (4097, 48)])
def test_gpu_layer_norms_realistic(nm_gpu, length, c):
    a = torch.randn(1, length, c, generator=gen(33)).cuda()
    t = torch.randn(1, length, c, generator=gen(34)).cuda()
    s = torch.tensor([0.8]).cuda()
    w = (torch.randn(c, generator=gen(35)) * 0.5 + 1).cuda()
    b = (torch.randn(c, generator=gen(36)) * 0.5).cuda()
    x_, w_, b_ = leaves(a, w, b)
    x64, w64, b64 = leaves(a, w, b, dtype=torch.float64)
    y = nm_gpu.layer_norm(x_, w_, b_, 1e-5)
    check_grads(y, F.layer_norm(x64, (c,), w64, b64, 1e-5), [x_, w_, b_], [x64, w64, b64],
                ["x", "weight", "bias"], 1e-4)
    ins = leaves(a, t, s, w, b)
    ins64 = leaves(a, t, s, w, b, dtype=torch.float64)
    y = nm_gpu.residual_layer_norm(*ins, 1e-5)
    a64, t64, s64, w64, b64 = ins64
    y64 = F.layer_norm(a64 + s64 * t64, (c,), w64, b64, 1e-5)
    check_grads(y, y64, ins, ins64, ["a", "t", "scale", "weight", "bias"], 1e-4)
