"""Fused LayerNorms in Triton (CUDA), forward and backward.

- :func:`layer_norm`: LayerNorm over the channels of tokens ``x [..., C]``.
- :func:`residual_layer_norm`: ``LN(a + scale * t)``, the RVM layer's second norm
  (``h = Mamba(LN(t)) + s * t; out = Linear(LN(h))``) without materialising ``h``.

A program owns ``BLOCK_T`` rows x all ``C`` channels (C is small, 16..512), so each row's
statistics are two register reductions over the tile (``mean``, then the sum of squared
deviations from it: no one-pass ``E[x^2] - E[x]^2`` cancellation). Forward saves
``mean, rstd [rows]`` (float32); backward recomputes ``xhat`` (and ``h`` for the residual
form) from the inputs. Backward programs walk several row tiles and write
``dweight``/``dbias``/``dscale`` as per-program partial sums ``[programs, C]`` that torch
adds (deterministic, no atomics).

All statistics and arithmetic are float32 whatever the input dtype (float32, bfloat16,
float16); outputs take the input dtype, parameter gradients the parameters' dtypes.
Inputs may have any batch/token strides and need a unit channel stride (other layouts are
copied first). Launch constants: ``ops/launch.py``'s ``Norms``.
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
def _ln_rows(a_ptr, t_ptr, s_ptr, r, c, R, L, C,
             sa_b, sa_t, st_b, st_t, RESIDUAL: tl.constexpr):
    """The float32 tile ``x [BT, BC]`` of rows ``r`` (``a + s * t`` if residual), its mask,
    ``t`` (residual only) and the row validity ``[BT]``.

    Row ``r`` of the flattened ``[B, L, C]`` input is token ``r % L`` of batch ``r // L``.
    """
    r_mask = r < R
    mask = r_mask[:, None] & (c < C)[None, :]
    r64 = r.to(tl.int64)
    bi = r64 // L
    li = r64 - bi * L
    x = tl.load(a_ptr + (bi * sa_b + li * sa_t)[:, None] + c[None, :], mask=mask,
                other=0.0).to(tl.float32)
    t = x
    if RESIDUAL:
        s = tl.load(s_ptr).to(tl.float32)
        t = tl.load(t_ptr + (bi * st_b + li * st_t)[:, None] + c[None, :], mask=mask,
                    other=0.0).to(tl.float32)
        x = x + s * t
    return x, t, mask, r_mask


@triton.jit
def _ln_fwd_kernel(
    a_ptr, t_ptr, s_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, rstd_ptr,
    R, L, C, eps,
    sa_b, sa_t, st_b, st_t,
    RESIDUAL: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """``y = LN(x)`` for ``BLOCK_T`` rows; writes ``y [R, C]`` (contiguous), ``mean, rstd [R]``."""
    r = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    c = tl.arange(0, BLOCK_C)
    c_mask = c < C
    x, _, mask, r_mask = _ln_rows(a_ptr, t_ptr, s_ptr, r, c, R, L, C,
                                  sa_b, sa_t, st_b, st_t, RESIDUAL)
    mean = tl.sum(x, axis=1) / C
    xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = tl.rsqrt(tl.sum(xc * xc, axis=1) / C + eps)
    y = xc * rstd[:, None]
    if HAS_W:
        y = y * tl.load(w_ptr + c, mask=c_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        y = y + tl.load(b_ptr + c, mask=c_mask, other=0.0).to(tl.float32)[None, :]
    r64 = r.to(tl.int64)
    tl.store(y_ptr + r64[:, None] * C + c[None, :], y, mask=mask)
    tl.store(mean_ptr + r64, mean, mask=r_mask)
    tl.store(rstd_ptr + r64, rstd, mask=r_mask)


@triton.jit
def _ln_bwd_kernel(
    a_ptr, t_ptr, s_ptr, w_ptr, dy_ptr, mean_ptr, rstd_ptr,
    da_ptr, dt_ptr, dw_ptr, db_ptr, ds_ptr,
    R, L, C, tiles_per_prog,
    sa_b, sa_t, st_b, st_t, sdy_b, sdy_t,
    RESIDUAL: tl.constexpr, HAS_W: tl.constexpr, WRITE_DA: tl.constexpr,
    WRITE_DT: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Gradients of ``tiles_per_prog`` consecutive row tiles.

    ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))`` per row with ``g = dy * w``;
    writes ``da = dx`` and ``dt = s * dx`` (``[R, C]``, contiguous) and this program's row of
    the partials ``dw = sum dy * xhat``, ``db = sum dy`` (``[P, C]``), ``ds = sum dx * t``
    (``[P]``).
    """
    pid = tl.program_id(0)
    c = tl.arange(0, BLOCK_C)
    c_mask = c < C
    if HAS_W:
        w = tl.load(w_ptr + c, mask=c_mask, other=0.0).to(tl.float32)
    else:
        w = tl.where(c_mask, 1.0, 0.0)
    s = 0.0
    if RESIDUAL:
        s = tl.load(s_ptr).to(tl.float32)
    acc_dw = tl.zeros((BLOCK_C,), tl.float32)
    acc_db = tl.zeros((BLOCK_C,), tl.float32)
    acc_ds = tl.zeros((BLOCK_C,), tl.float32)
    for i in range(tiles_per_prog):
        r = (pid * tiles_per_prog + i) * BLOCK_T + tl.arange(0, BLOCK_T)
        x, t, mask, r_mask = _ln_rows(a_ptr, t_ptr, s_ptr, r, c, R, L, C,
                                      sa_b, sa_t, st_b, st_t, RESIDUAL)
        r64 = r.to(tl.int64)
        mean = tl.load(mean_ptr + r64, mask=r_mask, other=0.0)
        rstd = tl.load(rstd_ptr + r64, mask=r_mask, other=0.0)
        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        bi = r64 // L
        li = r64 - bi * L
        dy = tl.load(dy_ptr + (bi * sdy_b + li * sdy_t)[:, None] + c[None, :], mask=mask,
                     other=0.0).to(tl.float32)
        g = dy * w[None, :]
        c1 = tl.sum(g * xhat, axis=1) / C
        c2 = tl.sum(g, axis=1) / C
        dx = (g - xhat * c1[:, None] - c2[:, None]) * rstd[:, None]
        acc_dw += tl.sum(dy * xhat, axis=0)
        acc_db += tl.sum(dy, axis=0)
        out = r64[:, None] * C + c[None, :]
        if WRITE_DA:
            tl.store(da_ptr + out, dx, mask=mask)
        if RESIDUAL:
            acc_ds += tl.sum(dx * t, axis=0)
            if WRITE_DT:
                tl.store(dt_ptr + out, dx * s, mask=mask)
    tl.store(dw_ptr + pid * C + c, acc_dw, mask=c_mask)
    tl.store(db_ptr + pid * C + c, acc_db, mask=c_mask)
    if RESIDUAL:
        tl.store(ds_ptr + pid, tl.sum(acc_ds, axis=0))


