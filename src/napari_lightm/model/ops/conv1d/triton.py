"""Fused causal depthwise conv1d + SiLU in Triton (CUDA), forward and backward.

The Mamba mixer's short convolution on token-major tensors ``x [B, L, E]``::

    y[b, t, e] = SiLU(bias[e] + sum_j weight[e, j] * x[b, t - (K-1) + j, e])

with ``x = 0`` before the first token of every batch row (left padding ``K - 1``). The
torch version (pad, K multiplies, K-1 adds, bias, SiLU) makes about eight passes over a
``[B, L, E]`` tensor; here the forward is one read of ``x`` and one write of ``y``, the
backward one read of ``x`` and ``dy``, one write of ``dx`` and one float32 intermediate
(written once, read once; see below).

Layout: a program owns ``BLOCK_L`` tokens x ``BLOCK_E`` channels of one batch row. The
channels are the unit-stride axis, so every tile row is one coalesced load; the K shifted
copies of the tile that a program reads (tokens ``t-K+1 .. t``) overlap and come from cache.
The kernels take any batch/token strides (a ``split`` of ``in_proj``'s output is read in
place) and need the channel stride to be 1 (other layouts are copied first).

Backward recomputes the pre-activation instead of storing it. With
``g[s] = dy[s] * SiLU'(pre[s])``::

    dx[t]        = sum_j weight[j] * g[t + (K-1) - j]        (within the row)
    dweight[e,j] = sum_{b,t} g[b,t,e] * x[b, t-(K-1)+j, e]
    dbias[e]     = sum_{b,t} g[b,t,e]

in two passes. Pass 1 (``_conv_grad_kernel``) reads ``x`` and ``dy`` once, writes ``g``
(float32; into ``dx``'s own memory for float32 inputs) and each token block's first
``K-1`` rows of ``g`` to a small halo buffer; a program walks ``blocks_per_prog`` token
blocks and writes its ``dweight``/``dbias`` partial sums to a float32 buffer
``[B, groups, K, E]`` that torch sums (deterministic, no atomics). Pass 2
(``_conv_dx_kernel``) forms ``dx`` from the K shifted rows of ``g`` (the rows past its
block from the halo), in place: the pre-activation is recomputed once per token, not K
times as a single-pass backward would. Launch constants: ``ops/launch.py``'s ``Conv1d``.
All math is float32 whatever the input dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from napari_lightm.model.ops._host import DTYPES, interpreting, on_device, pow2, unit_last
from napari_lightm.model.ops.launch import Conv1d as LAUNCH

MAX_WIDTH = 8  # largest kernel width K supported (backward pass 1 has one accumulator per tap)


# ---------------------------------------------------------------- device helpers


@triton.jit
def _pre_act(x_row, w_ptr, b_ptr, tok, e, e_mask, L, sx_t,
             KSIZE: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Pre-activation ``bias + sum_i w[i] x[tok - (K-1) + i]`` at tokens ``tok`` -> ``[BL, BE]``.

    ``x`` is zero outside ``0 <= token < L`` of this row (causal padding; tokens past the end
    only occur for backward rows whose gradient is masked to zero anyway).
    """
    acc = tl.zeros((tok.shape[0], e.shape[0]), tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + e, mask=e_mask, other=0.0)[None, :]
    for i in tl.static_range(KSIZE):
        src = tok - (KSIZE - 1) + i
        m = ((src >= 0) & (src < L))[:, None] & e_mask[None, :]
        xv = tl.load(x_row + src.to(tl.int64)[:, None] * sx_t + e[None, :], mask=m, other=0.0)
        wv = tl.load(w_ptr + e * KSIZE + i, mask=e_mask, other=0.0)
        acc += wv[None, :] * xv.to(tl.float32)
    return acc


# ---------------------------------------------------------------- kernels


