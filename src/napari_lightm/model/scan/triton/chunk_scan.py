"""Stage 3 of the forward: outputs from each super-chunk's true start state (Triton).

Re-walks every super-chunk from the state stage 2 handed it and writes
``y = (<C_t, h_t> + D u_t) * SiLU(z_t)``; delta_bias + softplus, the D skip and the gate
are fused, the state stays in float32 whatever the input dtype. When a backward pass may
follow it also writes the true end state of every chunk ``H [Bt, K, E, N]``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from napari_lightm.model.ops._host import bt_strides, pow2

from .common import combine, ex2, load_delta, program_tile, sigmoid


@triton.jit
def _chunk_out_kernel(
    u_ptr, d_ptr, b_ptr, c_ptr, a_ptr, dskip_ptr, z_ptr, bias_ptr, s_ptr, y_ptr, h_ptr,
    L, E, N, K, KS, SUB,
    su_b, su_t, sd_b, sd_t, sb_b, sb_t, sc_b, sc_t, sz_b, sz_t, sy_b, sy_t,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    STORE_STATES: tl.constexpr, T: tl.constexpr, BE: tl.constexpr, BN: tl.constexpr,
):
    """Outputs of super-chunk ``ks`` from its true start state ``S[ks-1]``.

    Walks the super-chunk's chunks in order, the state carried in registers. With
    ``STORE_STATES`` it also writes every chunk's true end state ``H[b, k] [E, N]`` (the
    backward pass re-scans each chunk from ``H[b, k-1]``).
    """
    ks, e, bb, n, e_mask, n_mask, en_mask, a_mat = program_tile(a_ptr, E, N, BE, BN)
    if HAS_D:
        dskip = tl.load(dskip_ptr + e, mask=e_mask, other=0.0)
    last = tl.arange(0, T)[:, None, None] == T - 1
    h = tl.load(s_ptr + ((bb * KS + tl.maximum(ks - 1, 0)) * E + e[:, None]) * N + n[None, :],
                mask=tl.where(ks > 0, en_mask, False), other=0.0)  # the first starts from zero
    k0 = ks * SUB
    for j in range(0, tl.minimum(K - k0, SUB)):
        k = k0 + j
        t = k * T + tl.arange(0, T)
        t_mask = t < L
        mask2 = t_mask[:, None] & e_mask[None, :]
        tn_mask = t_mask[:, None] & n_mask[None, :]
        t64 = t.to(tl.int64)
        _, dt = load_delta(d_ptr + bb * sd_b, bias_ptr, t64 * sd_t, e[None, :], mask2, e,
                            e_mask, HAS_BIAS, SOFTPLUS)
        u = tl.load(u_ptr + bb * su_b + t64[:, None] * su_t + e[None, :], mask=mask2,
                    other=0.0).to(tl.float32)
        bm = tl.load(b_ptr + bb * sb_b + t64[:, None] * sb_t + n[None, :], mask=tn_mask,
                     other=0.0).to(tl.float32)
        cm = tl.load(c_ptr + bb * sc_b + t64[:, None] * sc_t + n[None, :], mask=tn_mask,
                     other=0.0).to(tl.float32)
        a = ex2(dt[:, :, None] * a_mat[None, :, :])
        b = (dt * u)[:, :, None] * bm[:, None, :]
        pa, hl = tl.associative_scan((a, b), 0, combine)
        hl = hl + pa * h[None, :, :]
        h = tl.sum(tl.where(last, hl, 0.0), axis=0)
        if STORE_STATES:
            tl.store(h_ptr + ((bb * K + k) * E + e[:, None]) * N + n[None, :], h, mask=en_mask)
        y = tl.sum(hl * cm[:, None, :], axis=2)  # [T, BE]
        if HAS_D:
            y += u * dskip[None, :]
        if HAS_Z:
            z = tl.load(z_ptr + bb * sz_b + t64[:, None] * sz_t + e[None, :], mask=mask2,
                        other=0.0).to(tl.float32)
            y = y * z * sigmoid(z)
        tl.store(y_ptr + bb * sy_b + t64[:, None] * sy_t + e[None, :], y, mask=mask2)


def chunk_outputs(u, delta, B, C, A, D, z, delta_bias, softplus, S, H, store_states, chunk, k,
                  sub, be, warps):
    """Launch stage 3 from the super-chunks' true end states ``S``; returns ``y`` (``u``'s
    dtype). With ``store_states`` every chunk's end state is written into ``H``."""
    bt, length, e = u.shape
    n = A.shape[1]
    ks = triton.cdiv(k, sub)
    dummy = A  # placeholder pointer for absent optional tensors
    y = torch.empty(bt, length, e, device=u.device, dtype=u.dtype)
    _chunk_out_kernel[(ks, triton.cdiv(e, be), bt)](
        u, delta, B, C, A, D if D is not None else dummy, z if z is not None else u,
        delta_bias if delta_bias is not None else dummy, S, y, H if H is not None else dummy,
        length, e, n, k, ks, sub, *bt_strides(u), *bt_strides(delta),
        *bt_strides(B), *bt_strides(C), *bt_strides(z), *bt_strides(y),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=softplus, STORE_STATES=store_states, T=chunk, BE=be, BN=pow2(n),
        num_warps=warps,
    )
    return y
