"""The chunk backward (the default): adjoints at super-chunk starts, then all gradients (Triton).

Backward recomputes instead of storing ``[Bt, L, E, N]``: ``_chunk_adj_kernel`` runs a
reverse pass over each super-chunk's chunks from a zero adjoint, and the reverse carry
(``state_passing``) turns those into the adjoint ``lambda`` at every super-chunk boundary
(``Q``); then ``_chunk_bwd_kernel`` walks each super-chunk's chunks last to first (one
program per super-chunk and group of channel blocks), re-scans ``h`` forward from the
stored chunk states ``H`` and ``lambda`` backward from the adjoint handed on by the later
chunk, and forms all gradients. The cross-channel sums (``dB``, ``dC``) and the parameter
sums (``dA``, ``dD``, ``d delta_bias``) go through small per-group / per-super-chunk
partial buffers summed by torch (deterministic, no atomics).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from napari_lightm.model.ops._host import bt_strides, pow2
from napari_lightm.model.ops.launch import Scan as LAUNCH

from .common import combine, ex2, gradient_buffers, load_delta, program_tile, scan_rev, sigmoid


@triton.jit
def _gate_grad(dy_ptr, z_ptr, row_dy, row_z, mask2, HAS_Z: tl.constexpr):
    """``g = dy * SiLU(z)``: the gradient reaching ``<C, h> + D u``; also returns ``dy``, ``z``."""
    dy = tl.load(dy_ptr + row_dy, mask=mask2, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + row_z, mask=mask2, other=0.0).to(tl.float32)
        g = dy * z * sigmoid(z)
    else:
        z = dy
        g = dy
    return dy, z, g


@triton.jit
def _chunk_adj_kernel(
    dy_ptr, z_ptr, d_ptr, c_ptr, a_ptr, bias_ptr, q_ptr, ds_ptr,
    L, E, N, K, KS, SUB,
    sdy_b, sdy_t, sz_b, sz_t, sd_b, sd_t, sc_b, sc_t,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, FLIP: tl.constexpr,
    T: tl.constexpr, BE: tl.constexpr, BN: tl.constexpr,
):
    """Reverse pass of super-chunk ks from a zero adjoint: ``Q[b, ks] = a_s lambda_s`` at its
    first token s, and ``DS[b, ks] = sum(delta)`` for the reverse carry.

    With ``nu_t = a_t lambda_t``: ``nu_t = a_t (g_t C_t + nu_{t+1})``, a suffix scan per chunk;
    the chunks are walked last to first with ``nu`` carried in registers.
    """
    ks, e, bb, n, e_mask, n_mask, en_mask, a_mat = program_tile(a_ptr, E, N, BE, BN)
    first = tl.arange(0, T)[:, None, None] == 0
    q = tl.zeros((BE, BN), tl.float32)
    ds = tl.zeros((BE,), tl.float32)
    k0 = ks * SUB
    count = tl.minimum(K - k0, SUB)
    for jj in range(0, count):
        t = (k0 + count - 1 - jj) * T + tl.arange(0, T)
        t_mask = t < L
        mask2 = t_mask[:, None] & e_mask[None, :]
        t64 = t.to(tl.int64)
        _, dt = load_delta(d_ptr + bb * sd_b, bias_ptr, t64 * sd_t, e[None, :], mask2, e,
                            e_mask, HAS_BIAS, SOFTPLUS)
        _, _, g = _gate_grad(dy_ptr + bb * sdy_b, z_ptr + bb * sz_b,
                             t64[:, None] * sdy_t + e[None, :], t64[:, None] * sz_t + e[None, :],
                             mask2, HAS_Z)
        cm = tl.load(c_ptr + bb * sc_b + t64[:, None] * sc_t + n[None, :],
                     mask=t_mask[:, None] & n_mask[None, :], other=0.0).to(tl.float32)
        a = ex2(dt[:, :, None] * a_mat[None, :, :])
        pa, nu = scan_rev(a, a * (g[:, :, None] * cm[:, None, :]), FLIP)
        # pa[0] = the chunk's whole decay, which carries the later chunks' nu to its start
        q = tl.sum(tl.where(first, nu + pa * q[None, :, :], 0.0), axis=0)
        ds += tl.sum(dt, axis=0)
    base = (bb * KS + ks) * E
    tl.store(q_ptr + (base + e[:, None]) * N + n[None, :], q, mask=en_mask)
    tl.store(ds_ptr + base + e, ds, mask=e_mask)


@triton.jit
def _chunk_bwd_kernel(
    u_ptr, d_ptr, b_ptr, c_ptr, a_ptr, dskip_ptr, z_ptr, bias_ptr, dy_ptr,
    h_ptr, q_ptr, m_ptr,
    du_ptr, dd_ptr, dz_ptr, db_ptr, dc_ptr, da_ptr, dds_ptr, dbias_ptr,
    L, E, N, K, KS, SUB, Bt,
    su_b, su_t, sd_b, sd_t, sb_b, sb_t, sc_b, sc_t, sz_b, sz_t, sdy_b, sdy_t,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    FLIP: tl.constexpr, T: tl.constexpr, BE: tl.constexpr, BN: tl.constexpr,
    BLOCKS_PER_PROG: tl.constexpr,
):
    """All gradients of super-chunk ks: per chunk, ``h`` re-scanned forward, ``lambda``
    backward, both exact.

    The chunks are walked last to first; chunk k starts from the stored true state
    ``H[b, k-1]``; the adjoint entering the super-chunk's last chunk is ``Q[b, ks+1]`` (after
    the reverse carry). Each program handles ``BLOCKS_PER_PROG`` blocks of ``BE`` channels
    per chunk; what a block carries to the previous chunk (``mu = a_s lambda_s``, the running
    ``dA, dD, d delta_bias`` sums) goes through this program's own slots of ``M`` and the
    partial buffers (read back after a barrier; no other program touches them). Writes
    ``du, d delta, dz`` ``[Bt, L, E]`` (contiguous), per-group partials of ``dB, dC``
    ``[groups, Bt, L, N]`` and per-super-chunk partials of ``dA [Bt, KS, E, N]``,
    ``dD, d delta_bias [Bt, KS, E]``.
    """
    ks = tl.program_id(0)
    group = tl.program_id(1)  # this program's group of channel blocks
    bb = tl.program_id(2).to(tl.int64)
    n = tl.arange(0, BN)
    n_mask = n < N
    rows = tl.arange(0, T)[:, None, None]
    k0 = ks * SUB
    count = tl.minimum(K - k0, SUB)
    has_next = ks + 1 < KS  # nothing flows back into the last super-chunk
    # (scalar conditions enter masks through tl.where: the interpreter rejects `mask & cond`)
    for jj in range(0, count):
        k = k0 + count - 1 - jj
        later = jj > 0  # a later chunk of this super-chunk left mu and the partial sums
        first = has_next & (jj == 0)  # the adjoint enters from the next super-chunk
        more = jj + 1 < count  # an earlier chunk of this super-chunk follows
        t = k * T + tl.arange(0, T)
        t_mask = t < L
        tn_mask = t_mask[:, None] & n_mask[None, :]
        t64 = t.to(tl.int64)
        tn = t + 1  # the next token's decay multiplies the adjoint flowing back into t
        bm = tl.load(b_ptr + bb * sb_b + t64[:, None] * sb_t + n[None, :], mask=tn_mask,
                     other=0.0).to(tl.float32)
        cm = tl.load(c_ptr + bb * sc_b + t64[:, None] * sc_t + n[None, :], mask=tn_mask,
                     other=0.0).to(tl.float32)
        # dB, dC sum over channels: accumulate this group's blocks in registers
        d_b = tl.zeros((T, BN), tl.float32)
        d_c = tl.zeros((T, BN), tl.float32)
        for i in range(BLOCKS_PER_PROG):
            e = (group * BLOCKS_PER_PROG + i) * BE + tl.arange(0, BE)
            e_mask = e < E
            en_mask = e_mask[:, None] & n_mask[None, :]
            mask2 = t_mask[:, None] & e_mask[None, :]
            row_e = t64[:, None] * 0 + e[None, :]  # [T, BE] channel offsets
            raw, dt = load_delta(d_ptr + bb * sd_b, bias_ptr, t64 * sd_t, row_e, mask2, e,
                                  e_mask, HAS_BIAS, SOFTPLUS)
            mask_n = (tn < L)[:, None] & e_mask[None, :]
            _, dt_next = load_delta(d_ptr + bb * sd_b, bias_ptr, (t64 + 1) * sd_t, row_e, mask_n,
                                     e, e_mask, HAS_BIAS, SOFTPLUS)
            u = tl.load(u_ptr + bb * su_b + t64[:, None] * su_t + row_e, mask=mask2,
                        other=0.0).to(tl.float32)
            a_mat = tl.load(a_ptr + e[:, None] * N + n[None, :], mask=en_mask, other=0.0)
            a2 = a_mat * 1.4426950408889634
            dy, z, g = _gate_grad(dy_ptr + bb * sdy_b, z_ptr + bb * sz_b,
                                  t64[:, None] * sdy_t + row_e, t64[:, None] * sz_t + row_e,
                                  mask2, HAS_Z)
            en_off = (e[:, None] * N + n[None, :]).to(tl.int64)  # [BE, BN]
            own = (bb * KS + ks) * E * N + en_off  # this program's slots of M and dA

            # forward states h_t from the chunk's true start state (zero for chunk 0)
            a = ex2(dt[:, :, None] * a2[None, :, :])
            b = (dt * u)[:, :, None] * bm[:, None, :]
            pa, h = tl.associative_scan((a, b), 0, combine)
            h0 = tl.load(h_ptr + (bb * K + tl.maximum(k - 1, 0)) * E * N + en_off,
                         mask=tl.where(k > 0, en_mask, False), other=0.0)
            h = h + pa * h0[None, :, :]

            # adjoint lambda_t = g_t C_t + a_{t+1} lambda_{t+1}; mu = a_s' lambda_s' of the
            # next chunk: from Q of the next super-chunk, or left in M by the later chunk
            alpha = ex2(dt_next[:, :, None] * a2[None, :, :])
            alpha = tl.where(rows == T - 1, 1.0, alpha)
            p_alpha, lam = scan_rev(alpha, g[:, :, None] * cm[:, None, :], FLIP)
            mu = tl.load(q_ptr + (bb * KS + tl.minimum(ks + 1, KS - 1)) * E * N + en_off,
                         mask=tl.where(first, en_mask, False), other=0.0)
            mu += tl.load(m_ptr + own, mask=tl.where(later, en_mask, False), other=0.0)
            lam = lam + p_alpha * mu[None, :, :]
            tl.store(m_ptr + own, tl.sum(tl.where(rows == 0, a * lam, 0.0), axis=0),
                     mask=tl.where(more, en_mask, False))

            # gradients; a_t h_{t-1} = h_t - b_t avoids a shifted state
            ah = h - b
            y_ssm = tl.sum(h * cm[:, None, :], axis=2)
            lam_b = tl.sum(lam * bm[:, None, :], axis=2)  # [T, BE]
            du = lam_b * dt
            d_dt = lam_b * u + tl.sum(lam * ah * a_mat[None, :, :], axis=2)
            d_b += tl.sum(lam * (dt * u)[:, :, None], axis=1)  # [T, BN]
            d_c += tl.sum(h * g[:, :, None], axis=1)
            d_a = tl.sum(lam * ah * dt[:, :, None], axis=0)  # [BE, BN]
            if HAS_D:
                dskip = tl.load(dskip_ptr + e, mask=e_mask, other=0.0)[None, :]
                du += g * dskip
                y_pre = y_ssm + dskip * u
                d_skip = tl.sum(g * u, axis=0)
            else:
                y_pre = y_ssm
                d_skip = tl.sum(g * 0.0, axis=0)
            if HAS_Z:
                sz = sigmoid(z)
                dz = dy * y_pre * sz * (1.0 + z * (1.0 - sz))
                tl.store(dz_ptr + bb * L * E + t64[:, None] * E + row_e, dz, mask=mask2)
            if SOFTPLUS:
                d_raw = d_dt * sigmoid(raw)
            else:
                d_raw = d_dt
            d_raw = tl.where(mask2, d_raw, 0.0)
            out = bb * L * E + t64[:, None] * E + row_e
            tl.store(du_ptr + out, du, mask=mask2)
            tl.store(dd_ptr + out, d_raw, mask=mask2)
            # running sums over the super-chunk's chunks, in a fixed order (deterministic)
            d_a += tl.load(da_ptr + own, mask=tl.where(later, en_mask, False), other=0.0)
            tl.store(da_ptr + own, d_a, mask=en_mask)
            base = (bb * KS + ks) * E
            d_skip += tl.load(dds_ptr + base + e, mask=tl.where(later, e_mask, False), other=0.0)
            tl.store(dds_ptr + base + e, d_skip, mask=e_mask)
            d_bias = tl.sum(d_raw, axis=0)
            d_bias += tl.load(dbias_ptr + base + e, mask=tl.where(later, e_mask, False), other=0.0)
            tl.store(dbias_ptr + base + e, d_bias, mask=e_mask)
        part = ((group * Bt + bb) * L + t64[:, None]) * N + n[None, :]
        tl.store(db_ptr + part, d_b, mask=tn_mask)
        tl.store(dc_ptr + part, d_c, mask=tn_mask)
        # what this chunk stored for the previous one may be read back by other threads
        tl.debug_barrier()


def chunk_adjoints(dy, z, delta, C, A, bias, softplus, flip, chunk, k, sub):
    """Launch the reverse local passes: ``Q [Bt, KS, E, N]`` (the adjoint at each super-chunk's
    first token from a zero adjoint after it) and ``DS [Bt, KS, E]`` for the reverse carry."""
    bt, length, e = delta.shape
    n = A.shape[1]
    ks = triton.cdiv(k, sub)
    f32 = dict(device=delta.device, dtype=torch.float32)
    Q = torch.empty(bt, ks, e, n, **f32)
    DS = torch.empty(bt, ks, e, **f32)
    _chunk_adj_kernel[(ks, triton.cdiv(e, LAUNCH.ADJ_BLOCK_E), bt)](
        dy, z if z is not None else delta, delta, C, A, bias if bias is not None else A, Q, DS,
        length, e, n, k, ks, sub,
        *bt_strides(dy), *bt_strides(z), *bt_strides(delta), *bt_strides(C),
        HAS_Z=z is not None, HAS_BIAS=bias is not None, SOFTPLUS=softplus, FLIP=flip,
        T=chunk, BE=LAUNCH.ADJ_BLOCK_E, BN=pow2(n), num_warps=LAUNCH.ADJ_WARPS,
    )
    return Q, DS


def chunk_gradients(u, delta, B, C, A, D, z, bias, dy, H, Q, softplus, flip, chunk, sub,
                    groups, per_prog):
    """Launch ``_chunk_bwd_kernel``; returns ``du, d delta, dz`` ``[Bt, L, E]`` and the
    partial sums ``dB, dC [groups, Bt, L, N]``, ``dA [Bt, KS, E, N]``,
    ``dD, d delta_bias [Bt, KS, E]`` (float32)."""
    bt, length, e = u.shape
    n = A.shape[1]
    k = H.shape[1]
    ks = triton.cdiv(k, sub)
    dummy = A
    du, dd, dz, dB, dC, dA, dD, dbias = gradient_buffers(u, n, z, groups, ks)
    # mu handed from chunk to chunk within a super-chunk (scratch); with one chunk per
    # super-chunk the kernel never touches it (not allocated)
    M = torch.empty(bt, ks, e, n, device=u.device, dtype=torch.float32) if sub > 1 else dummy
    _chunk_bwd_kernel[(ks, groups, bt)](
        u, delta, B, C, A, D if D is not None else dummy,
        z if z is not None else u, bias if bias is not None else dummy, dy, H, Q, M,
        du, dd, dz if dz is not None else du, dB, dC, dA, dD, dbias,
        length, e, n, k, ks, sub, bt,
        *bt_strides(u), *bt_strides(delta), *bt_strides(B), *bt_strides(C),
        *bt_strides(z), *bt_strides(dy),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=bias is not None,
        SOFTPLUS=softplus, FLIP=flip, T=chunk, BE=LAUNCH.BWD_BLOCK_E, BN=pow2(n),
        BLOCKS_PER_PROG=per_prog, num_warps=LAUNCH.BWD_WARPS,
    )
    return du, dd, dz, dB, dC, dA, dD, dbias
