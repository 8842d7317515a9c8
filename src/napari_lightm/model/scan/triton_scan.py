"""Chunk-parallel selective scan in Triton (CUDA), forward and backward.

Same contract as :func:`selective_scan_reference`: token-major ``u, delta, z: [Bt, L, E]``,
``B, C: [Bt, L, N]``, ``A: [E, N]``, ``D, delta_bias: [E]``. No transposes: the kernels
read the token-major tensors in place (any batch/token strides, unit channel stride).

Why chunks: mamba-ssm walks the tokens of each (batch, channel) sequentially, which
leaves an H100 idle when there are few channels and millions of tokens. Here the token
axis is cut into chunks of ``T`` tokens, and ``SUB`` consecutive chunks form a super-chunk
that one program walks in a loop, carrying the state ``[BE, N]`` in registers from one
chunk to the next (``_sub_chunks`` picks SUB on the host: as large as still leaves
``FWD_MIN_PROGRAMS`` programs, at most ``FWD_MAX_SUB``; 1 for short sequences). The work
runs in three stages:

1. ``_chunk_end_kernel`` (parallel over batch x channel-block x super-chunk): the linear
   recurrence ``h_t = a_t h_{t-1} + b_t`` (``a = exp(delta A)``, ``b = delta B u``) of each
   chunk as a parallel associative scan over its tokens, chained over the super-chunk's
   chunks from a zero state; keeps each super-chunk's end state ``[Bt, KS, E, N]`` and
   ``sum(delta)`` ``[Bt, KS, E]``.
2. ``_carry_kernel`` (parallel over batch x channel): a scan over the KS super-chunk
   summaries (decay ``exp(A sum(delta))`` and end state) turns them into true end states.
   This pass is latency-bound (a sequential walk), which is why it only sees K / SUB
   summaries.
3. ``_chunk_out_kernel``: re-walks every super-chunk from its true start state and writes
   ``y = (<C_t, h_t> + D u_t) * SiLU(z_t)``; delta_bias + softplus, the D skip and the
   gate are fused, the state stays in float32 whatever the input dtype. When a backward
   pass may follow (an input requires grad) it also writes the true end state of every
   chunk ``H [Bt, K, E, N]`` (with SUB = 1 the carried summaries already are ``H``).

The decays are products of per-step ``exp(delta A)`` (never differences of cumulative
sums in log space, which lose ~1e-3 in float32 on long decays). Backward recomputes
instead of storing ``[Bt, L, E, N]``, with its own super-chunks (``BWD_MAX_SUB``,
``BWD_MIN_PROGRAMS``): a reverse pass over each super-chunk's chunks and a reverse carry
give the adjoint ``lambda`` at every super-chunk boundary (``Q``); then one program per
super-chunk (and group of channel blocks) walks its chunks last to first, re-scans ``h``
forward from the stored ``H`` and ``lambda`` backward from the adjoint handed on by the
later chunk, and forms all gradients. The cross-channel sums (``dB``, ``dC``) and the
parameter sums (``dA``, ``dD``, ``d delta_bias``) go through small per-group /
per-super-chunk partial buffers summed by torch (deterministic, no atomics).

Under activation checkpointing (``model/cuda_fast.py``) the first pass runs as inference
and hands its super-chunk end states to the recomputation (:func:`recomputation_contexts`),
which then skips stages 1 and 2.
"""

from __future__ import annotations

import contextlib
import functools
import threading

import torch
import triton
import triton.language as tl

from napari_lightm.model.ops._host import interpreting, pow2
from napari_lightm.model.scan.args import ScanArgs

