"""The walk backward (``Scan.WALK_BWD`` in ``ops/launch.py``, off by default): all gradients of
a super-chunk as two token walks per chunk, the states in-thread and the channels on the
lanes (Triton). The adjoints at the super-chunk starts come from ``backward``'s pass.
"""

from __future__ import annotations

import triton
import triton.language as tl

from napari_lightm.model.ops._host import bt_strides, pow2
from napari_lightm.model.ops.launch import Scan as LAUNCH

from .common import ex2, gradient_buffers, sigmoid, softplus


@triton.jit
def _walk_token(u_ptr, d_ptr, b_ptr, c_ptr, z_ptr, dy_ptr, t, bb, ec, n, bias, e_mask, n_mask,
                L, su_b, su_t, sd_b, sd_t, sb_b, sb_t, sc_b, sc_t, sz_b, sz_t, sdy_b, sdy_t,
                HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Token ``t`` of the walk backward's channels ``ec [BE]``: the masks ``[BE]``, ``[BN]``
    (false past ``L``), raw delta (+ bias) and the step ``dt`` (0 outside), ``u``, ``dy``,
    ``z`` and ``sigmoid(z)`` (``dy`` twice without a gate), ``g = dy SiLU(z)``, rows of
    ``B`` and ``C`` ``[BN]``."""
    m_e = tl.where(t < L, e_mask, False)
    m_n = tl.where(t < L, n_mask, False)
    raw = tl.load(d_ptr + bb * sd_b + t * sd_t + ec, mask=m_e, other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw += bias
    if SOFTPLUS:
        dt = tl.where(m_e, softplus(raw), 0.0)
    else:
        dt = tl.where(m_e, raw, 0.0)
    u = tl.load(u_ptr + bb * su_b + t * su_t + ec, mask=m_e, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + bb * sdy_b + t * sdy_t + ec, mask=m_e, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + bb * sz_b + t * sz_t + ec, mask=m_e, other=0.0).to(tl.float32)
        sz = sigmoid(z)
        g = dy * z * sz
    else:
        z = dy
        sz = dy
        g = dy
    bm = tl.load(b_ptr + bb * sb_b + t * sb_t + n, mask=m_n, other=0.0).to(tl.float32)
    cm = tl.load(c_ptr + bb * sc_b + t * sc_t + n, mask=m_n, other=0.0).to(tl.float32)
    return m_e, m_n, raw, dt, u, dy, z, sz, g, bm, cm


@triton.jit(do_not_specialize=["se"])
def _walk_bwd_kernel(
    u_ptr, d_ptr, b_ptr, c_ptr, at_ptr, dskip_ptr, z_ptr, bias_ptr, dy_ptr, h_ptr, q_ptr,
    du_ptr, dd_ptr, dz_ptr, db_ptr, dc_ptr, da_ptr, dds_ptr, dbias_ptr,
    L, E, N, K, KS, SUB, Bt,
    su_b, su_t, sd_b, sd_t, sb_b, sb_t, sc_b, sc_t, sz_b, sz_t, sdy_b, sdy_t, se,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    T: tl.constexpr, BE: tl.constexpr, BN: tl.constexpr,
):
    """All gradients of super-chunk ``ks`` for ``BE`` channels, as two token walks per chunk.

    Each thread owns whole channels: tiles are ``[BN, BE]`` (the states in-thread, the
    channels on the lanes) and the tokens are walked one at a time. Chunk k (last to first)
    is walked forward from its true start state ``H[b, k-1]`` and then backward from the
    adjoint ``nu = a_{s'} lambda_{s'}`` handed on by the chunk after it (``Q[b, ks+1]`` for
    the super-chunk's last chunk), so ``h`` and ``lambda`` are never needed at the same
    token: the terms that pair them, ``q_t = lambda_t a_t h_{t-1}`` (in ``d delta`` and
    ``dA``), follow from ``q_t = q_{t+1} + g_t C_t h_t - lambda_t b_t`` with
    ``q_{T+1} = nu h_T``: suffix sums of a forward-walk term and of a backward-walk term.
    The forward walk writes its per-token part (``g_t <A, C_t h_t>``) into ``d delta`` as
    scratch, which the backward walk reads back and overwrites. ``se`` is 0 (not
    specialised): it hides the channels' alignment so their loads stay one per lane.
    """
    ks = tl.program_id(0)
    eb = tl.program_id(1)
    bb = tl.program_id(2).to(tl.int64)
    e = eb * BE + tl.arange(0, BE)
    n = tl.arange(0, BN)
    e_mask, n_mask = e < E, n < N
    ne_mask = n_mask[:, None] & e_mask[None, :]
    ne_off = (e[None, :] * N + n[:, None]).to(tl.int64)  # [BN, BE] into [E, N] arrays
    ec = e + se  # channel offsets of the token-major tensors (and of A^T)
    a2 = tl.load(at_ptr + n[:, None] * E + ec[None, :], mask=ne_mask, other=0.0)
    a2 = a2 * 1.4426950408889634  # A^T tile in log2 units: exp(delta A) = exp2(delta a2)
    if HAS_D:
        dskip = tl.load(dskip_ptr + e, mask=e_mask, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + e, mask=e_mask, other=0.0)
    else:
        bias = tl.zeros((BE,), tl.float32)
    k0 = ks * SUB
    count = tl.minimum(K - k0, SUB)
    # the adjoint entering the super-chunk (nothing flows back into the last one)
    nu = tl.load(q_ptr + (bb * KS + tl.minimum(ks + 1, KS - 1)) * E * N + ne_off,
                 mask=tl.where(ks + 1 < KS, ne_mask, False), other=0.0)
    d_a = tl.zeros((BN, BE), tl.float32)
    d_skip = tl.zeros((BE,), tl.float32)
    d_bias = tl.zeros((BE,), tl.float32)
    out_b = bb * L * E  # du, d delta, dz: contiguous [Bt, L, E]
    part_b = (eb * Bt + bb) * L  # dB, dC partials: [blocks, Bt, L, N]
    for jj in range(0, count):
        k = k0 + count - 1 - jj
        h = tl.load(h_ptr + (bb * K + tl.maximum(k - 1, 0)) * E * N + ne_off,
                    mask=tl.where(k > 0, ne_mask, False), other=0.0)
        dt_sum = tl.zeros((BE,), tl.float32)
        # forward walk: h_t, y_ssm (dz), dC, and the forward terms of q
        for i in range(0, T):
            t = k * T + i
            m_e, m_n, raw, dt, u, dy, z, sz, g, bm, cm = _walk_token(
                u_ptr, d_ptr, b_ptr, c_ptr, z_ptr, dy_ptr, t, bb, ec, n, bias, e_mask, n_mask,
                L, su_b, su_t, sd_b, sd_t, sb_b, sb_t, sc_b, sc_t, sz_b, sz_t, sdy_b, sdy_t,
                HAS_Z, HAS_BIAS, SOFTPLUS)
            a = ex2(dt[None, :] * a2)
            h = a * h + (dt * u)[None, :] * bm[:, None]
            ch = cm[:, None] * h
            y_ssm = tl.sum(ch, axis=0)
            dt_sum += dt
            d_a += ch * (g * dt_sum)[None, :]
            tl.store(dc_ptr + (part_b + t) * N + n, tl.sum(h * g[None, :], axis=1), mask=m_n)
            tl.store(dd_ptr + out_b + t * E + e, g * tl.sum(a2 * ch, axis=0), mask=m_e)
            if HAS_D:
                d_skip += g * u
                y_ssm += dskip * u
            if HAS_Z:
                tl.store(dz_ptr + out_b + t * E + e, dy * y_ssm * sz * (1.0 + z * (1.0 - sz)),
                         mask=m_e)
        # q_{T+1} = nu h_T enters every q_t of the chunk
        c0 = tl.sum(a2 * nu * h, axis=0)
        d_a += dt_sum[None, :] * nu * h
        suf = c0
        dt_run = dt_sum
        tl.debug_barrier()  # the scratch in d delta is read back by its own lanes
        # backward walk: lambda_t, du, d delta, dB and the backward terms of q
        for i in range(0, T):
            t = k * T + T - 1 - i
            m_e, m_n, raw, dt, u, dy, z, sz, g, bm, cm = _walk_token(
                u_ptr, d_ptr, b_ptr, c_ptr, z_ptr, dy_ptr, t, bb, ec, n, bias, e_mask, n_mask,
                L, su_b, su_t, sd_b, sd_t, sb_b, sb_t, sc_b, sc_t, sz_b, sz_t, sdy_b, sdy_t,
                HAS_Z, HAS_BIAS, SOFTPLUS)
            lam = nu + cm[:, None] * g[None, :]
            lam_b = lam * bm[:, None]
            s1 = tl.sum(lam_b, axis=0)
            dtu = dt * u
            suf += tl.load(dd_ptr + out_b + t * E + e, mask=m_e, other=0.0)
            suf -= dtu * tl.sum(a2 * lam_b, axis=0)
            d_dt = u * s1 + suf * 0.6931471805599453  # suf is in units of A log2(e)
            du = dt * s1
            if HAS_D:
                du += dskip * g
            if SOFTPLUS:
                d_dt = d_dt * sigmoid(raw)
            d_dt = tl.where(m_e, d_dt, 0.0)
            d_bias += d_dt
            tl.store(du_ptr + out_b + t * E + e, du, mask=m_e)
            tl.store(dd_ptr + out_b + t * E + e, d_dt, mask=m_e)
            tl.store(db_ptr + (part_b + t) * N + n, tl.sum(lam * dtu[None, :], axis=1), mask=m_n)
            d_a -= lam_b * (dtu * dt_run)[None, :]
            dt_run -= dt
            nu = ex2(dt[None, :] * a2) * lam
        tl.debug_barrier()
    base = (bb * KS + ks) * E
    tl.store(da_ptr + base * N + ne_off, d_a, mask=ne_mask)
    tl.store(dds_ptr + base + e, d_skip, mask=e_mask)
    tl.store(dbias_ptr + base + e, d_bias, mask=e_mask)


def walk_gradients(u, delta, B, C, A, D, z, bias, dy, H, Q, softplus, chunk, sub, blocks):
    """Launch ``_walk_bwd_kernel`` over ``blocks`` channel blocks; returns ``du, d delta, dz``
    ``[Bt, L, E]`` and the partial sums ``dB, dC [blocks, Bt, L, N]``, ``dA [Bt, KS, E, N]``,
    ``dD, d delta_bias [Bt, KS, E]`` (float32)."""
    bt, length, e = u.shape
    n = A.shape[1]
    k = H.shape[1]
    ks = triton.cdiv(k, sub)
    du, dd, dz, dB, dC, dA, dD, dbias = gradient_buffers(u, n, z, blocks, ks)
    dummy = A
    _walk_bwd_kernel[(ks, blocks, bt)](
        u, delta, B, C, A.t().contiguous(), D if D is not None else dummy,
        z if z is not None else u,
        bias if bias is not None else dummy, dy, H, Q,
        du, dd, dz if dz is not None else du, dB, dC, dA, dD, dbias,
        length, e, n, k, ks, sub, bt,
        *bt_strides(u), *bt_strides(delta), *bt_strides(B), *bt_strides(C),
        *bt_strides(z), *bt_strides(dy), 0,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=bias is not None,
        SOFTPLUS=softplus, T=chunk, BE=LAUNCH.WALK_BLOCK_E, BN=pow2(n),
        num_warps=LAUNCH.WALK_WARPS,
    )
    return du, dd, dz, dB, dC, dA, dD, dbias
