"""Fused causal depthwise conv1d + SiLU (Triton) against float64 torch references.

CPU tests run the kernels in Triton's interpreter on tiny shapes (a private copy of the
module, loaded as ``test_triton_interpret.py`` does); ``gpu``-marked tests run the compiled
kernels on CUDA at a realistic size.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from napari_lightm.model.ops.launch import Conv1d

if importlib.util.find_spec("triton") is None:
    pytest.skip("Triton is not installed", allow_module_level=True)

# the kernels the interpreted_module fixture (conftest.py) loads
INTERPRETED_SOURCE = "src/napari_lightm/model/ops/conv1d/triton.py"


@pytest.fixture(scope="module")
def kc(interpreted_module):
    """A private copy of ``ops.conv1d.triton`` whose kernels run in Triton's interpreter."""
    return interpreted_module


@pytest.fixture
def small_tiles(kc, monkeypatch):
    """Tiny tiles so that small shapes still span several token and channel blocks."""
    for name, value in (("FWD_BLOCK_L", 8), ("FWD_BLOCK_E", 4), ("BWD_BLOCK_L", 4),
                        ("BWD_BLOCK_E", 4)):
        monkeypatch.setattr(Conv1d, name, value)
    return kc


# ---------------------------------------------------------------- references and helpers


def reference(x, weight, bias=None, activation=True):
    """The formula in torch (run it in float64): pad K-1 zeros on the left of each row."""
    w = weight.reshape(weight.shape[0], -1)  # [E, K]
    k = w.shape[1]
    length = x.shape[1]
    xp = F.pad(x, (0, 0, k - 1, 0))
    out = sum(xp[:, j : j + length] * w[:, j] for j in range(k))
    if bias is not None:
        out = out + bias
    return F.silu(out) if activation else out


def make(b, length, e, k, dtype=torch.float32, seed=0, weight_3d=True, with_bias=True,
         device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, length, e, generator=g)
    w = torch.randn(e, 1, k, generator=g) * 0.7
    bias = torch.randn(e, generator=g) * 0.5 if with_bias else None
    if not weight_3d:
        w = w[:, 0].clone()
    x = x.to(device=device, dtype=dtype)
    w = w.to(device)
    bias = None if bias is None else bias.to(device)
    return x, w, bias


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def grads_both(fn, x, w, bias, activation=True, gy_seed=9):
    """Our output and gradients next to float64 autograd of the reference, same leaves."""
    leaves = [t.clone().requires_grad_() for t in (x, w, bias) if t is not None]
    y = fn(leaves[0], leaves[1], leaves[2] if bias is not None else None, activation)
    leaves64 = [t.detach().double().requires_grad_() for t in (x, w, bias) if t is not None]
    y64 = reference(leaves64[0], leaves64[1], leaves64[2] if bias is not None else None,
                    activation)
    g = torch.Generator(device=x.device).manual_seed(gy_seed)
    gy = torch.randn(y64.shape, generator=g, dtype=torch.float64, device=x.device)
    grads = torch.autograd.grad(y, leaves, gy.to(y.dtype))
    grads64 = torch.autograd.grad(y64, leaves64, gy)
    return y, y64, list(zip(("x", "weight", "bias"), leaves, grads, grads64))


SHAPES = [
    (2, 21, 6, 4),  # L not a multiple of the token block, E not of the channel block
    (2, 3, 5, 4),  # L < K
    (1, 1, 3, 4),  # a single token
    (3, 16, 4, 2),  # exact multiples
    (1, 11, 5, 8),  # the widest kernel
    (1, 12, 3, 1),  # K = 1: a per-channel scale
]
SHAPE_IDS = ["L21E6K4", "L<K", "L1", "L16E4K2", "K8", "K1"]


# ---------------------------------------------------------------- interpreter tests


@pytest.mark.parametrize("weight_3d", [True, False], ids=["w[E,1,K]", "w[E,K]"])
@pytest.mark.parametrize(("b", "length", "e", "k"), SHAPES, ids=SHAPE_IDS)
def test_forward_matches_float64_reference(small_tiles, b, length, e, k, weight_3d):
    x, w, bias = make(b, length, e, k, weight_3d=weight_3d, seed=length + e)
    y = small_tiles.causal_conv1d_silu(x, w, bias)
    y64 = reference(x.double(), w.double(), bias.double())
    assert y.shape == (b, length, e) and y.dtype == torch.float32 and y.is_contiguous()
    assert rel(y, y64) < 1e-5


