"""Depthwise 3x3 / 3x3x3 convolution on channels-last feature maps in Triton (CUDA),
forward and backward.

The ResUpBlock's ``Conv(C, C, 3, padding=1, groups=C, bias=False)`` on ``x [B, C, *S]``
stored channels-last (``[B, *S, C]`` in memory)::

    y[b, v, c] = sum_k weight[c, k] * x[b, v + o_k, c]      (zero outside the map)

over the 9 (2D) or 27 (3D) taps ``k`` with spatial offsets ``o_k`` in ``{-1, 0, 1}``^d.
cuDNN runs this channels-last one group at a time and torch's own depthwise kernels want
the default layout (copies of the whole map there and back); here every pass reads and
writes channels-last directly:

- forward: a program owns ``BLOCK_W`` voxels of one row (fixed ``b, d, h``) x ``BLOCK_C``
  channels and sums the 9/27 shifted tiles (unit-stride channels: coalesced, the shifted
  tiles overlap and come from cache);
- input gradient: the same kernel with the taps reversed, ``dx[v] = sum_k w[k] g[v - o_k]``;
- weight gradient: a program walks ``ROWS_PER_PROG`` rows of one (W block, channel block),
  accumulates ``g * x[v + o_k]`` for all taps elementwise (a ``[32, BLOCK_W, BLOCK_C]``
  tile, taps first), sums over its voxels once at the end and writes its partial sums
  ``[groups, 32, C]`` (float32) that torch adds up: deterministic, no atomics.

All math is float32 whatever the input dtype. Launch constants: ``ops/launch.py``'s ``DWConv``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from napari_lightm.model.ops._host import DTYPES, interpreting, on_device
from napari_lightm.model.ops.launch import DWConv as LAUNCH

TAPS_P2 = 32  # taps padded to a power of two (27 or 9 used)


@triton.jit
def _dw_apply_kernel(
    x_ptr, w_ptr, y_ptr, D, H, W, C,
    KD: tl.constexpr, BW: tl.constexpr, BC: tl.constexpr,
):
    """``y`` for one (row ``b, d, h``, W block, channel block); ``w [C, KD*9]`` float32."""
    row = tl.program_id(0)
    w = tl.program_id(1) * BW + tl.arange(0, BW)
    c = tl.program_id(2) * BC + tl.arange(0, BC)
    h = row % H
    d = (row // H) % D
    b = row // (H * D)
    c_mask = c < C
    acc = tl.zeros((BW, BC), tl.float32)
    for kd in tl.static_range(KD):
        dd = d + kd - KD // 2
        for kh in tl.static_range(3):
            hh = h + kh - 1
            ok = (dd >= 0) & (dd < D) & (hh >= 0) & (hh < H)
            base = ((b * D + dd) * H + hh).to(tl.int64) * W
            for kw in tl.static_range(3):
                ww = w + kw - 1
                m = ((ww >= 0) & (ww < W))[:, None] & c_mask[None, :]
                # a row outside the map (scalar) enters the mask through tl.where
                m = tl.where(ok, m, False)
                xv = tl.load(x_ptr + (base + ww)[:, None] * C + c[None, :], mask=m, other=0.0)
                wv = tl.load(w_ptr + c * (KD * 9) + (kd * 9 + kh * 3 + kw), mask=c_mask,
                             other=0.0)
                acc += wv[None, :] * xv.to(tl.float32)
    out = (row.to(tl.int64) * W + w)[:, None] * C + c[None, :]
    tl.store(y_ptr + out, acc.to(y_ptr.dtype.element_ty),
             mask=(w < W)[:, None] & c_mask[None, :])


@triton.jit
def _dw_wgrad_kernel(
    x_ptr, g_ptr, part_ptr, D, H, W, C, ROWS, ROWS_PER_PROG,
    KD: tl.constexpr, BW: tl.constexpr, BC: tl.constexpr, TP: tl.constexpr,
):
    """Partial ``dweight [TP, C]`` of ``ROWS_PER_PROG`` rows x one (W block, channel block):
    ``sum_v g[v] * x[v + o_k]`` per tap ``k``, written to ``part[group, w block]``."""
    grp = tl.program_id(0)
    wb = tl.program_id(1)
    w = wb * BW + tl.arange(0, BW)
    c = tl.program_id(2) * BC + tl.arange(0, BC)
    c_mask = c < C
    k = tl.arange(0, TP)
    kd = k // 9
    kh = (k // 3) % 3
    kw = k % 3
    k_ok = k < KD * 9
    ww = w[None, :] + kw[:, None] - 1  # [TP, BW]
    w_ok = (ww >= 0) & (ww < W) & k_ok[:, None]
    acc = tl.zeros((TP, BW, BC), tl.float32)
    for i in range(ROWS_PER_PROG):
        row = grp * ROWS_PER_PROG + i
        h = row % H
        d = (row // H) % D
        b = row // (H * D)
        dd = d + kd - KD // 2  # [TP]
        hh = h + kh - 1
        # (a scalar condition enters a mask through tl.where: the interpreter rejects `&`)
        row_ok = tl.where(row < ROWS, (dd >= 0) & (dd < D) & (hh >= 0) & (hh < H), False)
        src = ((b * D + dd) * H + hh).to(tl.int64)[:, None] * W + ww  # [TP, BW] voxels
        m = (row_ok[:, None] & w_ok)[:, :, None] & c_mask[None, None, :]
        xv = tl.load(x_ptr + src[:, :, None] * C + c[None, None, :], mask=m, other=0.0)
        gm = tl.where(row < ROWS, (w < W)[:, None] & c_mask[None, :], False)
        gv = tl.load(g_ptr + (row.to(tl.int64) * W + w)[:, None] * C + c[None, :], mask=gm,
                     other=0.0)
        acc += gv.to(tl.float32)[None, :, :] * xv.to(tl.float32)
    part = (grp * tl.num_programs(1) + wb).to(tl.int64)
    tl.store(part_ptr + (part * TP + k)[:, None] * C + c[None, :], tl.sum(acc, axis=1),
             mask=k_ok[:, None] & c_mask[None, :])


# ---------------------------------------------------------------- host side


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x [B, C, *S]`` with channels-last memory (a copy only when it is not already)."""
    fmt = torch.channels_last if x.ndim == 4 else torch.channels_last_3d
    return x.contiguous(memory_format=fmt)


