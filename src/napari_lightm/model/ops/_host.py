"""Host-side helpers shared by the Triton kernel modules (no kernels here)."""

from __future__ import annotations

import contextlib
import os

import torch
import triton

DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # the input dtypes the kernels take


def interpreting() -> bool:
    """True when Triton runs kernels in its interpreter (``TRITON_INTERPRET=1``, read per call)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def pow2(x: int) -> int:
    """The next power of two >= ``x`` (at least 1): Triton block sizes."""
    return triton.next_power_of_2(max(int(x), 1))


def on_device(x: torch.Tensor):
    """Launch on ``x``'s GPU (Triton launches on the current device)."""
    return torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()


def unit_last(x: torch.Tensor | None) -> torch.Tensor | None:
    """``x`` with a unit stride on its last axis (a copy only when it has none): the kernels
    take any batch/token strides but index the last axis contiguously."""
    if x is None:
        return None
    return x if x.stride(-1) == 1 or x.shape[-1] == 1 else x.contiguous()


def bt_strides(x: torch.Tensor | None) -> tuple[int, int]:
    """The batch and token strides of ``x [Bt, L, ...]``; ``(0, 0)`` for an absent tensor."""
    return (0, 0) if x is None else (x.stride(0), x.stride(1))