# Launch settings: the fastest of benchmarks/gpu/bench_gpu.py's sweeps on an H200 at
# E=64, L=2,097,152 (benchmarks/RESULTS.md). Forward alone: 8-token chunks, 32 channels x
# 4 warps, walks of 128 chunks (4.5 ms; 6.9 ms with one 32-token chunk per program; 4.3 ms
# with the approximate exp2 / log2 of _FAST_MATH). With a backward pass, at the train
# step's batch of 2: 16-token chunks and 2 channels x 1 warp in backward, 49.7 ms
# forward + backward (60.7 ms with 32-token chunks x 2 warps, 57.3 ms with 32 x 1 channel
# x 1 warp, 85.5 ms with 4 channels x 2 warps).
DEFAULT_CHUNK = 16  # tokens per chunk (a power of two) when a backward pass may follow
INFER_CHUNK = 8  # tokens per chunk for a forward pass alone (nothing requires grad)
FWD_BLOCK_E = 32  # channels per program, forward kernels
BWD_BLOCK_E = 2  # channels per program, backward kernel (more live tiles)
FWD_WARPS = 4
BWD_WARPS = 1  # one warp: the chunk's tokens stay in its threads (no cross-warp scan)
BWD_MIN_PROGRAMS = 8192  # backward: split channels over programs until this many run
# The adjoint pass and the state-keeping forward have their own settings; their sweep
# (same fwd+bwd measure) spread 48.2-52.3 ms over 6 settings each, noise-level: kept at
# the forward's.
ADJ_BLOCK_E = 32  # channels per program, backward's reverse pass over the chunks (adjoint)
ADJ_WARPS = 4
STATES_BLOCK_E = 32  # channels per program, the forward that keeps chunk states for backward
STATES_WARPS = 4
CARRY_BLOCK_K = 128  # chunk summaries scanned per step of the carry pass
# Backward as two token walks per chunk (_walk_bwd_kernel): the states in-thread, the
# channels on the lanes, WALK_BLOCK_E channels per program (32 x WALK_WARPS lanes, the rest
# in-thread); super-chunks of up to WALK_MAX_SUB chunks while WALK_MIN_PROGRAMS programs run.
# Off by default: it has run only in Triton's interpreter (exact there), never compiled on a
# GPU; bench_gpu.py times it against the chunk backward, which stays the default until then.
WALK_BWD = False
WALK_BLOCK_E = 32
WALK_WARPS = 1
WALK_MIN_PROGRAMS = 16384
WALK_MAX_SUB = 16
# Super-chunks: one program walks SUB consecutive chunks, the state in registers; only the
# super-chunk summaries go through the (latency-bound) carry pass. SUB is the largest
# value (<= *_MAX_SUB) that still leaves *_MIN_PROGRAMS programs; MAX_SUB = 1 turns it off.
FWD_MIN_PROGRAMS = 8192  # forward kernels: programs to keep (super-chunks x blocks x Bt)
FWD_MAX_SUB = 128
BWD_MAX_SUB = 1  # backward (adjoint + gradient kernels): keeps BWD_MIN_PROGRAMS super-chunks x Bt
# Hardware approximations of exp2 / log2 / reciprocal on CUDA (one MUFU instruction each,
# results below 1e-38 flushed to zero); Triton's interpreter has no inline asm.
_FAST_MATH = tl.constexpr(not interpreting())

_STATE = threading.local()


@contextlib.contextmanager
def first_pass_of_recomputation(handoff: list | None = None):
    """Inside: the scan's forward runs as for inference (``INFER_CHUNK``, no chunk states
    kept) while still recording its autograd node, because what that node saves is
    replaced by the recomputed forward's tensors before its backward runs.

    For activation checkpointing (``torch.utils.checkpoint`` with ``use_reentrant=False``,
    ``determinism_check="none"`` and this as the forward context of ``context_fn``): the
    first pass's saved tensors are dropped anyway, so keeping the chunk states there is
    pure cost. The node keeps the chunk length the recomputation uses. With a ``handoff``
    list, each scan appends its super-chunk end states (see :func:`recomputation_contexts`).
    """
    before = getattr(_STATE, "first_pass", False), getattr(_STATE, "handoff", None)
    _STATE.first_pass, _STATE.handoff = True, handoff
    try:
        yield
    finally:
        _STATE.first_pass, _STATE.handoff = before


@contextlib.contextmanager
def recomputation_from(handoff: list):
    """Inside: each scan that keeps chunk states for a backward pass takes the next entry
    of ``handoff`` (left by :func:`first_pass_of_recomputation`) as its super-chunks' start
    states and skips the passes that would compute them."""
    before = getattr(_STATE, "replay", None)
    _STATE.replay = handoff
    try:
        yield
    finally:
        _STATE.replay = before


def recomputation_contexts():
    """``(first pass, recomputation)`` contexts for one checkpointed call (``context_fn``).

    The first pass's scans keep their super-chunk end states (a few MB: one ``[E, N]``
    state per ~1000 tokens) and hand them to the same scans of the recomputation, which
    then only re-walks the chunks to write ``y`` and the chunk states (its super-chunks
    span the same tokens). The two passes of one call share a private list, so they pair
    up whatever order the backward pass recomputes the calls in.
    """
    handoff: list = []
    return first_pass_of_recomputation(handoff), recomputation_from(handoff)


# ---------------------------------------------------------------- device helpers


