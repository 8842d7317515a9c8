"""Fused GroupNorm + ReLU in Triton (CUDA), forward and backward.

:func:`group_norm_relu`: ``ReLU(GroupNorm(x))`` on feature maps ``[B, C, *S]`` in any memory
layout; the result is channels-last memory (a contiguous ``[B, L, C]`` underneath, so the
RVM layer's token view of it is free).

torch's kernel runs one thread block per (sample, group), i.e. 8 blocks for millions of
voxels. Here the statistics are a two-stage reduction:

1. ``_gn_stats_kernel`` (grid: token blocks x batch) writes, per (block, group), the block
   mean and ``M2`` (sum of squared deviations from the *block* mean); counts are known on
   the host.
2. torch combines the ``[B, K, G]`` partials with Chan et al.'s parallel formula
   ``M2 = sum_k M2_k + sum_k n_k (mean_k - mean)^2``, which stays exact when
   ``|mean| >> std`` (a sum / sum-of-squares pass loses everything there in float32).

``_gn_apply_kernel`` then writes ``relu((x - mean) * rstd * gamma + beta)``. Backward: with
``dz = dy * [z > 0]`` (``z`` recomputed with the forward's formula, so the ReLU mask is
the same) one kernel writes per-(block, channel) partials of ``sum dz`` and
``sum dz * xhat``: torch turns them into ``dbeta``, ``dgamma`` and the per-(sample, group)
means that ``dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))`` needs
(``dxhat = dz * gamma``), and one apply kernel writes ``dx``.

All statistics and arithmetic are float32 whatever the input dtype (float32, bfloat16,
float16); outputs take the input dtype, parameter gradients the parameters' dtypes.
Inputs may have any strides, the channel stride too. Launch constants: ``ops/launch.py``'s
``Norms``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from napari_lightm.model.ops._host import pow2
from napari_lightm.model.ops.launch import Norms as LAUNCH
from napari_lightm.model.ops.norms import _common as common


@triton.jit
def _gn_tile(x_ptr, k, b, L, C, sx_b, sx_t, sx_c,
             BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """Token block ``k`` of sample ``b``: float32 tile ``[BT, BC]``, mask, tokens, channels."""
    tok = k * BLOCK_T + tl.arange(0, BLOCK_T)
    c = tl.arange(0, BLOCK_C)
    mask = (tok < L)[:, None] & (c < C)[None, :]
    off = b * sx_b + tok.to(tl.int64)[:, None] * sx_t + c.to(tl.int64)[None, :] * sx_c
    x = tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)
    return x, mask, tok, c


@triton.jit
def _gn_stats_kernel(
    x_ptr, mean_ptr, m2_ptr,
    L, C, G, CPG, K,
    sx_b, sx_t, sx_c,
    BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_G: tl.constexpr,
):
    """Per (sample, token block, group): block mean and ``M2`` -> ``[B, K, G]`` each."""
    k = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    x, mask, _, c = _gn_tile(x_ptr, k, b, L, C, sx_b, sx_t, sx_c, BLOCK_T, BLOCK_C)
    g = tl.arange(0, BLOCK_G)
    # channel -> group one-hot [BC, BG]: group sums of per-channel column sums
    onehot = ((c // CPG)[:, None] == g[None, :]) & (c < C)[:, None]
    count = (tl.minimum(L - k * BLOCK_T, BLOCK_T) * CPG).to(tl.float32)
    g_mean = tl.sum(tl.where(onehot, tl.sum(x, axis=0)[:, None], 0.0), axis=0) / count
    c_mean = tl.sum(tl.where(onehot, g_mean[None, :], 0.0), axis=1)  # [BC]
    d = tl.where(mask, x - c_mean[None, :], 0.0)
    g_m2 = tl.sum(tl.where(onehot, tl.sum(d * d, axis=0)[:, None], 0.0), axis=0)
    out = (b * K + k) * G + g
    tl.store(mean_ptr + out, g_mean, mask=g < G)
    tl.store(m2_ptr + out, g_m2, mask=g < G)


@triton.jit
def _gn_pre(x, mask, c, b, C, mean_ptr, a_ptr, beta_ptr):
    """``z = (x - mean) * a + beta`` with per-(sample, channel) ``mean``, ``a = rstd * gamma``
    (``[B, C]``) and ``beta [C]``; also returns ``x - mean``. The same formula in forward and
    backward gives the same ReLU mask."""
    c_mask = c < C
    m = tl.load(mean_ptr + b * C + c, mask=c_mask, other=0.0)
    a = tl.load(a_ptr + b * C + c, mask=c_mask, other=0.0)
    beta = tl.load(beta_ptr + c, mask=c_mask, other=0.0)
    xc = tl.where(mask, x - m[None, :], 0.0)
    return xc * a[None, :] + beta[None, :], xc


@triton.jit
def _gn_apply_kernel(
    x_ptr, y_ptr, mean_ptr, a_ptr, beta_ptr,
    L, C, sx_b, sx_t, sx_c,
    RELU: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """``y = relu((x - mean) * a + beta)`` into contiguous ``y [B, L, C]``."""
    k = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    x, mask, tok, c = _gn_tile(x_ptr, k, b, L, C, sx_b, sx_t, sx_c, BLOCK_T, BLOCK_C)
    z, _ = _gn_pre(x, mask, c, b, C, mean_ptr, a_ptr, beta_ptr)
    if RELU:
        z = tl.where(z < 0.0, 0.0, z)
    tl.store(y_ptr + (b * L + tok.to(tl.int64))[:, None] * C + c[None, :], z, mask=mask)


@triton.jit
def _gn_dz(x_ptr, dy_ptr, k, b, L, C, sx_b, sx_t, sx_c, sdy_b, sdy_t, sdy_c,
           mean_ptr, a_ptr, beta_ptr, RELU: tl.constexpr,
           BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """``dz = dy * [z > 0]`` and ``x - mean`` of a tile, plus its mask, tokens, channels."""
    x, mask, tok, c = _gn_tile(x_ptr, k, b, L, C, sx_b, sx_t, sx_c, BLOCK_T, BLOCK_C)
    dy, _, _, _ = _gn_tile(dy_ptr, k, b, L, C, sdy_b, sdy_t, sdy_c, BLOCK_T, BLOCK_C)
    z, xc = _gn_pre(x, mask, c, b, C, mean_ptr, a_ptr, beta_ptr)
    if RELU:
        dy = tl.where(z > 0.0, dy, 0.0)
    return dy, xc, mask, tok, c


@triton.jit
def _gn_bwd_stats_kernel(
    x_ptr, dy_ptr, mean_ptr, a_ptr, beta_ptr, rstd_ptr, p1_ptr, p2_ptr,
    L, C, K,
    sx_b, sx_t, sx_c, sdy_b, sdy_t, sdy_c,
    RELU: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Per (sample, token block, channel): ``sum dz`` and ``sum dz * xhat`` -> ``[B, K, C]``."""
    k = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    dz, xc, _, _, c = _gn_dz(x_ptr, dy_ptr, k, b, L, C, sx_b, sx_t, sx_c, sdy_b, sdy_t, sdy_c,
                             mean_ptr, a_ptr, beta_ptr, RELU, BLOCK_T, BLOCK_C)
    c_mask = c < C
    rstd = tl.load(rstd_ptr + b * C + c, mask=c_mask, other=0.0)
    out = (b * K + k) * C + c
    tl.store(p1_ptr + out, tl.sum(dz, axis=0), mask=c_mask)
    tl.store(p2_ptr + out, tl.sum(dz * xc, axis=0) * rstd, mask=c_mask)


