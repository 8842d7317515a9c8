"""Device choice: ``auto`` picks CUDA > MPS > CPU; a named device that is not there is an error."""

from __future__ import annotations

from typing import Any


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_device(device: Any = "auto") -> Any:
    """Resolve ``device`` to a ``torch.device``.

    Args:
        device: ``"auto"`` / ``None`` (CUDA > MPS > CPU), ``"cpu"``, ``"cuda"``,
            ``"cuda:N"``, ``"mps"`` or a ``torch.device``.

    Returns:
        ``torch.device``; ``"cuda"`` becomes ``cuda:0`` (or ``cuda:LOCAL_RANK`` under torchrun).

    Raises:
        ValueError: unknown name, or a device this machine does not have.
    """
    import os

    import torch

    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device.strip().lower() if isinstance(device, str) else device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"unknown device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from err
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ValueError(f"device {device!r} asked for, but this machine has no CUDA GPU")
        index = dev.index if dev.index is not None else int(os.environ.get("LOCAL_RANK", 0))
        if index >= n:
            raise ValueError(f"device {device!r} asked for, but this machine has {n} CUDA GPU(s)")
        return torch.device("cuda", index)
    if dev.type == "mps":
        if not _mps_available():
            raise ValueError(f"device {device!r} asked for, but MPS (Apple GPU) is not available")
        return dev
    raise ValueError(f"unsupported device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")


__all__ = ["pick_device"]