@pytest.mark.parametrize(("b", "length", "e", "k"), SHAPES, ids=SHAPE_IDS)
def test_gradients_match_float64_autograd(small_tiles, b, length, e, k):
    x, w, bias = make(b, length, e, k, seed=2 * length + e)
    y, y64, grads = grads_both(small_tiles.causal_conv1d_silu, x, w, bias)
    assert rel(y, y64) < 1e-5
    for name, leaf, g, g64 in grads:
        assert g.shape == leaf.shape and g.dtype == leaf.dtype, name
        assert rel(g, g64) < 1e-5, name


def test_default_tiles_with_e_not_a_power_of_two(kc):
    """The shipped tile sizes: one channel block of 64 lanes with 70 > 64 channels."""
    x, w, bias = make(2, 70, 70, 4, seed=11)
    y, y64, grads = grads_both(kc.causal_conv1d_silu, x, w, bias)
    assert rel(y, y64) < 1e-5
    for name, _, g, g64 in grads:
        assert rel(g, g64) < 1e-5, name


@pytest.mark.parametrize(("min_programs", "groups", "per_prog"),
                         [(1, 1, 5), (2, 2, 3), (10**6, 5, 1)],
                         ids=["1 group", "2 groups, last overruns", "1 block each"])
def test_backward_token_groups(small_tiles, monkeypatch, min_programs, groups, per_prog):
    """Programs walking several token blocks (partial sums per group) give the same grads."""
    monkeypatch.setattr(Conv1d, "BWD_MIN_PROGRAMS", min_programs)
    # L=18 with BWD_BLOCK_L=4 -> 5 token blocks; E=3 -> 1 channel block; B=1
    assert small_tiles._bwd_groups(5, 1) == (groups, per_prog)
    x, w, bias = make(1, 18, 3, 4, seed=5)
    _, _, grads = grads_both(small_tiles.causal_conv1d_silu, x, w, bias)
    for name, _, g, g64 in grads:
        assert rel(g, g64) < 1e-5, name


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no bias"])
def test_without_activation(small_tiles, with_bias):
    # without bias: weight as [E, K], so its gradient must come back in that shape too
    x, w, bias = make(2, 13, 6, 4, seed=12, with_bias=with_bias, weight_3d=with_bias)
    y, y64, grads = grads_both(small_tiles.causal_conv1d_silu, x, w, bias, activation=False)
    assert rel(y, y64) < 1e-5
    # the plain convolution: a SiLU would make every output differ
    assert rel(y, reference(x.double(), w.double(), None if bias is None else bias.double())) \
        > 1e-2
    assert len(grads) == (3 if with_bias else 2)
    for name, _, g, g64 in grads:
        assert rel(g, g64) < 1e-5, name


def test_matches_mamba_causal_conv_and_silu(kc):
    """The mixer's own torch path: ``F.silu(Mamba.causal_conv(x))`` with its conv1d."""
    from napari_lightm.model.mamba import Mamba

    torch.manual_seed(0)
    mixer = Mamba(d_model=5)  # E = 10, K = 4
    x = torch.randn(2, 23, 10)
    want = F.silu(mixer.causal_conv(x))
    got = kc.causal_conv1d_silu(x, mixer.conv1d.weight, mixer.conv1d.bias)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_column_slices_read_in_place(small_tiles):
    """``x, z = in_proj(u).split(E, -1)``: token stride 2E, same result as contiguous."""
    x, w, bias = make(2, 10, 6, 4, seed=13)
    z = torch.randn_like(x)
    y = small_tiles.causal_conv1d_silu(x, w, bias)
    gy = torch.randn_like(y)
    x_leaf = x.clone().requires_grad_()
    (g_x,) = torch.autograd.grad(small_tiles.causal_conv1d_silu(x_leaf, w, bias), x_leaf, gy)
    for first in (True, False):  # x as the first or the second half of the channels
        xz = torch.cat([x, z] if first else [z, x], dim=-1).requires_grad_()
        own, other = (slice(0, 6), slice(6, 12)) if first else (slice(6, 12), slice(0, 6))
        view = xz[..., own]
        assert not view.is_contiguous() and view.stride(-1) == 1
        y_view = small_tiles.causal_conv1d_silu(view, w, bias)
        torch.testing.assert_close(y_view, y, rtol=0, atol=0)
        (g_base,) = torch.autograd.grad(y_view, xz, gy)
        torch.testing.assert_close(g_base[..., own], g_x, rtol=0, atol=0)
        assert torch.count_nonzero(g_base[..., other]) == 0


