"""Host-side checks and helpers shared by the Triton norm modules (no kernels here)."""

from __future__ import annotations

import torch

from napari_lightm.model.ops._host import DTYPES, interpreting, pow2

MAX_CHANNELS = 8192  # a row of C channels must fit one program's registers


def block_rows(tile: int, block_c: int, rows: int) -> int:
    """Rows per tile: ``tile // block_c`` rounded down to a power of two, at most ``rows``."""
    per = max(1, int(tile) // block_c)
    per = 1 << (per.bit_length() - 1)
    return max(1, min(per, pow2(rows)))


def check_device_dtype(name: str, x: torch.Tensor) -> None:
    if x.device.type != "cuda" and not interpreting():
        raise ValueError(f"triton norms need CUDA tensors, got {name} on {x.device}")
    if x.dtype not in DTYPES:
        raise ValueError(f"{name} must be float32, bfloat16 or float16, got {x.dtype}")


def check_param(name: str, p: torch.Tensor | None, c: int, device: torch.device) -> None:
    if p is None:
        return
    if not isinstance(p, torch.Tensor) or p.shape != (c,):
        shape = tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__
        raise ValueError(f"{name} must be [C={c}], got {shape}")
    if p.device != device:
        raise ValueError(f"{name} is on {p.device}, the input on {device}")


def check_channels(c: int) -> None:
    if c < 1 or c > MAX_CHANNELS:
        raise ValueError(f"channel count must be in 1..{MAX_CHANNELS}, got {c}")


def f32_param(p: torch.Tensor | None) -> torch.Tensor | None:
    """A parameter as the kernels read it: detached, float32, contiguous (None stays None)."""
    return None if p is None else p.detach().float().contiguous()


def param_grad(g: torch.Tensor | None, p: torch.Tensor | None, needed: bool):
    """The float32 gradient ``g`` in parameter ``p``'s shape and dtype, or None."""
    if g is None or p is None or not needed:
        return None
    return g.reshape(p.shape).to(p.dtype)
