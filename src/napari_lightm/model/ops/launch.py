"""Launch constants of every Triton kernel, one class per op, and where they come from.

The kernels read these at launch time (``launch.Conv1d.FWD_WARPS``...), so a benchmark or a
test can set them for a sweep and restore them. Each class names the sweep that chose its
values: a section of ``benchmarks/gpu/bench_gpu.py`` and its table on the benchmark page,
``docs/benchmarks.md``, section "GPU kernel launch settings" (the measurements live there,
not here).

A tile of ``BLOCK_*`` sizes is clipped at launch to the next power of two of the
dimension it covers, so small inputs get small tiles.
"""

from __future__ import annotations


class Scan:
    """The selective scan (``scan/triton/``).

    Forward alone (``INFER_CHUNK``, ``FWD_*``): the fastest of bench_gpu.py's "triton
    sweep" (``triton_sweep``; docs/benchmarks.md "GPU kernel launch settings").
    With a backward pass (``DEFAULT_CHUNK``, ``BWD_*``, ``ADJ_*``, ``STATES_*``, ``WALK_*``):
    its "backward launch settings" sweep at the train step's batch of 2 (``backward_sweep``;
    docs/benchmarks.md "GPU kernel launch settings"); the
    adjoint pass and the state-keeping forward measured alike over their settings and keep
    the forward's.
    """

    INFER_CHUNK = 8  # tokens per chunk (a power of two) for a forward pass alone
    DEFAULT_CHUNK = 16  # tokens per chunk when a backward pass may follow
    FWD_BLOCK_E = 32  # channels per program, forward kernels
    FWD_WARPS = 4
    STATES_BLOCK_E = 32  # channels per program, the forward that keeps chunk states for backward
    STATES_WARPS = 4
    CARRY_BLOCK_K = 128  # chunk summaries scanned per step of the carry pass
    BWD_BLOCK_E = 2  # channels per program, the chunk backward's gradient kernel
    BWD_WARPS = 1  # one warp: the chunk's tokens stay in its threads (no cross-warp scan)
    BWD_MIN_PROGRAMS = 8192  # chunk backward: split channels over programs until this many run
    ADJ_BLOCK_E = 32  # channels per program, the backward's reverse pass (adjoint)
    ADJ_WARPS = 4
    # Super-chunks: one program walks SUB consecutive chunks, the state in registers; only
    # the super-chunk summaries go through the (latency-bound) carry pass. SUB is the largest
    # value (<= *_MAX_SUB) that still leaves *_MIN_PROGRAMS programs; MAX_SUB = 1 turns it off.
    FWD_MIN_PROGRAMS = 8192  # forward kernels: programs to keep (super-chunks x blocks x Bt)
    FWD_MAX_SUB = 128
    BWD_MAX_SUB = 1  # chunk backward (adjoint + gradient kernels)
    # The walk backward (scan/triton/backward_walk.py): WALK_BLOCK_E channels per program
    # (32 x WALK_WARPS lanes, the rest in-thread), super-chunks of up to WALK_MAX_SUB chunks
    # while WALK_MIN_PROGRAMS programs run. Off: it has not been timed compiled yet; the
    # "backward launch settings" sweep times it against the chunk backward.
    WALK_BWD = False
    WALK_BLOCK_E = 32
    WALK_WARPS = 1
    WALK_MIN_PROGRAMS = 16384
    WALK_MAX_SUB = 16


class Conv1d:
    """Causal depthwise conv1d + SiLU (``ops/conv1d/triton.py``).

    The fastest of bench_gpu.py's "fused kernels" sweep (``kernel_timings``; docs/benchmarks.md
    "GPU kernel launch settings"), L=2,097,152, E=64.
    """

    FWD_BLOCK_L = 64  # tokens per forward program
    FWD_BLOCK_E = 64  # channels per program (64 fp32 = 256 contiguous bytes per token row)
    FWD_WARPS = 8
    BWD_BLOCK_L = 16  # tokens per backward tile (both passes)
    BWD_BLOCK_E = 64
    BWD_WARPS = 4  # backward pass 1 (g and the weight/bias partial sums)
    DX_WARPS = 4  # backward pass 2 (dx)
    # backward pass 1 groups token blocks so that about this many programs run: fewer
    # programs, a smaller [B, groups, K, E] partial-sum buffer; more, more parallelism
    BWD_MIN_PROGRAMS = 4096


class Norms:
    """LayerNorm, residual + LayerNorm and GroupNorm + ReLU (``ops/norms/*_triton.py``).

    A tile is ``BLOCK_T`` rows/tokens x ``BLOCK_C = next_pow2(C)`` channels with
    ``BLOCK_T = TILE // BLOCK_C`` (rounded down to a power of two, at least 1). The
    LayerNorm forward settings are the fastest of bench_gpu.py's "fused kernels" sweep
    (``kernel_timings``; docs/benchmarks.md "GPU kernel launch settings",
    L=2,097,152, C=32); the GroupNorm sweep there had no stable winner, and the backward
    tiles are not swept.
    """

    LN_FWD_TILE = 2048  # elements per LayerNorm forward program
    LN_FWD_WARPS = 4
    LN_BWD_TILE = 2048  # elements per LayerNorm backward tile (x, dy, t and dx live at once)
    LN_BWD_WARPS = 4
    # LayerNorm backward: at most this many programs; each walks consecutive row tiles and
    # writes one row of the [programs, C] dweight/dbias partial buffers
    LN_BWD_PROGRAMS = 1024
    GN_TILE = 4096  # elements per GroupNorm program (all four GroupNorm kernels)
    GN_STATS_WARPS = 4
    GN_APPLY_WARPS = 4


class DWConv:
    """Depthwise 3x3(x3) convolution on channels-last maps (``ops/dwconv.py``).

    First settings, not swept yet: bench_gpu.py times the kernel only inside the whole
    network ("whole network: train step").
    """

    BLOCK_W = 16  # voxels of a row per program
    BLOCK_C = 32  # channels per program (32 fp32 = 128 contiguous bytes per voxel)
    WARPS = 4
    WGRAD_BLOCK_W = 8  # weight gradient: a [32 taps, 8, 32] accumulator = 64 registers/thread
    WGRAD_WARPS = 4
    WGRAD_MIN_PROGRAMS = 2048  # weight gradient: rows are grouped so that about this many run


__all__ = ["Conv1d", "DWConv", "Norms", "Scan"]