def test_strided_inputs_and_upstream_gradient(small_tiles):
    """Batch-strided x (a slice of a longer tensor), channel-strided dy (copied)."""
    x, w, bias = make(3, 20, 5, 4, seed=14)
    x_slice = x[::2, 3:14]  # non-standard batch and token offsets
    y, y64, _ = grads_both(small_tiles.causal_conv1d_silu, x_slice.contiguous(), w, bias)
    y_s = small_tiles.causal_conv1d_silu(x_slice, w, bias)
    torch.testing.assert_close(y_s, y.detach(), rtol=0, atol=0)
    leaf = x_slice.clone().requires_grad_()
    y2 = small_tiles.causal_conv1d_silu(leaf, w, bias)
    gy = torch.randn(5, y2.shape[1], y2.shape[0]).permute(2, 1, 0)  # channel stride != 1
    (g,) = torch.autograd.grad(y2, leaf, gy)
    x64 = x_slice.double().requires_grad_()
    (g64,) = torch.autograd.grad(reference(x64, w.double(), bias.double()), x64, gy.double())
    assert rel(g, g64) < 1e-5


def test_no_leak_between_batch_rows(small_tiles):
    x, w, bias = make(2, 11, 5, 4, seed=15)
    x[0, -3:] = 1e4  # the end of row 0 would dominate row 1's first outputs if it leaked
    both = small_tiles.causal_conv1d_silu(x, w, bias)
    for i in range(2):
        alone = small_tiles.causal_conv1d_silu(x[i : i + 1].clone(), w, bias)
        torch.testing.assert_close(both[i : i + 1], alone, rtol=0, atol=0)
    # backward: row 0's input gradient sees only row 0's upstream gradient
    leaf = x.clone().requires_grad_()
    gy = torch.randn(2, 11, 5)
    gy[0] = 0
    (g,) = torch.autograd.grad(small_tiles.causal_conv1d_silu(leaf, w, bias), leaf, gy)
    assert torch.count_nonzero(g[0]) == 0 and torch.count_nonzero(g[1]) > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_use_float32_math(small_tiles, dtype):
    x, w, bias = make(2, 19, 6, 4, dtype=dtype, seed=16)
    w_half = w.to(dtype)  # parameters in half too: gradients come back in their dtype
    y, y64, grads = grads_both(small_tiles.causal_conv1d_silu, x, w_half, bias)
    assert y.dtype == dtype
    # only the final rounding of y: half-precision step ~ 2^-8 (bf16) / 2^-11 (fp16)
    tol = 8e-3 if dtype == torch.bfloat16 else 1e-3
    assert rel(y, y64) < tol
    # float32 accumulation, one rounding at the end: y is (nearly always) the exact result
    # rounded to the half type; rounding after every multiply-add, as torch's half ops do,
    # misses it for a large share of the outputs. (Triton's interpreter converts float32 to
    # bfloat16 by truncation, compiled kernels round to nearest: accept either here.)
    exact = reference(x.double(), w_half.double(), bias.double()).float()
    ok = y == exact.to(dtype)
    if dtype == torch.bfloat16:
        toward_zero = (exact.view(torch.int32) & ~0xFFFF).view(torch.float32).to(dtype)
        ok |= y == toward_zero
    assert (~ok).double().mean().item() < 0.02
    for name, leaf, g, g64 in grads:
        assert g.dtype == leaf.dtype and g.shape == leaf.shape, name
        assert rel(g, g64) < 4 * tol, name


