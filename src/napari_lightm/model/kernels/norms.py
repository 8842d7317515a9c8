"""Fused normalisations in Triton (CUDA), forward and backward.

Three ops cover every norm of LightM-UNet's Mamba path:

- :func:`layer_norm`: LayerNorm over the channels of tokens ``x [..., C]``.
- :func:`residual_layer_norm`: ``LN(a + scale * t)``, the RVM layer's second norm
  (``h = Mamba(LN(t)) + s * t; out = Linear(LN(h))``) without materialising ``h``.
- :func:`group_norm_relu`: ``ReLU(GroupNorm(x))`` on feature maps ``[B, C, *S]`` in any
  memory layout; the result is channels-last memory (a contiguous ``[B, L, C]`` underneath,
  so the RVM layer's token view of it is free).

LayerNorm: a program owns ``BLOCK_T`` rows x all ``C`` channels (C is small, 16..512), so
each row's statistics are two register reductions over the tile (``mean``, then the sum
of squared deviations from it: no one-pass ``E[x^2] - E[x]^2`` cancellation). Forward saves
``mean, rstd [rows]`` (float32); backward recomputes ``xhat`` (and ``h`` for the residual
form) from the inputs. Backward programs walk several row tiles and write
``dweight``/``dbias``/``dscale`` as per-program partial sums ``[programs, C]`` that torch
adds (deterministic, no atomics).

GroupNorm: torch's kernel runs one thread block per (sample, group), i.e. 8 blocks for
millions of voxels. Here the statistics are a two-stage reduction:

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
Inputs may have any batch/token strides; the LayerNorms need a unit channel stride
(other layouts are copied first), GroupNorm takes any channel stride too.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from napari_lightm.model.kernels._host import DTYPES, interpreting, pow2

# Launch constants. A tile is BLOCK_T rows/tokens x BLOCK_C = next_pow2(C) channels with
# BLOCK_T = TILE // BLOCK_C (rounded down to a power of two, at least 1). LayerNorm
# forward: the fastest of bench_gpu.py's sweep in two H200 runs at L=2,097,152, C=32
# (2048 / 4 warps 0.23 ms, 4096 / 4 warps 0.23-0.29 ms; residual + LayerNorm 0.29-0.30 vs
# 0.30-0.35 ms). GroupNorm: the sweep's order changed between runs; left as first set.
LN_FWD_TILE = 2048  # elements per LayerNorm forward program
LN_FWD_WARPS = 4
LN_BWD_TILE = 2048  # elements per LayerNorm backward tile (x, dy, t and dx live at once)
LN_BWD_WARPS = 4
# LayerNorm backward: at most this many programs; each walks consecutive row tiles and
# writes one row of the [programs, C] dweight/dbias partial buffers.
LN_BWD_PROGRAMS = 1024
GN_TILE = 4096  # elements per GroupNorm program (all four GroupNorm kernels)
GN_STATS_WARPS = 4
GN_APPLY_WARPS = 4
MAX_CHANNELS = 8192  # a row of C channels must fit one program's registers



# ---------------------------------------------------------------- LayerNorm kernels


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


# ---------------------------------------------------------------- GroupNorm kernels


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


def _block_rows(tile: int, block_c: int, rows: int) -> int:
    """Rows per tile: ``tile // block_c`` rounded down to a power of two, at most ``rows``."""
    per = max(1, int(tile) // block_c)
    per = 1 << (per.bit_length() - 1)
    return max(1, min(per, pow2(rows)))


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


def _check_device_dtype(name: str, x: torch.Tensor) -> None:
    if x.device.type != "cuda" and not interpreting():
        raise ValueError(f"triton norms need CUDA tensors, got {name} on {x.device}")
    if x.dtype not in DTYPES:
        raise ValueError(f"{name} must be float32, bfloat16 or float16, got {x.dtype}")


def _check_param(name: str, p: torch.Tensor | None, c: int, device: torch.device) -> None:
    if p is None:
        return
    if not isinstance(p, torch.Tensor) or p.shape != (c,):
        shape = tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__
        raise ValueError(f"{name} must be [C={c}], got {shape}")
    if p.device != device:
        raise ValueError(f"{name} is on {p.device}, the input on {device}")


def _check_channels(c: int) -> None:
    if c < 1 or c > MAX_CHANNELS:
        raise ValueError(f"channel count must be in 1..{MAX_CHANNELS}, got {c}")


def _f32(p: torch.Tensor | None) -> torch.Tensor | None:
    return None if p is None else p.detach().float().contiguous()


def _ln_forward(a, t, scale, w32, b32, eps):
    """Launch the LayerNorm forward on ``[B, L, C]`` inputs; returns ``y, mean, rstd``."""
    bsz, length, c = a.shape
    rows = bsz * length
    block_c = pow2(c)
    block_t = _block_rows(LN_FWD_TILE, block_c, rows)
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
        BLOCK_T=block_t, BLOCK_C=block_c, num_warps=LN_FWD_WARPS,
    )
    return y, mean, rstd