def _dims(x: torch.Tensor) -> tuple[int, int, int, int, int]:
    """``(B, D, H, W, C)`` of a 2D (``D = 1``) or 3D map."""
    if x.ndim == 4:
        b, c, h, w = x.shape
        return b, 1, h, w, c
    b, c, d, h, w = x.shape
    return b, d, h, w, c


def _apply(x: torch.Tensor, w_taps: torch.Tensor, kd: int) -> torch.Tensor:
    """The forward kernel on channels-last ``x``: a channels-last map like ``x``."""
    b, d, h, w, c = _dims(x)
    y = torch.empty_like(x)  # keeps x's (channels-last) memory format
    if y.numel() == 0:
        return y
    bw = min(LAUNCH.BLOCK_W, triton.next_power_of_2(w))
    bc = min(LAUNCH.BLOCK_C, triton.next_power_of_2(c))
    grid = (b * d * h, triton.cdiv(w, bw), triton.cdiv(c, bc))
    with on_device(x):
        _dw_apply_kernel[grid](x, w_taps, y, d, h, w, c, KD=kd, BW=bw, BC=bc,
                               num_warps=LAUNCH.WARPS)
    return y


def _weight_grad(x: torch.Tensor, g: torch.Tensor, kd: int) -> torch.Tensor:
    """``dweight [C, KD*9]`` (float32) from channels-last ``x`` and ``g``."""
    b, d, h, w, c = _dims(x)
    taps = kd * 9
    if x.numel() == 0:
        return torch.zeros(c, taps, device=x.device, dtype=torch.float32)
    bw = min(LAUNCH.WGRAD_BLOCK_W, triton.next_power_of_2(w))
    bc = min(LAUNCH.BLOCK_C, triton.next_power_of_2(c))
    rows = b * d * h
    others = triton.cdiv(w, bw) * triton.cdiv(c, bc)
    groups = min(rows, max(1, triton.cdiv(LAUNCH.WGRAD_MIN_PROGRAMS, others)))
    per_prog = triton.cdiv(rows, groups)
    groups = triton.cdiv(rows, per_prog)
    part = torch.empty(groups, triton.cdiv(w, bw), TAPS_P2, c, device=x.device,
                       dtype=torch.float32)
    with on_device(x):
        _dw_wgrad_kernel[(groups, triton.cdiv(w, bw), triton.cdiv(c, bc))](
            x, g, part, d, h, w, c, rows, per_prog,
            KD=kd, BW=bw, BC=bc, TP=TAPS_P2, num_warps=LAUNCH.WGRAD_WARPS,
        )
    return part.sum((0, 1))[:taps].t()  # [C, taps]


