"""Stage 2: chain the super-chunk summaries into true boundary states (Triton).

Parallel over batch x channel: a scan over the KS summaries (decay ``exp(A sum(delta))``
and end state) turns each into the true state at its super-chunk's end, in place. This
pass is latency-bound (a sequential walk), which is why it only sees K / SUB summaries.
Run in reverse, the same kernel carries the backward pass's adjoint to each super-chunk's
start.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from napari_lightm.model.ops._host import pow2
from napari_lightm.model.ops.launch import Scan as LAUNCH

from .common import combine, ex2, load_a_log2


@triton.jit
def _carry_kernel(
    s_ptr, ds_ptr, a_ptr, E, N, K,
    REVERSE: tl.constexpr, BK: tl.constexpr, BE: tl.constexpr, BN: tl.constexpr,
):
    """Chain the (super-)chunk summaries in place: ``S[k] <- exp(A DS[k]) S[k-1] + S[k]``.

    Forward (``REVERSE=False``) ``S[k]`` becomes the true state at the end of chunk k;
    reverse, ``S[k] <- exp(A DS[k]) S[k+1] + S[k]`` (the adjoint carried to chunk k's start).
    """
    e = tl.program_id(0) * BE + tl.arange(0, BE)
    bb = tl.program_id(1).to(tl.int64)
    n = tl.arange(0, BN)
    en_mask = (e < E)[:, None] & (n < N)[None, :]
    a_mat = load_a_log2(a_ptr, e, n, N, en_mask)
    carry = tl.zeros((BE, BN), tl.float32)
    rows = tl.arange(0, BK)
    for k0 in range(0, K, BK):
        if REVERSE:
            k = K - 1 - (k0 + rows)
            valid = k >= 0
        else:
            k = k0 + rows
            valid = k < K
        base = (bb * K + k) * E  # [BK]
        m3 = valid[:, None, None] & en_mask[None, :, :]
        off = (base[:, None, None] + e[None, :, None]) * N + n[None, None, :]
        h = tl.load(s_ptr + off, mask=m3, other=0.0)
        ds = tl.load(ds_ptr + base[:, None] + e[None, :], mask=valid[:, None] & (e < E)[None, :],
                     other=0.0)
        p = ex2(ds[:, :, None] * a_mat[None, :, :])
        pc, hc = tl.associative_scan((p, h), 0, combine)
        h = hc + pc * carry[None, :, :]
        tl.store(s_ptr + off, h, mask=m3)
        carry = tl.sum(tl.where((rows == BK - 1)[:, None, None], h, 0.0), axis=0)


def carry(S: torch.Tensor, DS: torch.Tensor, A: torch.Tensor, reverse: bool) -> None:
    """Chain the summaries ``S [Bt, K, E, N]``, ``DS [Bt, K, E]`` in place (``reverse``:
    last to first)."""
    bt, k, e, n = S.shape
    be = 1  # one channel per program: the carry is a sequential walk, so spread it wide
    _carry_kernel[(triton.cdiv(e, be), bt)](
        S, DS, A, e, n, k, REVERSE=reverse, BK=min(LAUNCH.CARRY_BLOCK_K, pow2(k)), BE=be,
        BN=pow2(n), num_warps=4,
    )
