"""One entry point for the selective scan, with interchangeable backends.

Every backend is a function of one :class:`ScanArgs` (token-major ``u, delta, z: [Bt, L, E]``,
``A: [E, N]``, ``B, C: [Bt, L, N]``, ``D, delta_bias: [E]``), returning ``y [Bt, L, E]``.

Backends (``name``: where it runs):

- ``reference``: sequential, any dtype incl. float64; the oracle for tests.
- ``cpu``: compiled CPU kernel (numba), forward and backward.
- ``torch``: pure PyTorch chunked scan, any device.
- ``triton``: chunk-parallel Triton kernel, CUDA.
- ``mamba_ssm``: mamba-ssm's CUDA kernel, used when ``mamba_ssm`` imports.

Auto-selection picks the fastest available for the tensors' device; the
environment variable ``LIGHTM_SCAN_BACKEND`` or the ``backend`` argument force
one. :func:`resolve_backend` tells which one a call would use.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import torch

from napari_lightm.model.scan.args import ScanArgs
from napari_lightm.model.scan.reference import selective_scan_reference
from napari_lightm.model.scan.torch_chunked import selective_scan_torch

ENV_VAR = "LIGHTM_SCAN_BACKEND"


@dataclass(frozen=True)
class Backend:
    name: str
    module: str  # imported lazily: numba / triton / mamba_ssm are optional
    function: str
    devices: tuple[str, ...]  # device types it runs on
    requires: str | None = None  # the third-party module it runs on; probed by is_available

    def load(self) -> Callable:
        return getattr(importlib.import_module(self.module), self.function)


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("reference", "napari_lightm.model.scan.reference", "selective_scan_reference",
                ("cpu", "cuda", "mps")),
        Backend("cpu", "napari_lightm.model.scan.cpu", "selective_scan_cpu", ("cpu",),
                "numba"),
        Backend("torch", "napari_lightm.model.scan.torch_chunked", "selective_scan_torch",
                ("cpu", "cuda", "mps")),
        Backend("triton", "napari_lightm.model.scan.triton", "selective_scan_triton",
                ("cuda",), "triton"),
        Backend("mamba_ssm", "napari_lightm.model.scan.mamba_ssm_backend",
                "selective_scan_mamba_ssm", ("cuda",), "mamba_ssm.ops.selective_scan_interface"),
    )
}

# fastest first, per device type
PREFERENCE: dict[str, tuple[str, ...]] = {
    "cpu": ("cpu", "torch"),
    "cuda": ("triton", "mamba_ssm", "torch"),
    "mps": ("torch",),
}


@cache
def is_available(name: str) -> bool:
    """True when backend ``name`` and the package it runs on import on this machine (CUDA
    ones also need a GPU).

    The package is imported itself: our wrapper modules may import without it (mamba-ssm's
    is imported only when the scan runs).
    """
    backend = BACKENDS[name]
    if "cpu" not in backend.devices and not torch.cuda.is_available():
        return False
    try:
        if backend.requires is not None:
            importlib.import_module(backend.requires)
        backend.load()
    except Exception:  # ImportError, or mamba_ssm's failing CUDA extension
        return False
    return True


def available_backends(device: str | torch.device = "cpu") -> list[str]:
    """Backends usable on ``device``, fastest first (``reference`` last)."""
    kind = torch.device(device).type
    names = [n for n in PREFERENCE.get(kind, ("torch",)) if is_available(n)]
    return [*names, "reference"]


def resolve_backend(device: str | torch.device = "cpu", backend: str | None = None) -> str:
    """Name of the backend used for tensors on ``device``.

    ``backend`` (or else ``$LIGHTM_SCAN_BACKEND``) forces one; ``None``/``"auto"``
    picks the fastest available. Raises ValueError for an unknown or unusable name.
    """
    kind = torch.device(device).type
    wanted = backend or os.environ.get(ENV_VAR) or "auto"
    if wanted == "auto":
        return available_backends(kind)[0]
    if wanted not in BACKENDS:
        raise ValueError(
            f"unknown scan backend {wanted!r}; choose from {sorted(BACKENDS)} or 'auto'"
        )
    if kind not in BACKENDS[wanted].devices:
        raise ValueError(f"scan backend {wanted!r} does not run on {kind} tensors")
    if not is_available(wanted):
        raise ValueError(
            f"scan backend {wanted!r} is not available here (its package does not import)"
        )
    return wanted


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """Selective scan ``y = SSM(u)`` (optionally ``* SiLU(z)``) with the chosen backend.

    See :class:`ScanArgs` for the arguments. The state is kept in float32 (float64 for
    float64 inputs) whatever the input dtype, also under autocast.
    """
    args = ScanArgs(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    name = resolve_backend(u.device, backend)
    fn = BACKENDS[name].load()
    with torch.autocast(device_type=u.device.type, enabled=False):
        return fn(args)


__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "ScanArgs",
    "available_backends",
    "is_available",
    "resolve_backend",
    "selective_scan",
    "selective_scan_reference",
    "selective_scan_torch",
]