class _DepthwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight):
        kd = 1 if x.ndim == 4 else 3
        w_taps = weight.detach().reshape(weight.shape[0], -1).float().contiguous()  # [C, taps]
        ctx.save_for_backward(x, w_taps)
        ctx.kd, ctx.w_meta = kd, (weight.shape, weight.dtype)
        return _apply(x, w_taps, kd)

    @staticmethod
    def backward(ctx, g):
        x, w_taps = ctx.saved_tensors
        g = _channels_last(g)
        dx = dw = None
        if ctx.needs_input_grad[0]:
            # dx[v] = sum_k w[k] g[v - o_k]: the forward with the taps reversed
            dx = _apply(g, w_taps.flip(1).contiguous(), ctx.kd).to(x.dtype)
        if ctx.needs_input_grad[1]:
            shape, dtype = ctx.w_meta
            dw = _weight_grad(x, g, ctx.kd).reshape(shape).to(dtype)
        return dx, dw


def is_supported(conv: torch.nn.Module) -> bool:
    """True for the convolution this module computes: depthwise, 3x3 (2D) or 3x3x3 (3D),
    stride 1, padding 1, dilation 1, no bias, zero padding."""
    return (isinstance(conv, (torch.nn.Conv2d, torch.nn.Conv3d))
            and conv.groups == conv.in_channels == conv.out_channels
            and all(k == 3 for k in conv.kernel_size)
            and all(s == 1 for s in conv.stride)
            and all(p == 1 for p in conv.padding)
            and all(dl == 1 for dl in conv.dilation)
            and conv.bias is None and conv.padding_mode == "zeros")


def depthwise_conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``conv(x, weight, padding=1, groups=C)`` for a depthwise 3x3 / 3x3x3 ``weight``
    ``[C, 1, 3, 3(, 3)]``, computed on channels-last memory.

    Args:
        x: ``[B, C, H, W]`` or ``[B, C, D, H, W]`` float32/bfloat16/float16 on CUDA (or on the
            CPU under ``TRITON_INTERPRET=1``); copied to channels-last memory if it is not.

    Returns:
        ``y`` like ``x`` (channels-last memory, ``x``'s dtype; float32 accumulation).
        Differentiable with respect to ``x`` and ``weight``.

    Raises:
        ValueError: wrong shapes, dtypes or devices.
    """
    if x.device.type != "cuda" and not interpreting():
        raise ValueError(f"depthwise_conv needs CUDA tensors (or TRITON_INTERPRET=1), got "
                         f"x on {x.device}")
    if x.ndim not in (4, 5):
        raise ValueError(f"x must be [B, C, H, W] or [B, C, D, H, W], got {tuple(x.shape)}")
    if x.dtype not in DTYPES:
        raise ValueError(f"x must be float32, bfloat16 or float16, got {x.dtype}")
    want = (x.shape[1], 1) + (3,) * (x.ndim - 2)
    if tuple(weight.shape) != want:
        raise ValueError(f"weight must be {list(want)} (depthwise, 3 per spatial axis), got "
                         f"{list(weight.shape)}")
    if weight.device != x.device:
        raise ValueError(f"weight is on {weight.device} but x is on {x.device}")
    return _DepthwiseConv.apply(_channels_last(x), weight)


__all__ = ["depthwise_conv", "is_supported"]
