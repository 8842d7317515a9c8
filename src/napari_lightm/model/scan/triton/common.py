"""Device helpers shared by the scan's Triton kernels, and the reverse-scan probe."""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from napari_lightm.model.ops._host import interpreting
from napari_lightm.model.ops.launch import Scan as LAUNCH

# Hardware approximations of exp2 / log2 / reciprocal on CUDA (one MUFU instruction each,
# results below 1e-38 flushed to zero); Triton's interpreter has no inline asm.
_FAST_MATH = tl.constexpr(not interpreting())


@triton.jit
def combine(a1, b1, a2, b2):
    """Compose two steps of ``h -> a h + b`` (1 before 2)."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def scan_rev(a, b, FLIP: tl.constexpr):
    """Suffix scan along axis 0: ``x_t = a_t x_{t+1} + b_t`` (from zero past the end)."""
    if FLIP:  # fallback where the reverse scan mis-orders a non-commutative combine
        pa, pb = tl.associative_scan((tl.flip(a, 0), tl.flip(b, 0)), 0, combine)
        return tl.flip(pa, 0), tl.flip(pb, 0)
    else:
        return tl.associative_scan((a, b), 0, combine, reverse=True)


@triton.jit
def load_a_log2(a_ptr, e, n, N, en_mask):
    """``A [BE, BN] * log2(e)``, so that ``exp(delta A) = exp2(delta * this)``."""
    a = tl.load(a_ptr + e[:, None] * N + n[None, :], mask=en_mask, other=0.0)
    return a * 1.4426950408889634


@triton.jit
def program_tile(a_ptr, E, N, BE: tl.constexpr, BN: tl.constexpr):
    """This program's place in a (super-chunk, channel block, batch row) grid: ``ks``, its
    channels ``e [BE]``, batch row ``bb`` (int64), states ``n [BN]``, their masks
    ``e_mask, n_mask, en_mask`` and its tile of ``A`` in log2 units (:func:`load_a_log2`)."""
    ks = tl.program_id(0)
    e = tl.program_id(1) * BE + tl.arange(0, BE)
    bb = tl.program_id(2).to(tl.int64)
    n = tl.arange(0, BN)
    e_mask, n_mask = e < E, n < N
    en_mask = e_mask[:, None] & n_mask[None, :]
    return ks, e, bb, n, e_mask, n_mask, en_mask, load_a_log2(a_ptr, e, n, N, en_mask)


@triton.jit
def ex2(x):
    """``2**x``; on CUDA one MUFU instruction (flushing results below 1e-38 to zero)."""
    if _FAST_MATH:
        return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=r,r", [x],
                                         dtype=tl.float32, is_pure=True, pack=1)
    else:
        return tl.exp2(x)


@triton.jit
def lg2(x):
    """``log2(x)``; on CUDA one MUFU instruction."""
    if _FAST_MATH:
        return tl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=r,r", [x],
                                         dtype=tl.float32, is_pure=True, pack=1)
    else:
        return tl.log2(x)


@triton.jit
def sigmoid(x):
    """``1 / (1 + exp(-x))`` with the approximate exp2 and reciprocal (0 and 1 at the ends)."""
    return tl.fdiv(1.0, 1.0 + ex2(x * -1.4426950408889634))


@triton.jit
def softplus(x):
    """torch's softplus (threshold 20) with an accurate log1p for small ``exp(x)``."""
    y = ex2(tl.minimum(x, 20.0) * 1.4426950408889634)
    w = 1.0 + y
    lp = tl.where(w == 1.0, y, tl.fdiv(y * lg2(w) * 0.6931471805599453, w - 1.0))
    return tl.where(x > 20.0, x, lp)


@triton.jit
def load_delta(d_ptr, bias_ptr, tok_off, col_off, mask2, e, e_mask,
                HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Raw delta ``[T, BE]`` (+ bias) and the step size actually used (0 outside).

    ``tok_off [T]`` are the tokens' offsets, ``col_off`` ``[T or 1, BE]`` the channels'.
    """
    raw = tl.load(d_ptr + tok_off[:, None] + col_off, mask=mask2, other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw += tl.load(bias_ptr + e, mask=e_mask, other=0.0).to(tl.float32)[None, :]
    if SOFTPLUS:
        dt = softplus(raw)
    else:
        dt = raw
    return raw, tl.where(mask2, dt, 0.0)


# ---------------------------------------------------------------- host side


def gradient_buffers(u: torch.Tensor, n: int, z: torch.Tensor | None, parts: int, ks: int):
    """The float32 outputs of a backward kernel: ``du, d delta, dz [Bt, L, E]`` (``dz`` None
    without a gate), partial sums ``dB, dC [parts, Bt, L, N]``, ``dA [Bt, KS, E, N]`` and
    ``dD, d delta_bias [Bt, KS, E]``."""
    bt, length, e = u.shape
    f32 = dict(device=u.device, dtype=torch.float32)
    du = torch.empty(bt, length, e, **f32)
    dd = torch.empty(bt, length, e, **f32)
    dz = torch.empty(bt, length, e, **f32) if z is not None else None
    dB = torch.empty(parts, bt, length, n, **f32)
    dC = torch.empty(parts, bt, length, n, **f32)
    dA = torch.empty(bt, ks, e, n, **f32)
    dD = torch.empty(bt, ks, e, **f32)
    dbias = torch.empty(bt, ks, e, **f32)
    return du, dd, dz, dB, dC, dA, dD, dbias


# ---------------------------------------------------------------- reverse-scan probe


@triton.jit
def _probe_kernel(a_ptr, b_ptr, o_ptr, T: tl.constexpr, BE: tl.constexpr, BN: tl.constexpr):
    t = tl.arange(0, T)[:, None, None]
    e = tl.arange(0, BE)[None, :, None]
    n = tl.arange(0, BN)[None, None, :]
    off = (t * BE + e) * BN + n
    _, h = scan_rev(tl.load(a_ptr + off), tl.load(b_ptr + off), False)
    tl.store(o_ptr + off, h)


@functools.cache
def reverse_scan_needs_flip(device_index: int) -> bool:
    """True when this Triton's ``reverse=True`` scan mis-orders a non-commutative combine.

    (An open Triton issue, #4362, reports wrong reverse scans; check once per device and
    fall back to flip + forward scan, which is always right.)
    """
    g = torch.Generator().manual_seed(0)
    t, be = LAUNCH.DEFAULT_CHUNK, LAUNCH.BWD_BLOCK_E
    a = torch.rand(t, be, 16, generator=g) * 0.5 + 0.5
    b = torch.randn(t, be, 16, generator=g)
    want = torch.empty_like(b)
    acc = torch.zeros_like(b[0])
    for i in reversed(range(a.shape[0])):
        acc = a[i] * acc + b[i]
        want[i] = acc
    dev = torch.device("cuda", device_index) if device_index >= 0 else torch.device("cpu")
    a, b = a.to(dev), b.to(dev)
    out = torch.empty_like(b)
    _probe_kernel[(1,)](a, b, out, t, be, 16)
    return not torch.allclose(out.cpu(), want, rtol=1e-5, atol=1e-5)


def flip_mode(device: torch.device) -> bool:
    """Whether the backward kernels on ``device`` take the flip + forward-scan fallback."""
    if device.type != "cuda":
        return reverse_scan_needs_flip(-1)
    index = torch.cuda.current_device() if device.index is None else device.index
    return reverse_scan_needs_flip(index)