@triton.jit
def _combine(a1, b1, a2, b2):
    """Compose two steps of ``h -> a h + b`` (1 before 2)."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _scan_rev(a, b, FLIP: tl.constexpr):
    """Suffix scan along axis 0: ``x_t = a_t x_{t+1} + b_t`` (from zero past the end)."""
    if FLIP:  # fallback where the reverse scan mis-orders a non-commutative combine
        pa, pb = tl.associative_scan((tl.flip(a, 0), tl.flip(b, 0)), 0, _combine)
        return tl.flip(pa, 0), tl.flip(pb, 0)
    else:
        return tl.associative_scan((a, b), 0, _combine, reverse=True)


@triton.jit
def _load_a_log2(a_ptr, e, n, N, en_mask):
    """``A [BE, BN] * log2(e)``, so that ``exp(delta A) = exp2(delta * this)``."""
    a = tl.load(a_ptr + e[:, None] * N + n[None, :], mask=en_mask, other=0.0)
    return a * 1.4426950408889634


@triton.jit
def _ex2(x):
    """``2**x``; on CUDA one MUFU instruction (flushing results below 1e-38 to zero)."""
    if _FAST_MATH:
        return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=r,r", [x],
                                         dtype=tl.float32, is_pure=True, pack=1)
    else:
        return tl.exp2(x)


@triton.jit
def _lg2(x):
    """``log2(x)``; on CUDA one MUFU instruction."""
    if _FAST_MATH:
        return tl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=r,r", [x],
                                         dtype=tl.float32, is_pure=True, pack=1)
    else:
        return tl.log2(x)


@triton.jit
def _sigmoid(x):
    """``1 / (1 + exp(-x))`` with the approximate exp2 and reciprocal (0 and 1 at the ends)."""
    return tl.fdiv(1.0, 1.0 + _ex2(x * -1.4426950408889634))


@triton.jit
def _softplus(x):
    """torch's softplus (threshold 20) with an accurate log1p for small ``exp(x)``."""
    y = _ex2(tl.minimum(x, 20.0) * 1.4426950408889634)
    w = 1.0 + y
    lp = tl.where(w == 1.0, y, tl.fdiv(y * _lg2(w) * 0.6931471805599453, w - 1.0))
    return tl.where(x > 20.0, x, lp)


