"""The Triton scan's forward and backward passes, their launch geometry, the autograd
Function and the entry point :func:`selective_scan_triton`."""

from __future__ import annotations

import torch
import triton

from napari_lightm.model.ops._host import interpreting, unit_last
from napari_lightm.model.ops.launch import Scan as LAUNCH
from napari_lightm.model.scan.args import ScanArgs

from .backward import chunk_adjoints, chunk_gradients
from .backward_walk import walk_gradients
from .chunk_scan import chunk_outputs
from .chunk_state import chunk_end_states
from .common import flip_mode as _flip_mode
from .recompute import STATE
from .state_passing import carry

# ---------------------------------------------------------------- launch geometry


def _sub_chunks(chunks: int, others: int, min_programs: int, max_sub: int) -> int:
    """Chunks of ``T`` tokens per super-chunk (one program walks them in a loop).

    As many as keep at least ``min_programs`` programs (``chunks / sub * others``, where
    ``others`` counts the programs per chunk), between 1 and ``max_sub``: long sequences get
    few, long-running programs and a short carry pass; short ones stay one chunk a program.
    """
    return max(1, min(int(max_sub), chunks * others // max(int(min_programs), 1)))


def _channel_groups(blocks: int, chunks: int) -> tuple[int, int]:
    """Split ``blocks`` channel blocks into groups, one program per (super-chunk, group).

    A program sums ``dB, dC`` over its group's channels in registers; the groups' partial
    sums (``[groups, Bt, L, N]``) are added by torch. Few groups when there are many
    super-chunks (little partial traffic), more when they alone don't fill the GPU.
    """
    groups = min(blocks, max(1, triton.cdiv(LAUNCH.BWD_MIN_PROGRAMS, chunks)))
    per_prog = triton.cdiv(blocks, groups)
    return triton.cdiv(blocks, per_prog), per_prog


# ---------------------------------------------------------------- forward


def _forward(u, delta, A, B, C, D, z, delta_bias, softplus, chunk, store_states, starts=None):
    """The three forward stages; returns ``y``, with ``store_states`` the true end state of
    every chunk ``H [Bt, K, E, N]`` (else None), the super-chunks' true end states
    ``S [Bt, KS, E, N]`` and the tokens a super-chunk spans.

    ``starts``: ``(S, span)`` of an earlier forward over the same inputs (any chunk length
    dividing ``span``): stages 1 and 2 are skipped, stage 3 walks super-chunks of ``span``
    tokens from those states. Ignored when the shapes do not fit.
    """
    bt, length, e = u.shape
    n = A.shape[1]
    k = triton.cdiv(length, chunk)
    # the forward that keeps states for a backward pass has its own launch settings
    if store_states:
        be, warps = LAUNCH.STATES_BLOCK_E, LAUNCH.STATES_WARPS
    else:
        be, warps = LAUNCH.FWD_BLOCK_E, LAUNCH.FWD_WARPS
    sub = _sub_chunks(k, triton.cdiv(e, be) * bt, LAUNCH.FWD_MIN_PROGRAMS, LAUNCH.FWD_MAX_SUB)
    if starts is not None:
        S, span = starts
        if (span % chunk == 0 and S.device == u.device
                and S.shape == (bt, triton.cdiv(length, span), e, n)):
            sub = span // chunk
        else:
            starts = None
    if starts is None:
        S, DS = chunk_end_states(u, delta, B, A, delta_bias, softplus, chunk, k, sub, be, warps)
        carry(S, DS, A, reverse=False)
    # one chunk per super-chunk: the carried summaries already are the chunk end states
    H = S if store_states and sub == 1 else None
    if store_states and sub > 1:
        H = torch.empty(bt, k, e, n, device=u.device, dtype=torch.float32)
    y = chunk_outputs(u, delta, B, C, A, D, z, delta_bias, softplus, S, H,
                      store_states and sub > 1, chunk, k, sub, be, warps)
    return y, H, S, sub * chunk


# ---------------------------------------------------------------- backward


def _adjoint_starts(dy, z, delta, C, A, bias, softplus, chunk, k, sub):
    """``Q [Bt, KS, E, N]``: the true adjoint ``a_s lambda_s`` at every super-chunk's first
    token ``s`` (reverse local passes, then the reverse carry)."""
    Q, DS = chunk_adjoints(dy, z, delta, C, A, bias, softplus, _flip_mode(delta.device), chunk,
                           k, sub)
    carry(Q, DS, A, reverse=True)
    return Q


def _chunk_backward(saved, softplus, chunk, dy):
    """Partial gradients from the chunk backward (``backward.py``), super-chunks of
    ``BWD_MAX_SUB`` chunks at most; ``saved``: the forward's saved tensors."""
    u, delta, A, B, C, D, z, bias, H = saved
    bt, e = u.shape[0], u.shape[2]
    k = H.shape[1]
    sub = _sub_chunks(k, bt, LAUNCH.BWD_MIN_PROGRAMS, LAUNCH.BWD_MAX_SUB)
    Q = _adjoint_starts(dy, z, delta, C, A, bias, softplus, chunk, k, sub)
    groups, per_prog = _channel_groups(triton.cdiv(e, LAUNCH.BWD_BLOCK_E),
                                       bt * triton.cdiv(k, sub))
    return chunk_gradients(u, delta, B, C, A, D, z, bias, dy, H, Q, softplus,
                           _flip_mode(u.device), chunk, sub, groups, per_prog)


def _walk_backward(saved, softplus, chunk, dy):
    """Partial gradients from the walk backward (``backward_walk.py``)."""
    u, delta, A, B, C, D, z, bias, H = saved
    bt, e = u.shape[0], u.shape[2]
    k = H.shape[1]
    blocks = triton.cdiv(e, LAUNCH.WALK_BLOCK_E)
    sub = _sub_chunks(k, bt * blocks, LAUNCH.WALK_MIN_PROGRAMS, LAUNCH.WALK_MAX_SUB)
    Q = _adjoint_starts(dy, z, delta, C, A, bias, softplus, chunk, k, sub)
    return walk_gradients(u, delta, B, C, A, D, z, bias, dy, H, Q, softplus, chunk, sub, blocks)


class _TritonScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus, chunk):
        A32 = A.float().contiguous()
        D32 = None if D is None else D.float().contiguous()
        bias32 = None if delta_bias is None else delta_bias.float().contiguous()
        # the chunk end states are only kept when a backward pass may come, and not in
        # the first pass of a recomputation (its saved tensors are replaced; see
        # first_pass_of_recomputation), which saves a placeholder in their place
        first = getattr(STATE, "first_pass", False)
        store = any(ctx.needs_input_grad) and not first
        # a recomputation takes the super-chunk states its first pass handed over
        replay = None if first else getattr(STATE, "replay", None)
        starts = replay.pop(0) if replay else None
        y, H, S, span = _forward(u, delta, A32, B, C, D32, z, bias32, softplus,
                                 LAUNCH.INFER_CHUNK if first else chunk, store_states=store,
                                 starts=starts if store else None)
        if first:
            H = A32.new_empty(0)
            handoff = getattr(STATE, "handoff", None)
            if handoff is not None:
                handoff.append((S, span))
        ctx.save_for_backward(u, delta, A32, B, C, D32, z, bias32, H)
        ctx.softplus, ctx.chunk = softplus, chunk
        ctx.dtypes = (A.dtype, None if D is None else D.dtype,
                      None if delta_bias is None else delta_bias.dtype)
        return y

    @staticmethod
    def backward(ctx, dy):
        saved = ctx.saved_tensors  # once: checkpointing unpacks each saved tensor once
        backward = _walk_backward if LAUNCH.WALK_BWD else _chunk_backward
        du, dd, dz, dB, dC, dA, dD, dbias = backward(saved, ctx.softplus, ctx.chunk,
                                                      unit_last(dy))
        u, delta, _, B, C, D, z, bias, _ = saved
        a_dt, d_dt, bias_dt = ctx.dtypes
        return (
            du.to(u.dtype),
            dd.to(delta.dtype),
            dA.sum((0, 1)).to(a_dt),
            dB.sum(0).to(B.dtype),
            dC.sum(0).to(C.dtype),
            None if D is None else dD.sum((0, 1)).to(d_dt),
            None if z is None else dz.to(z.dtype),
            None if bias is None else dbias.sum((0, 1)).to(bias_dt),
            None,
            None,
        )


# ---------------------------------------------------------------- entry point


def _check_chunk(u: torch.Tensor, chunk: int | None, tensors=()) -> int:
    """The chunk length to use (a power of two); also rejects float64 inputs.

    Default: ``DEFAULT_CHUNK`` when a backward pass may follow (any of ``tensors`` requires
    grad), else ``INFER_CHUNK`` (the forward alone is fastest with shorter chunks).
    """
    if chunk is None:
        grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in tensors)
        chunk = LAUNCH.DEFAULT_CHUNK if grad else LAUNCH.INFER_CHUNK
    chunk = int(chunk)
    if chunk < 2 or chunk & (chunk - 1):
        raise ValueError(f"chunk must be a power of two, got {chunk}")
    if u.dtype == torch.float64:
        raise ValueError("triton scan computes in float32; use the reference backend for float64")
    return chunk


def selective_scan_triton(args: ScanArgs, chunk: int | None = None) -> torch.Tensor:
    """The scan of ``args`` (see :class:`ScanArgs`), chunk-parallel.

    ``u, delta, z`` may be float32, bfloat16 or float16 with any batch/token strides.
    ``chunk``: tokens per chunk (a power of two; None = ``DEFAULT_CHUNK`` when a backward
    pass may follow, else ``INFER_CHUNK``; see ``ops/launch.py``'s ``Scan``).

    Returns ``y [Bt, L, E]`` in ``u``'s dtype; the state is float32 throughout.
    Differentiable with respect to every tensor argument.
    """
    if args.u.device.type != "cuda" and not interpreting():
        raise ValueError(f"triton scan needs CUDA tensors, got {args.u.device}")
    args.check_shapes()
    u, delta, A, B, C, D, z, delta_bias, softplus = args
    chunk = _check_chunk(u, chunk, args[:8])
    u, delta, B, C, z = (unit_last(x) for x in (u, delta, B, C, z))
    return _TritonScan.apply(u, delta, A, B, C, D, z, delta_bias, bool(softplus), chunk)


__all__ = ["selective_scan_triton"]