def _ln_backward(a, t, scale, w32, dy, mean, rstd, write_da, write_dt):
    """Launch the LayerNorm backward; returns ``da, dt, dw, db, ds`` (None where not asked)."""
    bsz, length, c = a.shape
    rows = bsz * length
    block_c = pow2(c)
    block_t = _block_rows(LN_BWD_TILE, block_c, rows)
    tiles = triton.cdiv(rows, block_t)
    programs = min(tiles, max(1, int(LN_BWD_PROGRAMS)))
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
        WRITE_DT=dt is not None, BLOCK_T=block_t, BLOCK_C=block_c, num_warps=LN_BWD_WARPS,
    )
    return da, dt, dw.sum(0), db.sum(0), None if ds is None else ds.sum()


def _param_grad(g: torch.Tensor | None, p: torch.Tensor | None, needed: bool):
    if g is None or p is None or not needed:
        return None
    return g.reshape(p.shape).to(p.dtype)


class _LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        w32, b32 = _f32(weight), _f32(bias)
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
        return (dx, _param_grad(dw, weight, ctx.needs_input_grad[1]),
                _param_grad(db, bias, ctx.needs_input_grad[2]), None)


class _ResidualLayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, t, scale, weight, bias, eps):
        w32, b32 = _f32(weight), _f32(bias)
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
        return (da, dt, _param_grad(ds, scale, need[2]), _param_grad(dw, weight, need[3]),
                _param_grad(db, bias, need[4]), None)


def _check_ln_tokens(name: str, x: torch.Tensor, weight, bias) -> None:
    """The LayerNorm entries' shared checks of tokens ``x [..., C]`` and ``weight, bias``."""
    c = x.shape[-1]
    _check_channels(c)
    _check_param("weight", weight, c, x.device)
    _check_param("bias", bias, c, x.device)
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
    _check_device_dtype("x", x)
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
    _check_device_dtype("a", a)
    _check_device_dtype("t", t)
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


def _gn_launch(L: int, c: int, bsz: int) -> tuple[int, int, tuple[int, int]]:
    block_c = pow2(c)
    block_t = _block_rows(GN_TILE, block_c, L)
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
            BLOCK_T=block_t, BLOCK_C=block_c, BLOCK_G=pow2(g), num_warps=GN_STATS_WARPS,
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
        w32 = _f32(weight)
        a_c = (rstd_c * w32 if w32 is not None else rstd_c).contiguous()
        beta = _f32(bias) if bias is not None else torch.zeros(c, **f32)
        y = torch.empty(bsz, L, c, device=x.device, dtype=x.dtype)
        _gn_apply_kernel[grid](
            x, y, mean_c, a_c, beta, L, c, *_strides3(x),
            RELU=relu, BLOCK_T=block_t, BLOCK_C=block_c, num_warps=GN_APPLY_WARPS,
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
            RELU=ctx.relu, BLOCK_T=block_t, BLOCK_C=block_c, num_warps=GN_STATS_WARPS,
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
                RELU=ctx.relu, BLOCK_T=block_t, BLOCK_C=block_c, num_warps=GN_APPLY_WARPS,
            )
        return (dx, None, _param_grad(s2.sum(0), weight, need[2]),
                _param_grad(s1.sum(0), bias, need[3]), None, None)


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
    _check_device_dtype("x", x)
    if x.ndim < 3:
        raise ValueError(f"x must be [B, C, *spatial], got shape {tuple(x.shape)}")
    bsz, c, *spatial = x.shape
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
        raise ValueError(f"num_groups must be a positive int, got {num_groups!r}")
    if c % num_groups:
        raise ValueError(f"channels C={c} must be divisible by num_groups={num_groups}")
    _check_channels(c)
    _check_param("weight", weight, c, x.device)
    _check_param("bias", bias, c, x.device)
    if x.numel() == 0:
        raise ValueError(f"x is empty: {tuple(x.shape)}")
    if bsz > 65535:
        raise ValueError(f"batch size {bsz} exceeds the launch grid's limit of 65535")
    tokens = torch.movedim(x, 1, -1).reshape(bsz, -1, c)  # [B, L, C]
    y = _GroupNormReLU.apply(tokens, num_groups, weight, bias, float(eps), bool(relu))
    return torch.movedim(y.reshape(bsz, *spatial, c), -1, 1)


__all__ = [
    "GN_APPLY_WARPS",
    "GN_STATS_WARPS",
    "GN_TILE",
    "LN_BWD_PROGRAMS",
    "LN_BWD_TILE",
    "LN_BWD_WARPS",
    "LN_FWD_TILE",
    "LN_FWD_WARPS",
    "group_norm_relu",
    "layer_norm",
    "residual_layer_norm",
]