@triton.jit
def _gn_bwd_apply_kernel(
    x_ptr, dy_ptr, mean_ptr, a_ptr, beta_ptr, rstd_ptr, k2_ptr, k3_ptr, dx_ptr,
    L, C,
    sx_b, sx_t, sx_c, sdy_b, sdy_t, sdy_c,
    RELU: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """``dx = dz * a + xhat * k2 + k3`` (``a = rstd * gamma``; ``k2, k3 [B, C]``) into
    contiguous ``dx [B, L, C]``."""
    k = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    dz, xc, mask, tok, c = _gn_dz(x_ptr, dy_ptr, k, b, L, C, sx_b, sx_t, sx_c,
                                  sdy_b, sdy_t, sdy_c, mean_ptr, a_ptr, beta_ptr, RELU,
                                  BLOCK_T, BLOCK_C)
    c_mask = c < C
    bc = b * C + c
    a = tl.load(a_ptr + bc, mask=c_mask, other=0.0)
    rstd = tl.load(rstd_ptr + bc, mask=c_mask, other=0.0)
    k2 = tl.load(k2_ptr + bc, mask=c_mask, other=0.0)
    k3 = tl.load(k3_ptr + bc, mask=c_mask, other=0.0)
    dx = dz * a[None, :] + (xc * rstd[None, :]) * k2[None, :] + k3[None, :]
    tl.store(dx_ptr + (b * L + tok.to(tl.int64))[:, None] * C + c[None, :], dx, mask=mask)


# ---------------------------------------------------------------- host side


def _gn_launch(L: int, c: int, bsz: int) -> tuple[int, int, tuple[int, int]]:
    block_c = pow2(c)
    block_t = common.block_rows(LAUNCH.GN_TILE, block_c, L)
    return block_t, block_c, (triton.cdiv(L, block_t), bsz)


def _strides3(x: torch.Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


class _GroupNormReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, num_groups, weight, bias, eps, relu):
        bsz, L, c = x.shape
        g = num_groups
        cpg = c // g
        block_t, block_c, grid = _gn_launch(L, c, bsz)
        k = grid[0]
        f32 = dict(device=x.device, dtype=torch.float32)
        mean_k = torch.empty(bsz, k, g, **f32)
        m2_k = torch.empty(bsz, k, g, **f32)
        _gn_stats_kernel[grid](
            x, mean_k, m2_k, L, c, g, cpg, k, *_strides3(x),
            BLOCK_T=block_t, BLOCK_C=block_c, BLOCK_G=pow2(g), num_warps=LAUNCH.GN_STATS_WARPS,
        )
        # Chan et al.: combine the block (count, mean, M2) triples into per-(sample, group)
        # statistics; deviations are taken from the final mean, so nothing cancels
        counts = (L - torch.arange(k, **f32) * block_t).clamp(max=block_t) * cpg  # [K]
        n = float(L * cpg)
        mean = (mean_k * counts[:, None]).sum(1) / n  # [B, G]
        m2 = m2_k.sum(1) + ((mean_k - mean[:, None]) ** 2 * counts[:, None]).sum(1)
        rstd = torch.rsqrt(m2 / n + eps)
        mean_c = mean.repeat_interleave(cpg, dim=1).contiguous()  # [B, C]
        rstd_c = rstd.repeat_interleave(cpg, dim=1).contiguous()
        w32 = common.f32_param(weight)
        a_c = (rstd_c * w32 if w32 is not None else rstd_c).contiguous()
        beta = common.f32_param(bias) if bias is not None else torch.zeros(c, **f32)
        y = torch.empty(bsz, L, c, device=x.device, dtype=x.dtype)
        _gn_apply_kernel[grid](
            x, y, mean_c, a_c, beta, L, c, *_strides3(x),
            RELU=relu, BLOCK_T=block_t, BLOCK_C=block_c, num_warps=LAUNCH.GN_APPLY_WARPS,
        )
        ctx.save_for_backward(x, mean_c, rstd_c, a_c, beta, w32)
        ctx.params = (weight, bias)
        ctx.relu, ctx.groups = relu, g
        return y

    @staticmethod
    @once_differentiable  # the Triton backward records no graph of its own
    def backward(ctx, dy):
        x, mean_c, rstd_c, a_c, beta, w32 = ctx.saved_tensors
        weight, bias = ctx.params
        bsz, L, c = x.shape
        g = ctx.groups
        cpg = c // g
        block_t, block_c, grid = _gn_launch(L, c, bsz)
        k = grid[0]
        f32 = dict(device=x.device, dtype=torch.float32)
        p1 = torch.empty(bsz, k, c, **f32)  # sum dz
        p2 = torch.empty(bsz, k, c, **f32)  # sum dz * xhat
        _gn_bwd_stats_kernel[grid](
            x, dy, mean_c, a_c, beta, rstd_c, p1, p2, L, c, k, *_strides3(x), *_strides3(dy),
            RELU=ctx.relu, BLOCK_T=block_t, BLOCK_C=block_c, num_warps=LAUNCH.GN_STATS_WARPS,
        )
        s1, s2 = p1.sum(1), p2.sum(1)  # [B, C]
        need = ctx.needs_input_grad
        dx = None
        if need[0]:
            gam = w32 if w32 is not None else torch.ones(c, **f32)
            n = float(L * cpg)
            # group means of dxhat = dz * gamma and of dxhat * xhat, back on channels
            m1 = (s1 * gam).reshape(bsz, g, cpg).sum(-1).repeat_interleave(cpg, dim=1) / n
            m2 = (s2 * gam).reshape(bsz, g, cpg).sum(-1).repeat_interleave(cpg, dim=1) / n
            k2 = (-rstd_c * m2).contiguous()
            k3 = (-rstd_c * m1).contiguous()
            dx = torch.empty(bsz, L, c, device=x.device, dtype=x.dtype)
            _gn_bwd_apply_kernel[grid](
                x, dy, mean_c, a_c, beta, rstd_c, k2, k3, dx, L, c,
                *_strides3(x), *_strides3(dy),
                RELU=ctx.relu, BLOCK_T=block_t, BLOCK_C=block_c, num_warps=LAUNCH.GN_APPLY_WARPS,
            )
        return (dx, None, common.param_grad(s2.sum(0), weight, need[2]),
                common.param_grad(s1.sum(0), bias, need[3]), None, None)


def group_norm_relu(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float = 1e-5,
    relu: bool = True,
) -> torch.Tensor:
    """``ReLU(F.group_norm(x, num_groups, weight, bias, eps))`` (``relu=False``: no ReLU).

    Args:
        x: ``[B, C, *S]`` (``S`` 2D or 3D spatial; 1D works too), float32, bfloat16 or
            float16, in any memory layout: NC(D)HW-contiguous, channels-last, or the
            channels-last view an RVM layer returns. The kernels read the token view
            ``movedim(x, 1, -1).reshape(B, L, C)`` with its strides (a view for all of
            these layouts; others are copied once by ``reshape``).
        num_groups: ``G``; ``C`` must be divisible by it.
        weight, bias: ``[C]`` or None.
        eps: added to the variance.

    Returns:
        ``y [B, C, *S]`` in ``x``'s dtype with channels-last memory: a contiguous
        ``[B, L, C]`` tensor underneath (``movedim(y, 1, -1).reshape(B, L, C)`` is a free
        view). Statistics are float32 (two-stage, Chan-combined). Differentiable with
        respect to ``x``, ``weight`` and ``bias``.
    """
    common.check_device_dtype("x", x)
    if x.ndim < 3:
        raise ValueError(f"x must be [B, C, *spatial], got shape {tuple(x.shape)}")
    bsz, c, *spatial = x.shape
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
        raise ValueError(f"num_groups must be a positive int, got {num_groups!r}")
    if c % num_groups:
        raise ValueError(f"channels C={c} must be divisible by num_groups={num_groups}")
    common.check_channels(c)
    common.check_param("weight", weight, c, x.device)
    common.check_param("bias", bias, c, x.device)
    if x.numel() == 0:
        raise ValueError(f"x is empty: {tuple(x.shape)}")
    if bsz > 65535:
        raise ValueError(f"batch size {bsz} exceeds the launch grid's limit of 65535")
    tokens = torch.movedim(x, 1, -1).reshape(bsz, -1, c)  # [B, L, C]
    y = _GroupNormReLU.apply(tokens, num_groups, weight, bias, float(eps), bool(relu))
    return torch.movedim(y.reshape(bsz, *spatial, c), -1, 1)


__all__ = ["group_norm_relu"]
