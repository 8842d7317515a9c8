"""Stage 1 of the forward: each super-chunk's end state from a zero start (Triton).

Parallel over batch x channel block x super-chunk: the linear recurrence
``h_t = a_t h_{t-1} + b_t`` (``a = exp(delta A)``, ``b = delta B u``) of each chunk as a
parallel associative scan over its tokens, chained over the super-chunk's chunks from a
zero state. Keeps each super-chunk's end state ``S [Bt, KS, E, N]`` and ``sum(delta)``
``DS [Bt, KS, E]`` for stage 2 (``state_passing``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from napari_lightm.model.ops._host import bt_strides, pow2

from .common import combine, ex2, load_delta, program_tile


@triton.jit
def _chunk_end_kernel(
    u_ptr, d_ptr, b_ptr, a_ptr, bias_ptr, s_ptr, ds_ptr,
    L, E, N, K, KS, SUB,
    su_b, su_t, sd_b, sd_t, sb_b, sb_t,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    T: tl.constexpr, BE: tl.constexpr, BN: tl.constexpr,
):
    """End state of super-chunk ``ks`` from a zero start: ``S[b, ks] [E, N]``, ``DS = sum(delta)``.

    Walks the super-chunk's ``SUB`` chunks of ``T`` tokens in order (fewer in the last one),
    the state ``[BE, BN]`` carried in registers from one chunk to the next.
    """
    ks, e, bb, n, e_mask, n_mask, en_mask, a_mat = program_tile(a_ptr, E, N, BE, BN)
    last = tl.arange(0, T)[:, None, None] == T - 1
    h = tl.zeros((BE, BN), tl.float32)
    ds = tl.zeros((BE,), tl.float32)
    k0 = ks * SUB
    for j in range(0, tl.minimum(K - k0, SUB)):
        t = (k0 + j) * T + tl.arange(0, T)
        t_mask = t < L
        mask2 = t_mask[:, None] & e_mask[None, :]
        t64 = t.to(tl.int64)
        _, dt = load_delta(d_ptr + bb * sd_b, bias_ptr, t64 * sd_t, e[None, :], mask2, e,
                            e_mask, HAS_BIAS, SOFTPLUS)
        u = tl.load(u_ptr + bb * su_b + t64[:, None] * su_t + e[None, :], mask=mask2, other=0.0)
        bm = tl.load(b_ptr + bb * sb_b + t64[:, None] * sb_t + n[None, :],
                     mask=t_mask[:, None] & n_mask[None, :], other=0.0).to(tl.float32)
        a = ex2(dt[:, :, None] * a_mat[None, :, :])
        b = (dt * u.to(tl.float32))[:, :, None] * bm[:, None, :]
        pa, hl = tl.associative_scan((a, b), 0, combine)
        # masked tokens past L have a = 1, b = 0: the state passes through unchanged
        h = tl.sum(tl.where(last, hl + pa * h[None, :, :], 0.0), axis=0)
        ds += tl.sum(dt, axis=0)
    base = (bb * KS + ks) * E
    tl.store(s_ptr + (base + e[:, None]) * N + n[None, :], h, mask=en_mask)
    tl.store(ds_ptr + base + e, ds, mask=e_mask)


def chunk_end_states(u, delta, B, A, delta_bias, softplus, chunk, k, sub, be, warps):
    """Launch stage 1 over ``k`` chunks of ``chunk`` tokens in super-chunks of ``sub``
    chunks, ``be`` channels per program; returns ``S [Bt, KS, E, N]``, ``DS [Bt, KS, E]``."""
    bt, length, e = u.shape
    n = A.shape[1]
    ks = triton.cdiv(k, sub)
    S = torch.empty(bt, ks, e, n, device=u.device, dtype=torch.float32)
    DS = torch.empty(bt, ks, e, device=u.device, dtype=torch.float32)
    _chunk_end_kernel[(ks, triton.cdiv(e, be), bt)](
        u, delta, B, A, delta_bias if delta_bias is not None else A, S, DS,
        length, e, n, k, ks, sub, *bt_strides(u), *bt_strides(delta),
        *bt_strides(B), HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus,
        T=chunk, BE=be, BN=pow2(n), num_warps=warps,
    )
    return S, DS