# ---------------------------------------------------------------- host side


def _as_tokens(x: torch.Tensor) -> torch.Tensor:
    """``x [..., C]`` as ``[B, L, C]`` with a unit channel stride (a view when possible)."""
    c = x.shape[-1]
    if x.ndim == 1:
        x = x.reshape(1, 1, c)
    elif x.ndim == 2:
        x = x.unsqueeze(0)
    elif x.ndim > 3:
        x = x.reshape(-1, x.shape[-2], c)
    return x if x.stride(-1) == 1 or c == 1 else x.contiguous()


def _ln_forward(a, t, scale, w32, b32, eps):
    """Launch the LayerNorm forward on ``[B, L, C]`` inputs; returns ``y, mean, rstd``."""
    bsz, length, c = a.shape
    rows = bsz * length
    block_c = pow2(c)
    block_t = common.block_rows(LAUNCH.LN_FWD_TILE, block_c, rows)
    dtype = a.dtype if t is None else torch.promote_types(a.dtype, t.dtype)
    y = torch.empty(bsz, length, c, device=a.device, dtype=dtype)
    mean = torch.empty(rows, device=a.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    dummy = mean  # placeholder pointer for absent optional tensors
    st = (0, 0) if t is None else (t.stride(0), t.stride(1))
    _ln_fwd_kernel[(triton.cdiv(rows, block_t),)](
        a, a if t is None else t, dummy if scale is None else scale,
        dummy if w32 is None else w32, dummy if b32 is None else b32, y, mean, rstd,
        rows, length, c, float(eps), a.stride(0), a.stride(1), *st,
        RESIDUAL=t is not None, HAS_W=w32 is not None, HAS_B=b32 is not None,
        BLOCK_T=block_t, BLOCK_C=block_c, num_warps=LAUNCH.LN_FWD_WARPS,
    )
    return y, mean, rstd


def _ln_backward(a, t, scale, w32, dy, mean, rstd, write_da, write_dt):
    """Launch the LayerNorm backward; returns ``da, dt, dw, db, ds`` (None where not asked)."""
    bsz, length, c = a.shape
    rows = bsz * length
    block_c = pow2(c)
    block_t = common.block_rows(LAUNCH.LN_BWD_TILE, block_c, rows)
    tiles = triton.cdiv(rows, block_t)
    programs = min(tiles, max(1, int(LAUNCH.LN_BWD_PROGRAMS)))
    per_prog = triton.cdiv(tiles, programs)
    programs = triton.cdiv(tiles, per_prog)
    residual = t is not None
    f32 = dict(device=a.device, dtype=torch.float32)
    da = torch.empty(bsz, length, c, device=a.device, dtype=a.dtype) if write_da else None
    dt = (torch.empty(bsz, length, c, device=a.device, dtype=t.dtype)
          if residual and write_dt else None)
    dw = torch.empty(programs, c, **f32)
    db = torch.empty(programs, c, **f32)
    ds = torch.empty(programs, **f32) if residual else None
    st = (0, 0) if t is None else (t.stride(0), t.stride(1))
    _ln_bwd_kernel[(programs,)](
        a, a if t is None else t, mean if scale is None else scale, mean if w32 is None else w32,
        dy, mean, rstd, dw if da is None else da, dw if dt is None else dt, dw, db,
        dw if ds is None else ds,
        rows, length, c, per_prog, a.stride(0), a.stride(1), *st, dy.stride(0), dy.stride(1),
        RESIDUAL=residual, HAS_W=w32 is not None, WRITE_DA=da is not None,
        WRITE_DT=dt is not None, BLOCK_T=block_t, BLOCK_C=block_c, num_warps=LAUNCH.LN_BWD_WARPS,
    )
    return da, dt, dw.sum(0), db.sum(0), None if ds is None else ds.sum()


class _LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        w32, b32 = common.f32_param(weight), common.f32_param(bias)
        y, mean, rstd = _ln_forward(x, None, None, w32, b32, eps)
        ctx.save_for_backward(x, w32, mean, rstd)
        ctx.params = (weight, bias)
        return y

    @staticmethod
    @once_differentiable  # the Triton backward records no graph of its own
    def backward(ctx, dy):
        x, w32, mean, rstd = ctx.saved_tensors
        weight, bias = ctx.params
        dy = dy if dy.stride(-1) == 1 else dy.contiguous()
        dx, _, dw, db, _ = _ln_backward(x, None, None, w32, dy, mean, rstd,
                                        ctx.needs_input_grad[0], False)
        return (dx, common.param_grad(dw, weight, ctx.needs_input_grad[1]),
                common.param_grad(db, bias, ctx.needs_input_grad[2]), None)


class _ResidualLayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, t, scale, weight, bias, eps):
        w32, b32 = common.f32_param(weight), common.f32_param(bias)
        s32 = scale.detach().float().reshape(1)
        y, mean, rstd = _ln_forward(a, t, s32, w32, b32, eps)
        ctx.save_for_backward(a, t, s32, w32, mean, rstd)
        ctx.params = (scale, weight, bias)
        return y

    @staticmethod
    @once_differentiable  # the Triton backward records no graph of its own
    def backward(ctx, dy):
        a, t, s32, w32, mean, rstd = ctx.saved_tensors
        scale, weight, bias = ctx.params
        need = ctx.needs_input_grad
        dy = dy if dy.stride(-1) == 1 else dy.contiguous()
        da, dt, dw, db, ds = _ln_backward(a, t, s32, w32, dy, mean, rstd, need[0], need[1])
        return (da, dt, common.param_grad(ds, scale, need[2]),
                common.param_grad(dw, weight, need[3]), common.param_grad(db, bias, need[4]), None)