def test_directional_derivatives_match_finite_differences(kc):
    """gradcheck-style: <grad, v> against central differences of our own forward (fp32)."""
    x, w, bias = make(1, 6, 2, 3, seed=17)
    gy = torch.randn(1, 6, 2, generator=torch.Generator().manual_seed(1))
    leaves = [x.clone().requires_grad_(), w.clone().requires_grad_(),
              bias.clone().requires_grad_()]
    grads = torch.autograd.grad(kc.causal_conv1d_silu(*leaves), leaves, gy)

    def loss(args):
        return (kc.causal_conv1d_silu(*args).double() * gy.double()).sum().item()

    h = 1e-2
    gen = torch.Generator().manual_seed(2)
    for i, name in enumerate(("x", "weight", "bias")):
        for _ in range(2):
            v = torch.randn(leaves[i].shape, generator=gen)
            plus = [t.detach().clone() for t in leaves]
            minus = [t.detach().clone() for t in leaves]
            plus[i] += h * v
            minus[i] -= h * v
            numeric = (loss(plus) - loss(minus)) / (2 * h)
            analytic = (grads[i] * v).sum().item()
            assert abs(numeric - analytic) <= 2e-3 * max(1.0, abs(analytic)), name


def test_empty_sequence(kc):
    x, w, bias = make(2, 0, 3, 4)
    leaves = [x.requires_grad_(), w.requires_grad_(), bias.requires_grad_()]
    y = kc.causal_conv1d_silu(*leaves)
    assert y.shape == (2, 0, 3)
    gx, gw, gb = torch.autograd.grad(y.sum(), leaves, allow_unused=True)
    assert gx.shape == x.shape and torch.count_nonzero(gw) == 0 and torch.count_nonzero(gb) == 0


def _bad(kind):
    x, w, bias = make(1, 5, 3, 4)
    if kind == "ndim":
        x = x[0]
    elif kind == "float64":
        x = x.double()
    elif kind == "weight shape":
        w = w.reshape(3, 2, 2)
    elif kind == "weight rows":
        w = w[:2]
    elif kind == "width":
        w = torch.randn(3, 1, 9)
    elif kind == "bias":
        bias = bias[:2]
    elif kind == "int weight":
        w = w.long()
    return x, w, bias


@pytest.mark.parametrize(
    ("kind", "message"),
    [("ndim", r"x must be \[B, L, E\]"), ("float64", "float32, bfloat16 or float16"),
     ("weight shape", r"weight must be \[E, K\]"), ("weight rows", "E=3 rows"),
     ("width", "kernel width"), ("bias", r"bias must be \[E=3\]"),
     ("int weight", "floating point")],
)
def test_bad_input_is_named(kc, kind, message):
    with pytest.raises(ValueError, match=message):
        kc.causal_conv1d_silu(*_bad(kind))


def test_cpu_tensors_need_the_interpreter(kc, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x, w, bias = make(1, 5, 3, 4)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        kc.causal_conv1d_silu(x, w, bias)


# ---------------------------------------------------------------- compiled, on CUDA


@pytest.mark.gpu
@pytest.mark.parametrize("activation", [True, False], ids=["silu", "plain"])
def test_gpu_realistic_shape_against_torch(activation):
    """B=2, L=262144 (512^2 tokens), E=64, read as the mixer's split view of in_proj."""
    from napari_lightm.model.ops.conv1d.triton import causal_conv1d_silu

    x, w, bias = make(2, 262144, 64, 4, seed=20, device="cuda")
    xz = torch.cat([x, torch.randn_like(x)], dim=-1)
    view = xz[..., :64]  # token stride 2E, as in the mixer
    # gradients on a contiguous copy of the view (grads_both clones its leaves); the
    # strided read is checked against the contiguous result below
    y, y64, grads = grads_both(causal_conv1d_silu, view, w, bias, activation)
    assert rel(y, y64) < 1e-5
    for name, leaf, g, g64 in grads:
        assert g.shape == leaf.shape and g.dtype == leaf.dtype, name
        # dweight/dbias are sums over 524288 tokens: float32 accumulation error grows
        assert rel(g, g64) < (1e-5 if name == "x" else 1e-4), name
    y_view = causal_conv1d_silu(view, w, bias, activation)
    torch.testing.assert_close(y_view, causal_conv1d_silu(x, w, bias, activation), rtol=0,
                               atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_half_inputs(dtype):
    from napari_lightm.model.ops.conv1d.triton import causal_conv1d_silu

    x, w, bias = make(2, 262144, 64, 4, dtype=dtype, seed=21, device="cuda")
    y, y64, grads = grads_both(causal_conv1d_silu, x, w, bias)
    tol = 8e-3 if dtype == torch.bfloat16 else 1e-3
    assert y.dtype == dtype and rel(y, y64) < tol
    for name, _, g, g64 in grads:
        assert rel(g, g64) < 4 * tol, name