@triton.jit
def _conv_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    L, E, sx_b, sx_t,
    KSIZE: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_E: tl.constexpr,
):
    """``y [B, L, E]`` (contiguous) for one (token block, channel block, batch row)."""
    t = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    bb = tl.program_id(2).to(tl.int64)
    e_mask = e < E
    pre = _pre_act(x_ptr + bb * sx_b, w_ptr, b_ptr, t, e, e_mask, L, sx_t, KSIZE, HAS_BIAS)
    if ACT:
        out = pre * tl.sigmoid(pre)
    else:
        out = pre
    mask = (t < L)[:, None] & e_mask[None, :]
    off = (bb * L + t.to(tl.int64))[:, None] * E + e[None, :]
    tl.store(y_ptr + off, out.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _tap(x_row, t, e, e_mask, L, sx_t, J: tl.constexpr, KSIZE: tl.constexpr):
    """``x[t - (K-1) + J]`` for a token block -> ``[BL, BE]`` float32 (zero outside the row)."""
    src = t - (KSIZE - 1) + J
    m = ((src >= 0) & (src < L))[:, None] & e_mask[None, :]
    return tl.load(x_row + src.to(tl.int64)[:, None] * sx_t + e[None, :], mask=m,
                   other=0.0).to(tl.float32)


@triton.jit
def _add_tap(acc, g, x_row, t, e, e_mask, L, sx_t, J: tl.constexpr, KSIZE: tl.constexpr):
    """``acc + g * x[t - (K-1) + J]`` (elementwise; ``acc`` unchanged for ``J >= K``)."""
    if J < KSIZE:
        acc += g * _tap(x_row, t, e, e_mask, L, sx_t, J, KSIZE)
    return acc


@triton.jit
def _store_tap(dw_ptr, part, acc, e, e_mask, E, J: tl.constexpr, KSIZE: tl.constexpr):
    """Row ``J`` of this program's ``dweight`` partial sum: ``acc`` summed over tokens."""
    if J < KSIZE:
        tl.store(dw_ptr + (part * KSIZE + J) * E + e, tl.sum(acc, axis=0), mask=e_mask)


@triton.jit
def _conv_grad_kernel(
    x_ptr, w_ptr, b_ptr, dy_ptr, g_ptr, halo_ptr, dw_ptr, db_ptr,
    L, E, G, NBLK, sx_b, sx_t, sdy_b, sdy_t,
    KSIZE: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_E: tl.constexpr, BLOCKS_PER_PROG: tl.constexpr,
):
    """Backward, pass 1: ``g = dy * SiLU'(pre)`` for ``BLOCKS_PER_PROG`` token blocks of one
    (group, channel block, batch row), and the parameter gradients' partial sums.

    Writes ``g [B, L, E]`` (float32, contiguous), each block's first ``K-1`` rows of ``g``
    again to ``halo [B, NBLK, K-1, E]`` (pass 2 may overwrite ``g`` in place), and this
    program's partial sums ``dw [B, G, K, E]``, ``db [B, G, E]``. The per-tap sums
    ``g * x[t-(K-1)+j]`` accumulate elementwise over the program's blocks (one accumulator
    per tap, up to ``MAX_WIDTH`` = 8) and are summed over tokens once at the end.
    """
    grp = tl.program_id(0)
    e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    bb = tl.program_id(2).to(tl.int64)
    e_mask = e < E
    x_row = x_ptr + bb * sx_b
    dy_row = dy_ptr + bb * sdy_b
    row = tl.arange(0, BLOCK_L)
    zero = tl.zeros((BLOCK_L, BLOCK_E), tl.float32)
    dw0, dw1, dw2, dw3, dw4, dw5, dw6, dw7 = zero, zero, zero, zero, zero, zero, zero, zero
    db_acc = zero
    for i in range(BLOCKS_PER_PROG):
        blk = grp * BLOCKS_PER_PROG + i
        t = blk * BLOCK_L + row
        mask = (t < L)[:, None] & e_mask[None, :]
        g = tl.load(dy_row + t.to(tl.int64)[:, None] * sdy_t + e[None, :], mask=mask,
                    other=0.0).to(tl.float32)
        if ACT:
            pre = _pre_act(x_row, w_ptr, b_ptr, t, e, e_mask, L, sx_t, KSIZE, HAS_BIAS)
            sig = tl.sigmoid(pre)
            g = g * sig * (1.0 + pre * (1.0 - sig))
        g = tl.where(mask, g, 0.0)
        off = (bb * L + t.to(tl.int64))[:, None] * E + e[None, :]
        tl.store(g_ptr + off, g, mask=mask)
        head = (bb * NBLK + blk) * (KSIZE - 1) + row
        tl.store(halo_ptr + head.to(tl.int64)[:, None] * E + e[None, :], g,
                 mask=mask & (row < KSIZE - 1)[:, None])
        # the taps' x rows were just read by _pre_act: these loads come from cache
        dw0 = _add_tap(dw0, g, x_row, t, e, e_mask, L, sx_t, 0, KSIZE)
        dw1 = _add_tap(dw1, g, x_row, t, e, e_mask, L, sx_t, 1, KSIZE)
        dw2 = _add_tap(dw2, g, x_row, t, e, e_mask, L, sx_t, 2, KSIZE)
        dw3 = _add_tap(dw3, g, x_row, t, e, e_mask, L, sx_t, 3, KSIZE)
        dw4 = _add_tap(dw4, g, x_row, t, e, e_mask, L, sx_t, 4, KSIZE)
        dw5 = _add_tap(dw5, g, x_row, t, e, e_mask, L, sx_t, 5, KSIZE)
        dw6 = _add_tap(dw6, g, x_row, t, e, e_mask, L, sx_t, 6, KSIZE)
        dw7 = _add_tap(dw7, g, x_row, t, e, e_mask, L, sx_t, 7, KSIZE)
        db_acc += g
    part = bb * G + grp
    _store_tap(dw_ptr, part, dw0, e, e_mask, E, 0, KSIZE)
    _store_tap(dw_ptr, part, dw1, e, e_mask, E, 1, KSIZE)
    _store_tap(dw_ptr, part, dw2, e, e_mask, E, 2, KSIZE)
    _store_tap(dw_ptr, part, dw3, e, e_mask, E, 3, KSIZE)
    _store_tap(dw_ptr, part, dw4, e, e_mask, E, 4, KSIZE)
    _store_tap(dw_ptr, part, dw5, e, e_mask, E, 5, KSIZE)
    _store_tap(dw_ptr, part, dw6, e, e_mask, E, 6, KSIZE)
    _store_tap(dw_ptr, part, dw7, e, e_mask, E, 7, KSIZE)
    tl.store(db_ptr + part * E + e, tl.sum(db_acc, axis=0), mask=e_mask)


@triton.jit
def _conv_dx_kernel(
    g_ptr, halo_ptr, w_ptr, dx_ptr, L, E, NBLK,
    KSIZE: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_E: tl.constexpr,
):
    """Backward, pass 2: ``dx[t] = sum_d w[K-1-d] g[t+d]`` for one (token block, channel
    block, batch row); rows of ``g`` past the block come from the following blocks' halos.

    ``dx`` may be ``g`` itself: every thread's loads finish (barrier) before any store, and
    no other program reads this block's rows of ``g``.
    """
    blk = tl.program_id(0)
    e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    bb = tl.program_id(2).to(tl.int64)
    e_mask = e < E
    t = blk * BLOCK_L + tl.arange(0, BLOCK_L)
    end = (blk + 1) * BLOCK_L
    dx = tl.zeros((BLOCK_L, BLOCK_E), tl.float32)
    for d in tl.static_range(KSIZE):
        s = t + d  # output token s reads x[t] through tap K-1-d
        m = (s < L)[:, None] & e_mask[None, :]
        own = (bb * L + s.to(tl.int64))[:, None] * E + e[None, :]
        gv = tl.load(g_ptr + own, mask=m & (s < end)[:, None], other=0.0)
        if d > 0:
            # a row past the block is row s % BL < K-1 of block s // BL (the next one, or
            # further ones when BL < K-1): all in the halo
            head = (bb * NBLK + s // BLOCK_L) * (KSIZE - 1) + s % BLOCK_L
            gv += tl.load(halo_ptr + head.to(tl.int64)[:, None] * E + e[None, :],
                          mask=m & (s >= end)[:, None], other=0.0)
        wv = tl.load(w_ptr + e * KSIZE + (KSIZE - 1 - d), mask=e_mask, other=0.0)
        dx += wv[None, :] * gv
    tl.debug_barrier()  # dx may overwrite g: all of this block's reads come first
    mask = (t < L)[:, None] & e_mask[None, :]
    off = (bb * L + t.to(tl.int64))[:, None] * E + e[None, :]
    tl.store(dx_ptr + off, dx.to(dx_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------- host side


def _bwd_groups(blocks: int, other_programs: int) -> tuple[int, int]:
    """Split ``blocks`` token blocks into groups; returns ``(groups, blocks_per_prog)``.

    Enough groups that about ``BWD_MIN_PROGRAMS`` programs run in all, as few as that
    allows (each group writes one row of the partial-sum buffers).
    """
    groups = min(blocks, max(1, triton.cdiv(LAUNCH.BWD_MIN_PROGRAMS, max(other_programs, 1))))
    per_prog = triton.cdiv(blocks, groups)
    return triton.cdiv(blocks, per_prog), per_prog


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> int:
    """Validate the arguments; returns the kernel width K."""
    for name, v in (("x", x), ("weight", weight), ("bias", bias)):
        if v is not None and not isinstance(v, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(v).__name__}")
    if x.device.type != "cuda" and not interpreting():
        raise ValueError(f"causal_conv1d_silu needs CUDA tensors (or TRITON_INTERPRET=1), "
                         f"got x on {x.device}")
    if x.ndim != 3:
        raise ValueError(f"x must be [B, L, E], got shape {tuple(x.shape)}")
    if x.dtype not in DTYPES:
        raise ValueError(f"x must be float32, bfloat16 or float16, got {x.dtype}")
    e = x.shape[2]
    if weight.ndim == 3 and weight.shape[1] == 1:
        k = weight.shape[2]
    elif weight.ndim == 2:
        k = weight.shape[1]
    else:
        raise ValueError(f"weight must be [E, K] or [E, 1, K], got shape {tuple(weight.shape)}")
    if weight.shape[0] != e:
        raise ValueError(f"weight must have E={e} rows (x's channels), got {tuple(weight.shape)}")
    if not 1 <= k <= MAX_WIDTH:
        raise ValueError(f"kernel width K must be in 1..{MAX_WIDTH}, got {k}")
    if bias is not None and bias.shape != (e,):
        raise ValueError(f"bias must be [E={e}], got shape {tuple(bias.shape)}")
    for name, v in (("weight", weight), ("bias", bias)):
        if v is None:
            continue
        if v.device != x.device:
            raise ValueError(f"{name} is on {v.device} but x is on {x.device}")
        if not v.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {v.dtype}")
    return k


class _CausalConv1dSilu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, activation):
        k = weight.shape[-1]
        e = x.shape[2]
        # fp32 parameters, [E, K] contiguous: what the kernels index (tiny copies)
        w32 = weight.detach().reshape(e, k).float().contiguous()
        b32 = None if bias is None else bias.detach().float().contiguous()
        y = _forward(x, w32, b32, activation)
        ctx.save_for_backward(x, w32, b32)
        ctx.activation = activation
        ctx.meta = (weight.shape, weight.dtype, None if bias is None else bias.dtype)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w32, b32 = ctx.saved_tensors
        dx, dw, db = _backward(x, w32, b32, unit_last(dy), ctx.activation)
        w_shape, w_dtype, b_dtype = ctx.meta
        need_x, need_w, need_b, _ = ctx.needs_input_grad
        return (
            dx if need_x else None,
            dw.reshape(w_shape).to(w_dtype) if need_w else None,
            db.to(b_dtype) if (need_b and db is not None) else None,
            None,
        )


def _forward(x: torch.Tensor, w32: torch.Tensor, b32: torch.Tensor | None,
             activation: bool) -> torch.Tensor:
    """Launch the forward kernel: ``x [B, L, E]`` -> contiguous ``y [B, L, E]`` (x's dtype)."""
    bsz, length, e = x.shape
    k = w32.shape[1]
    y = torch.empty(bsz, length, e, device=x.device, dtype=x.dtype)
    if y.numel() == 0:
        return y
    block_l = min(LAUNCH.FWD_BLOCK_L, pow2(length))
    block_e = min(LAUNCH.FWD_BLOCK_E, pow2(e))
    grid = (triton.cdiv(length, block_l), triton.cdiv(e, block_e), bsz)
    with on_device(x):
        _conv_fwd_kernel[grid](
            x, w32, b32 if b32 is not None else w32, y,
            length, e, x.stride(0), x.stride(1),
            KSIZE=k, HAS_BIAS=b32 is not None, ACT=bool(activation),
            BLOCK_L=block_l, BLOCK_E=block_e, num_warps=LAUNCH.FWD_WARPS,
        )
    return y


def _backward(x: torch.Tensor, w32: torch.Tensor, b32: torch.Tensor | None, dy: torch.Tensor,
              activation: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``dx [B, L, E]`` (x's dtype), ``dweight [E, K]`` and ``dbias [E]`` (float32)."""
    bsz, length, e = x.shape
    k = w32.shape[1]
    dx = torch.empty(bsz, length, e, device=x.device, dtype=x.dtype)
    if dx.numel() == 0:
        dw = torch.zeros_like(w32)
        return dx, dw, None if b32 is None else torch.zeros_like(b32)
    block_l = min(LAUNCH.BWD_BLOCK_L, pow2(length))
    block_e = min(LAUNCH.BWD_BLOCK_E, pow2(e))
    e_blocks = triton.cdiv(e, block_e)
    blocks = triton.cdiv(length, block_l)
    groups, per_prog = _bwd_groups(blocks, e_blocks * bsz)
    f32 = dict(device=x.device, dtype=torch.float32)
    # g in float32: in dx's own memory when x is float32 (pass 2 overwrites it in place)
    g = dx if x.dtype == torch.float32 else torch.empty(bsz, length, e, **f32)
    halo = torch.empty(bsz, blocks, max(k - 1, 1), e, **f32)
    dw_part = torch.empty(bsz, groups, k, e, **f32)
    db_part = torch.empty(bsz, groups, e, **f32)
    with on_device(x):
        _conv_grad_kernel[(groups, e_blocks, bsz)](
            x, w32, b32 if b32 is not None else w32, dy, g, halo, dw_part, db_part,
            length, e, groups, blocks, x.stride(0), x.stride(1), dy.stride(0), dy.stride(1),
            KSIZE=k, HAS_BIAS=b32 is not None, ACT=bool(activation),
            BLOCK_L=block_l, BLOCK_E=block_e, BLOCKS_PER_PROG=per_prog,
            num_warps=LAUNCH.BWD_WARPS,
        )
        _conv_dx_kernel[(blocks, e_blocks, bsz)](
            g, halo, w32, dx, length, e, blocks,
            KSIZE=k, BLOCK_L=block_l, BLOCK_E=block_e, num_warps=LAUNCH.DX_WARPS,
        )
    dw = dw_part.sum((0, 1)).t()  # [K, E] -> [E, K]
    db = None if b32 is None else db_part.sum((0, 1))
    return dx, dw, db


def causal_conv1d_silu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: bool = True,
) -> torch.Tensor:
    """``SiLU(causal depthwise conv1d(x))`` on token-major tensors, in one fused kernel.

    ``y[b, t, e] = SiLU(bias[e] + sum_j weight[e, j] * x[b, t - (K-1) + j, e])`` with zeros
    before the first token of each batch row; the same result as
    ``F.silu(Mamba.causal_conv(x))``.

    Args:
        x: ``[B, L, E]`` float32, bfloat16 or float16 on CUDA (or on the CPU under
            ``TRITON_INTERPRET=1``); any batch/token strides, unit channel stride (else
            copied).
        weight: ``[E, K]`` or ``[E, 1, K]`` (``nn.Conv1d(E, E, K, groups=E).weight``),
            ``1 <= K <= MAX_WIDTH``.
        bias: ``[E]`` or None.
        activation: apply SiLU (``False``: the plain convolution).

    Returns:
        Contiguous ``y [B, L, E]`` in ``x``'s dtype (float32 accumulation). Differentiable
        with respect to ``x``, ``weight`` and ``bias`` (gradients in their dtypes/shapes).

    Raises:
        ValueError: wrong shapes, dtypes or devices.
    """
    _check(x, weight, bias)
    return _CausalConv1dSilu.apply(unit_last(x), weight, bias, bool(activation))


__all__ = ["MAX_WIDTH", "causal_conv1d_silu"]