def _check_ln_tokens(name: str, x: torch.Tensor, weight, bias) -> None:
    """The LayerNorm entries' shared checks of tokens ``x [..., C]`` and ``weight, bias``."""
    c = x.shape[-1]
    common.check_channels(c)
    common.check_param("weight", weight, c, x.device)
    common.check_param("bias", bias, c, x.device)
    if x.numel() == 0:
        raise ValueError(f"{name} is empty: {tuple(x.shape)}")


def layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """LayerNorm over the last axis, ``F.layer_norm(x, (C,), weight, bias, eps)``.

    Args:
        x: ``[..., C]`` float32, bfloat16 or float16; any strides (a unit last stride avoids
            a copy; so do leading axes that flatten to ``[B, L]`` without one).
        weight, bias: ``[C]`` or None (any float dtype; used in float32).
        eps: added to the variance.

    Returns:
        ``y`` of ``x``'s shape and dtype, contiguous. Statistics are float32. Differentiable
        with respect to ``x``, ``weight`` and ``bias``.
    """
    common.check_device_dtype("x", x)
    if x.ndim < 1:
        raise ValueError("x must have a channel axis, got a 0-d tensor")
    _check_ln_tokens("x", x, weight, bias)
    y = _LayerNorm.apply(_as_tokens(x), weight, bias, float(eps))
    return y.reshape(x.shape)


