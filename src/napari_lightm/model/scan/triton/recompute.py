"""The scan under activation checkpointing: a cheap first pass that hands its super-chunk
states to the recomputation (``model/cuda_fast.py`` uses :func:`recomputation_contexts`).
"""

from __future__ import annotations

import contextlib
import threading

STATE = threading.local()  # first_pass, handoff (first pass) and replay (recomputation)


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
    before = getattr(STATE, "first_pass", False), getattr(STATE, "handoff", None)
    STATE.first_pass, STATE.handoff = True, handoff
    try:
        yield
    finally:
        STATE.first_pass, STATE.handoff = before


@contextlib.contextmanager
def recomputation_from(handoff: list):
    """Inside: each scan that keeps chunk states for a backward pass takes the next entry
    of ``handoff`` (left by :func:`first_pass_of_recomputation`) as its super-chunks' start
    states and skips the passes that would compute them."""
    before = getattr(STATE, "replay", None)
    STATE.replay = handoff
    try:
        yield
    finally:
        STATE.replay = before


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


__all__ = ["first_pass_of_recomputation", "recomputation_contexts", "recomputation_from"]
