"""Chunk-parallel selective scan in Triton (CUDA), forward and backward.

Takes a :class:`~napari_lightm.model.scan.args.ScanArgs` like every backend: token-major
``u, delta, z: [Bt, L, E]``, ``B, C: [Bt, L, N]``, ``A: [E, N]``, ``D, delta_bias: [E]``. No
transposes: the kernels read the token-major tensors in place (any batch/token strides,
unit channel stride).

Why chunks: mamba-ssm walks the tokens of each (batch, channel) sequentially, which
leaves a large GPU idle when there are few channels and millions of tokens. Here the token
axis is cut into chunks of ``T`` tokens, and ``SUB`` consecutive chunks form a super-chunk
that one program walks in a loop, carrying the state ``[BE, N]`` in registers from one
chunk to the next (``autograd._sub_chunks`` picks SUB: as large as still leaves
``FWD_MIN_PROGRAMS`` programs, at most ``FWD_MAX_SUB``; 1 for short sequences). One stage
per module, as mamba-ssm's ``ops/triton/ssd_*``:

1. ``chunk_state``: each super-chunk's end state from a zero start;
2. ``state_passing``: a scan over the super-chunk summaries gives their true end states;
3. ``chunk_scan``: every super-chunk re-walked from its true start state, writing ``y``
   (and, when a backward pass may follow, every chunk's end state ``H``);
4. ``backward`` (the chunk backward, the default) or ``backward_walk`` (two token walks per
   chunk, ``WALK_BWD``): the adjoint at every super-chunk start, then all gradients,
   recomputing the states from ``H`` instead of storing ``[Bt, L, E, N]``;
5. ``autograd``: the launch geometry, the passes above in order, the autograd Function
   and :func:`selective_scan_triton`.

``common`` holds the device helpers (the recurrence's combine, fast ``exp2``/``log2``,
softplus) and the reverse-scan probe; ``recompute`` the hand-off of super-chunk states
between the two passes of activation checkpointing. The decays are products of per-step
``exp(delta A)`` (never differences of cumulative sums in log space, which lose precision
in float32 on long decays). Launch constants: ``ops/launch.py``'s ``Scan``.
"""

from __future__ import annotations

from .autograd import selective_scan_triton
from .recompute import first_pass_of_recomputation, recomputation_contexts, recomputation_from

__all__ = [
    "first_pass_of_recomputation",
    "recomputation_contexts",
    "recomputation_from",
    "selective_scan_triton",
]