@triton.jit
def _load_delta(d_ptr, bias_ptr, tok_off, col_off, mask2, e, e_mask,
                HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Raw delta ``[T, BE]`` (+ bias) and the step size actually used (0 outside).

    ``tok_off [T]`` are the tokens' offsets, ``col_off`` ``[T or 1, BE]`` the channels'.
    """
    raw = tl.load(d_ptr + tok_off[:, None] + col_off, mask=mask2, other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw += tl.load(bias_ptr + e, mask=e_mask, other=0.0).to(tl.float32)[None, :]
    if SOFTPLUS:
        dt = _softplus(raw)
    else:
        dt = raw
    return raw, tl.where(mask2, dt, 0.0)


# ---------------------------------------------------------------- forward kernels


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
    ks = tl.program_id(0)
    e = tl.program_id(1) * BE + tl.arange(0, BE)
    bb = tl.program_id(2).to(tl.int64)
    n = tl.arange(0, BN)
    e_mask, n_mask = e < E, n < N
    en_mask = e_mask[:, None] & n_mask[None, :]
    a_mat = _load_a_log2(a_ptr, e, n, N, en_mask)
    last = tl.arange(0, T)[:, None, None] == T - 1
    h = tl.zeros((BE, BN), tl.float32)
    ds = tl.zeros((BE,), tl.float32)
    k0 = ks * SUB
    for j in range(0, tl.minimum(K - k0, SUB)):
        t = (k0 + j) * T + tl.arange(0, T)
        t_mask = t < L
        mask2 = t_mask[:, None] & e_mask[None, :]
        t64 = t.to(tl.int64)
        _, dt = _load_delta(d_ptr + bb * sd_b, bias_ptr, t64 * sd_t, e[None, :], mask2, e,
                            e_mask, HAS_BIAS, SOFTPLUS)
        u = tl.load(u_ptr + bb * su_b + t64[:, None] * su_t + e[None, :], mask=mask2, other=0.0)
        bm = tl.load(b_ptr + bb * sb_b + t64[:, None] * sb_t + n[None, :],
                     mask=t_mask[:, None] & n_mask[None, :], other=0.0).to(tl.float32)
        a = _ex2(dt[:, :, None] * a_mat[None, :, :])
        b = (dt * u.to(tl.float32))[:, :, None] * bm[:, None, :]
        pa, hl = tl.associative_scan((a, b), 0, _combine)
        # masked tokens past L have a = 1, b = 0: the state passes through unchanged
        h = tl.sum(tl.where(last, hl + pa * h[None, :, :], 0.0), axis=0)
        ds += tl.sum(dt, axis=0)
    base = (bb * KS + ks) * E
    tl.store(s_ptr + (base + e[:, None]) * N + n[None, :], h, mask=en_mask)
    tl.store(ds_ptr + base + e, ds, mask=e_mask)


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
    a_mat = _load_a_log2(a_ptr, e, n, N, en_mask)
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
        p = _ex2(ds[:, :, None] * a_mat[None, :, :])
        pc, hc = tl.associative_scan((p, h), 0, _combine)
        h = hc + pc * carry[None, :, :]
        tl.store(s_ptr + off, h, mask=m3)
        carry = tl.sum(tl.where((rows == BK - 1)[:, None, None], h, 0.0), axis=0)


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
    ks = tl.program_id(0)
    e = tl.program_id(1) * BE + tl.arange(0, BE)
    bb = tl.program_id(2).to(tl.int64)
    n = tl.arange(0, BN)
    e_mask, n_mask = e < E, n < N
    en_mask = e_mask[:, None] & n_mask[None, :]
    a_mat = _load_a_log2(a_ptr, e, n, N, en_mask)
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
        _, dt = _load_delta(d_ptr + bb * sd_b, bias_ptr, t64 * sd_t, e[None, :], mask2, e,
                            e_mask, HAS_BIAS, SOFTPLUS)
        u = tl.load(u_ptr + bb * su_b + t64[:, None] * su_t + e[None, :], mask=mask2,
                    other=0.0).to(tl.float32)
        bm = tl.load(b_ptr + bb * sb_b + t64[:, None] * sb_t + n[None, :], mask=tn_mask,
                     other=0.0).to(tl.float32)
        cm = tl.load(c_ptr + bb * sc_b + t64[:, None] * sc_t + n[None, :], mask=tn_mask,
                     other=0.0).to(tl.float32)
        a = _ex2(dt[:, :, None] * a_mat[None, :, :])
        b = (dt * u)[:, :, None] * bm[:, None, :]
        pa, hl = tl.associative_scan((a, b), 0, _combine)
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
            y = y * z * _sigmoid(z)
        tl.store(y_ptr + bb * sy_b + t64[:, None] * sy_t + e[None, :], y, mask=mask2)


# ---------------------------------------------------------------- backward kernels


@triton.jit
def _gate_grad(dy_ptr, z_ptr, row_dy, row_z, mask2, HAS_Z: tl.constexpr):
    """``g = dy * SiLU(z)``: the gradient reaching ``<C, h> + D u``; also returns ``dy``, ``z``."""
    dy = tl.load(dy_ptr + row_dy, mask=mask2, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + row_z, mask=mask2, other=0.0).to(tl.float32)
        g = dy * z * _sigmoid(z)
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
    ks = tl.program_id(0)
    e = tl.program_id(1) * BE + tl.arange(0, BE)
    bb = tl.program_id(2).to(tl.int64)
    n = tl.arange(0, BN)
    e_mask, n_mask = e < E, n < N
    en_mask = e_mask[:, None] & n_mask[None, :]
    a_mat = _load_a_log2(a_ptr, e, n, N, en_mask)
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
        _, dt = _load_delta(d_ptr + bb * sd_b, bias_ptr, t64 * sd_t, e[None, :], mask2, e,
                            e_mask, HAS_BIAS, SOFTPLUS)
        _, _, g = _gate_grad(dy_ptr + bb * sdy_b, z_ptr + bb * sz_b,
                             t64[:, None] * sdy_t + e[None, :], t64[:, None] * sz_t + e[None, :],
                             mask2, HAS_Z)
        cm = tl.load(c_ptr + bb * sc_b + t64[:, None] * sc_t + n[None, :],
                     mask=t_mask[:, None] & n_mask[None, :], other=0.0).to(tl.float32)
        a = _ex2(dt[:, :, None] * a_mat[None, :, :])
        pa, nu = _scan_rev(a, a * (g[:, :, None] * cm[:, None, :]), FLIP)
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
            raw, dt = _load_delta(d_ptr + bb * sd_b, bias_ptr, t64 * sd_t, row_e, mask2, e,
                                  e_mask, HAS_BIAS, SOFTPLUS)
            mask_n = (tn < L)[:, None] & e_mask[None, :]
            _, dt_next = _load_delta(d_ptr + bb * sd_b, bias_ptr, (t64 + 1) * sd_t, row_e, mask_n,
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
            a = _ex2(dt[:, :, None] * a2[None, :, :])
            b = (dt * u)[:, :, None] * bm[:, None, :]
            pa, h = tl.associative_scan((a, b), 0, _combine)
            h0 = tl.load(h_ptr + (bb * K + tl.maximum(k - 1, 0)) * E * N + en_off,
                         mask=tl.where(k > 0, en_mask, False), other=0.0)
            h = h + pa * h0[None, :, :]

            # adjoint lambda_t = g_t C_t + a_{t+1} lambda_{t+1}; mu = a_s' lambda_s' of the
            # next chunk: from Q of the next super-chunk, or left in M by the later chunk
            alpha = _ex2(dt_next[:, :, None] * a2[None, :, :])
            alpha = tl.where(rows == T - 1, 1.0, alpha)
            p_alpha, lam = _scan_rev(alpha, g[:, :, None] * cm[:, None, :], FLIP)
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
                sz = _sigmoid(z)
                dz = dy * y_pre * sz * (1.0 + z * (1.0 - sz))
                tl.store(dz_ptr + bb * L * E + t64[:, None] * E + row_e, dz, mask=mask2)
            if SOFTPLUS:
                d_raw = d_dt * _sigmoid(raw)
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
        dt = tl.where(m_e, _softplus(raw), 0.0)
    else:
        dt = tl.where(m_e, raw, 0.0)
    u = tl.load(u_ptr + bb * su_b + t * su_t + ec, mask=m_e, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + bb * sdy_b + t * sdy_t + ec, mask=m_e, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + bb * sz_b + t * sz_t + ec, mask=m_e, other=0.0).to(tl.float32)
        sz = _sigmoid(z)
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
            a = _ex2(dt[None, :] * a2)
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
                d_dt = d_dt * _sigmoid(raw)
            d_dt = tl.where(m_e, d_dt, 0.0)
            d_bias += d_dt
            tl.store(du_ptr + out_b + t * E + e, du, mask=m_e)
            tl.store(dd_ptr + out_b + t * E + e, d_dt, mask=m_e)
            tl.store(db_ptr + (part_b + t) * N + n, tl.sum(lam * dtu[None, :], axis=1), mask=m_n)
            d_a -= lam_b * (dtu * dt_run)[None, :]
            dt_run -= dt
            nu = _ex2(dt[None, :] * a2) * lam
        tl.debug_barrier()
    base = (bb * KS + ks) * E
    tl.store(da_ptr + base * N + ne_off, d_a, mask=ne_mask)
    tl.store(dds_ptr + base + e, d_skip, mask=e_mask)
    tl.store(dbias_ptr + base + e, d_bias, mask=e_mask)


# ---------------------------------------------------------------- reverse-scan probe


@triton.jit
def _probe_kernel(a_ptr, b_ptr, o_ptr, T: tl.constexpr, BE: tl.constexpr, BN: tl.constexpr):
    t = tl.arange(0, T)[:, None, None]
    e = tl.arange(0, BE)[None, :, None]
    n = tl.arange(0, BN)[None, None, :]
    off = (t * BE + e) * BN + n
    _, h = _scan_rev(tl.load(a_ptr + off), tl.load(b_ptr + off), False)
    tl.store(o_ptr + off, h)


@functools.cache
def _reverse_scan_needs_flip(device_index: int) -> bool:
    """True when this Triton's ``reverse=True`` scan mis-orders a non-commutative combine.

    (An open Triton issue, #4362, reports wrong reverse scans; check once per device and
    fall back to flip + forward scan, which is always right.)
    """
    g = torch.Generator().manual_seed(0)
    a = torch.rand(DEFAULT_CHUNK, BWD_BLOCK_E, 16, generator=g) * 0.5 + 0.5
    b = torch.randn(DEFAULT_CHUNK, BWD_BLOCK_E, 16, generator=g)
    want = torch.empty_like(b)
    acc = torch.zeros_like(b[0])
    for i in reversed(range(a.shape[0])):
        acc = a[i] * acc + b[i]
        want[i] = acc
    dev = torch.device("cuda", device_index) if device_index >= 0 else torch.device("cpu")
    a, b = a.to(dev), b.to(dev)
    out = torch.empty_like(b)
    _probe_kernel[(1,)](a, b, out, DEFAULT_CHUNK, BWD_BLOCK_E, 16)
    return not torch.allclose(out.cpu(), want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- host side


def _unit_last(x: torch.Tensor | None) -> torch.Tensor | None:
    """The kernels take any batch/token strides but need the last axis contiguous."""
    if x is None:
        return None
    return x if x.stride(-1) == 1 else x.contiguous()


def _bt_strides(x: torch.Tensor | None) -> tuple[int, int]:
    return (0, 0) if x is None else (x.stride(0), x.stride(1))


def _check(args: ScanArgs) -> None:
    if args.u.device.type != "cuda" and not interpreting():
        raise ValueError(f"triton scan needs CUDA tensors, got {args.u.device}")
    args.check_shapes()


def _check_chunk(u: torch.Tensor, chunk: int | None, tensors=()) -> int:
    """The chunk length to use (a power of two); also rejects float64 inputs.

    Default: ``DEFAULT_CHUNK`` when a backward pass may follow (any of ``tensors`` requires
    grad), else ``INFER_CHUNK`` (the forward alone is fastest with shorter chunks).
    """
    if chunk is None:
        grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in tensors)
        chunk = DEFAULT_CHUNK if grad else INFER_CHUNK
    chunk = int(chunk)
    if chunk < 2 or chunk & (chunk - 1):
        raise ValueError(f"chunk must be a power of two, got {chunk}")
    if u.dtype == torch.float64:
        raise ValueError("triton scan computes in float32; use the reference backend for float64")
    return chunk


def _flip_mode(device: torch.device) -> bool:
    if device.type != "cuda":
        return _reverse_scan_needs_flip(-1)
    index = torch.cuda.current_device() if device.index is None else device.index
    return _reverse_scan_needs_flip(index)


def _sub_chunks(chunks: int, others: int, min_programs: int, max_sub: int) -> int:
    """Chunks of ``T`` tokens per super-chunk (one program walks them in a loop).

    As many as keep at least ``min_programs`` programs (``chunks / sub * others``, where
    ``others`` counts the programs per chunk), between 1 and ``max_sub``: long sequences get
    few, long-running programs and a short carry pass; short ones stay one chunk a program.
    """
    return max(1, min(int(max_sub), chunks * others // max(int(min_programs), 1)))


def _forward(u, delta, A, B, C, D, z, delta_bias, softplus, chunk, store_states, starts=None):
    """Launch the three forward stages; returns ``y``, with ``store_states`` the true end
    state of every chunk ``H [Bt, K, E, N]`` (else None), the super-chunks' true end states
    ``S [Bt, KS, E, N]`` and the tokens a super-chunk spans.

    ``starts``: ``(S, span)`` of an earlier forward over the same inputs (any chunk length
    dividing ``span``): stages 1 and 2 are skipped, stage 3 walks super-chunks of ``span``
    tokens from those states. Ignored when the shapes do not fit.
    """
    bt, length, e = u.shape
    n = A.shape[1]
    bn = pow2(n)
    k = triton.cdiv(length, chunk)
    # the forward that keeps states for a backward pass has its own launch settings
    be, warps = (STATES_BLOCK_E, STATES_WARPS) if store_states else (FWD_BLOCK_E, FWD_WARPS)
    e_blocks = triton.cdiv(e, be)
    sub = _sub_chunks(k, e_blocks * bt, FWD_MIN_PROGRAMS, FWD_MAX_SUB)
    if starts is not None:
        S, span = starts
        if (span % chunk == 0 and S.device == u.device
                and S.shape == (bt, triton.cdiv(length, span), e, n)):
            sub = span // chunk
        else:
            starts = None
    ks = triton.cdiv(k, sub)
    dummy = A  # placeholder pointer for absent optional tensors
    grid = (ks, e_blocks, bt)
    if starts is None:
        S = torch.empty(bt, ks, e, n, device=u.device, dtype=torch.float32)
        DS = torch.empty(bt, ks, e, device=u.device, dtype=torch.float32)
        _chunk_end_kernel[grid](
            u, delta, B, A, delta_bias if delta_bias is not None else dummy, S, DS,
            length, e, n, k, ks, sub, *_bt_strides(u), *_bt_strides(delta),
            *_bt_strides(B), HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus,
            T=chunk, BE=be, BN=bn, num_warps=warps,
        )
        _carry(S, DS, A, reverse=False)
    # one chunk per super-chunk: the carried summaries already are the chunk end states
    H = S if store_states and sub == 1 else None
    if store_states and sub > 1:
        H = torch.empty(bt, k, e, n, device=u.device, dtype=torch.float32)
    y = torch.empty(bt, length, e, device=u.device, dtype=u.dtype)
    _chunk_out_kernel[grid](
        u, delta, B, C, A, D if D is not None else dummy, z if z is not None else u,
        delta_bias if delta_bias is not None else dummy, S, y, H if H is not None else dummy,
        length, e, n, k, ks, sub, *_bt_strides(u), *_bt_strides(delta),
        *_bt_strides(B), *_bt_strides(C), *_bt_strides(z), *_bt_strides(y),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=softplus, STORE_STATES=store_states and sub > 1, T=chunk, BE=be, BN=bn,
        num_warps=warps,
    )
    return y, H, S, sub * chunk


def _carry(S: torch.Tensor, DS: torch.Tensor, A: torch.Tensor, reverse: bool) -> None:
    bt, k, e, n = S.shape
    be = 1  # one channel per program: the carry is a sequential walk, so spread it wide
    _carry_kernel[(triton.cdiv(e, be), bt)](
        S, DS, A, e, n, k, REVERSE=reverse, BK=min(CARRY_BLOCK_K, pow2(k)), BE=be, BN=pow2(n),
        num_warps=4,
    )


def _channel_groups(blocks: int, chunks: int) -> tuple[int, int]:
    """Split ``blocks`` channel blocks into groups, one program per (super-chunk, group).

    A program sums ``dB, dC`` over its group's channels in registers; the groups' partial
    sums (``[groups, Bt, L, N]``) are added by torch. Few groups when there are many
    super-chunks (little partial traffic), more when they alone don't fill the GPU.
    """
    groups = min(blocks, max(1, triton.cdiv(BWD_MIN_PROGRAMS, chunks)))
    per_prog = triton.cdiv(blocks, groups)
    return triton.cdiv(blocks, per_prog), per_prog


class _TritonScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus, chunk):
        A32 = A.float().contiguous()
        D32 = None if D is None else D.float().contiguous()
        bias32 = None if delta_bias is None else delta_bias.float().contiguous()
        # the chunk end states are only kept when a backward pass may come, and not in
        # the first pass of a recomputation (its saved tensors are replaced; see
        # first_pass_of_recomputation), which saves a placeholder in their place
        first = getattr(_STATE, "first_pass", False)
        store = any(ctx.needs_input_grad) and not first
        # a recomputation takes the super-chunk states its first pass handed over
        replay = None if first else getattr(_STATE, "replay", None)
        starts = replay.pop(0) if replay else None
        y, H, S, span = _forward(u, delta, A32, B, C, D32, z, bias32, softplus,
                                 INFER_CHUNK if first else chunk, store_states=store,
                                 starts=starts if store else None)
        if first:
            H = A32.new_empty(0)
            handoff = getattr(_STATE, "handoff", None)
            if handoff is not None:
                handoff.append((S, span))
        ctx.save_for_backward(u, delta, A32, B, C, D32, z, bias32, H)
        ctx.softplus, ctx.chunk = softplus, chunk
        ctx.dtypes = (A.dtype, None if D is None else D.dtype,
                      None if delta_bias is None else delta_bias.dtype)
        return y

    @staticmethod
    def backward(ctx, dy):
        dy = _unit_last(dy)
        if WALK_BWD:
            return _walk_backward(ctx, dy)
        u, delta, A, B, C, D, z, bias, H = ctx.saved_tensors
        bt, length, e = u.shape
        n = A.shape[1]
        bn = pow2(n)
        chunk = ctx.chunk
        k = H.shape[1]
        flip = _flip_mode(u.device)
        dummy = A
        f32 = dict(device=u.device, dtype=torch.float32)
        # super-chunks of the backward pass (its own policy; H is kept per chunk)
        sub = _sub_chunks(k, bt, BWD_MIN_PROGRAMS, BWD_MAX_SUB)
        ks = triton.cdiv(k, sub)
        # adjoint at every super-chunk start: reverse local pass, then reverse carry
        Q = torch.empty(bt, ks, e, n, **f32)
        DS = torch.empty(bt, ks, e, **f32)
        grid_f = (ks, triton.cdiv(e, ADJ_BLOCK_E), bt)
        _chunk_adj_kernel[grid_f](
            dy, z if z is not None else u, delta, C, A,
            bias if bias is not None else dummy, Q, DS, length, e, n, k, ks, sub,
            *_bt_strides(dy), *_bt_strides(z), *_bt_strides(delta), *_bt_strides(C),
            HAS_Z=z is not None, HAS_BIAS=bias is not None, SOFTPLUS=ctx.softplus, FLIP=flip,
            T=chunk, BE=ADJ_BLOCK_E, BN=bn, num_warps=ADJ_WARPS,
        )
        _carry(Q, DS, A, reverse=True)

        groups, per_prog = _channel_groups(triton.cdiv(e, BWD_BLOCK_E), bt * ks)
        du = torch.empty(bt, length, e, **f32)
        dd = torch.empty(bt, length, e, **f32)
        dz = torch.empty(bt, length, e, **f32) if z is not None else None
        dB = torch.empty(groups, bt, length, n, **f32)
        dC = torch.empty(groups, bt, length, n, **f32)
        # mu handed from chunk to chunk within a super-chunk (scratch); with one chunk per
        # super-chunk the kernel never touches it (1 GB at E=64, L=2M, Bt=2: not allocated)
        M = torch.empty(bt, ks, e, n, **f32) if sub > 1 else dummy
        dA = torch.empty(bt, ks, e, n, **f32)
        dD = torch.empty(bt, ks, e, **f32)
        dbias = torch.empty(bt, ks, e, **f32)
        _chunk_bwd_kernel[(ks, groups, bt)](
            u, delta, B, C, A, D if D is not None else dummy,
            z if z is not None else u, bias if bias is not None else dummy, dy, H, Q, M,
            du, dd, dz if dz is not None else du, dB, dC, dA, dD, dbias,
            length, e, n, k, ks, sub, bt,
            *_bt_strides(u), *_bt_strides(delta), *_bt_strides(B), *_bt_strides(C),
            *_bt_strides(z), *_bt_strides(dy),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=bias is not None,
            SOFTPLUS=ctx.softplus, FLIP=flip, T=chunk, BE=BWD_BLOCK_E, BN=bn,
            BLOCKS_PER_PROG=per_prog, num_warps=BWD_WARPS,
        )
        a_dt, d_dt, bias_dt = ctx.dtypes
        grads = [
            du.to(u.dtype),
            dd.to(delta.dtype),
            dA.sum((0, 1)).to(a_dt),
            dB.sum(0).to(B.dtype),
            dC.sum(0).to(C.dtype),
            None if D is None else dD.sum((0, 1)).to(d_dt),
            None if z is None else dz.to(z.dtype),
            None if bias is None else dbias.sum((0, 1)).to(bias_dt),
        ]
        return (*grads, None, None)


def _adjoint_starts(dy, z, delta, C, A, bias, softplus, chunk, k, sub):
    """``Q [Bt, KS, E, N]``: the true adjoint ``a_s lambda_s`` at every super-chunk's first
    token ``s`` (reverse local passes, then the reverse carry)."""
    bt, length, e = delta.shape
    n = A.shape[1]
    ks = triton.cdiv(k, sub)
    f32 = dict(device=delta.device, dtype=torch.float32)
    Q = torch.empty(bt, ks, e, n, **f32)
    DS = torch.empty(bt, ks, e, **f32)
    _chunk_adj_kernel[(ks, triton.cdiv(e, ADJ_BLOCK_E), bt)](
        dy, z if z is not None else delta, delta, C, A, bias if bias is not None else A, Q, DS,
        length, e, n, k, ks, sub,
        *_bt_strides(dy), *_bt_strides(z), *_bt_strides(delta), *_bt_strides(C),
        HAS_Z=z is not None, HAS_BIAS=bias is not None, SOFTPLUS=softplus,
        FLIP=_flip_mode(delta.device), T=chunk, BE=ADJ_BLOCK_E, BN=pow2(n), num_warps=ADJ_WARPS,
    )
    _carry(Q, DS, A, reverse=True)
    return Q


def _walk_backward(ctx, dy):
    """The backward pass through :func:`_walk_bwd_kernel` (see its docstring)."""
    u, delta, A, B, C, D, z, bias, H = ctx.saved_tensors
    bt, length, e = u.shape
    n = A.shape[1]
    chunk = ctx.chunk
    k = H.shape[1]
    blocks = triton.cdiv(e, WALK_BLOCK_E)
    sub = _sub_chunks(k, bt * blocks, WALK_MIN_PROGRAMS, WALK_MAX_SUB)
    ks = triton.cdiv(k, sub)
    Q = _adjoint_starts(dy, z, delta, C, A, bias, ctx.softplus, chunk, k, sub)
    f32 = dict(device=u.device, dtype=torch.float32)
    du = torch.empty(bt, length, e, **f32)
    dd = torch.empty(bt, length, e, **f32)
    dz = torch.empty(bt, length, e, **f32) if z is not None else None
    dB = torch.empty(blocks, bt, length, n, **f32)
    dC = torch.empty(blocks, bt, length, n, **f32)
    dA = torch.empty(bt, ks, e, n, **f32)
    dD = torch.empty(bt, ks, e, **f32)
    dbias = torch.empty(bt, ks, e, **f32)
    dummy = A
    _walk_bwd_kernel[(ks, blocks, bt)](
        u, delta, B, C, A.t().contiguous(), D if D is not None else dummy,
        z if z is not None else u,
        bias if bias is not None else dummy, dy, H, Q,
        du, dd, dz if dz is not None else du, dB, dC, dA, dD, dbias,
        length, e, n, k, ks, sub, bt,
        *_bt_strides(u), *_bt_strides(delta), *_bt_strides(B), *_bt_strides(C),
        *_bt_strides(z), *_bt_strides(dy), 0,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=bias is not None,
        SOFTPLUS=ctx.softplus, T=chunk, BE=WALK_BLOCK_E, BN=pow2(n), num_warps=WALK_WARPS,
    )
    a_dt, d_dt, bias_dt = ctx.dtypes
    grads = [
        du.to(u.dtype),
        dd.to(delta.dtype),
        dA.sum((0, 1)).to(a_dt),
        (dB[0] if blocks == 1 else dB.sum(0)).to(B.dtype),
        (dC[0] if blocks == 1 else dC.sum(0)).to(C.dtype),
        None if D is None else dD.sum((0, 1)).to(d_dt),
        None if z is None else dz.to(z.dtype),
        None if bias is None else dbias.sum((0, 1)).to(bias_dt),
    ]
    return (*grads, None, None)


def selective_scan_triton(args: ScanArgs, chunk: int | None = None) -> torch.Tensor:
    """The scan of ``args`` (see :class:`ScanArgs`), chunk-parallel.

    ``u, delta, z`` may be float32, bfloat16 or float16 with any batch/token strides.
    ``chunk``: tokens per chunk (a power of two; None = ``DEFAULT_CHUNK`` when a backward
    pass may follow, else ``INFER_CHUNK``).

    Returns ``y [Bt, L, E]`` in ``u``'s dtype; the state is float32 throughout.
    Differentiable with respect to every tensor argument.
    """
    _check(args)
    u, delta, A, B, C, D, z, delta_bias, softplus = args
    chunk = _check_chunk(u, chunk, args[:8])
    u, delta, B, C, z = (_unit_last(x) for x in (u, delta, B, C, z))
    return _TritonScan.apply(u, delta, A, B, C, D, z, delta_bias, bool(softplus), chunk)


__all__ = [
    "DEFAULT_CHUNK",
    "INFER_CHUNK",
    "first_pass_of_recomputation",
    "recomputation_contexts",
    "recomputation_from",
    "selective_scan_triton",
]