def residual_layer_norm(
    a: torch.Tensor,
    t: torch.Tensor,
    scale: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """``LN(a + scale * t)`` over the last axis without storing ``a + scale * t``.

    The RVM layer's ``LN(Mamba(LN(t)) + s * t)``: ``a`` is the mixer output, ``t`` the
    layer's tokens and ``scale`` its learnable skip scale.

    Args:
        a, t: ``[..., C]`` of the same shape, float32, bfloat16 or float16 (may differ;
            the result takes the promoted dtype); any strides as for :func:`layer_norm`.
        scale: a 1-element tensor (e.g. an ``nn.Parameter`` of shape ``[1]``).
        weight, bias: ``[C]`` or None.
        eps: added to the variance.

    Returns:
        ``y`` ``[..., C]``, contiguous. Differentiable with respect to ``a``, ``t``,
        ``scale``, ``weight`` and ``bias``; backward recomputes ``a + scale * t``.
    """
    common.check_device_dtype("a", a)
    common.check_device_dtype("t", t)
    if a.shape != t.shape:
        raise ValueError(f"a and t must have the same shape, got {tuple(a.shape)}, "
                         f"{tuple(t.shape)}")
    if a.device != t.device:
        raise ValueError(f"a is on {a.device}, t on {t.device}")
    if a.ndim < 1:
        raise ValueError("a and t must have a channel axis, got 0-d tensors")
    if not isinstance(scale, torch.Tensor) or scale.numel() != 1:
        got = tuple(scale.shape) if isinstance(scale, torch.Tensor) else type(scale).__name__
        raise ValueError(f"scale must be a 1-element tensor, got {got}")
    if scale.device != a.device:
        raise ValueError(f"scale is on {scale.device}, a on {a.device}")
    _check_ln_tokens("a", a, weight, bias)
    y = _ResidualLayerNorm.apply(_as_tokens(a), _as_tokens(t), scale, weight, bias, float(eps))
    return y.reshape(a.shape)


__all__ = ["layer_norm", "residual_layer_norm"]
