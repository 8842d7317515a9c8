"""mamba-ssm's CUDA selective scan behind the token-major :class:`ScanArgs` of our backends.

``mamba_ssm`` is imported lazily: it only imports where its CUDA extension was
compiled for the machine (see ``../shared/gpu/``); elsewhere this backend raises
ImportError and the dispatcher skips it.
"""

from __future__ import annotations

import torch

from napari_lightm.model.scan.args import ScanArgs


def _selective_scan_fn():
    """mamba-ssm's autograd-aware scan; ImportError when mamba-ssm is not usable."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as exc:  # its import also fails when the CUDA extension is missing
        raise ImportError(f"mamba_ssm is not usable here: {exc}") from exc
    return selective_scan_fn


def selective_scan_mamba_ssm(args: ScanArgs) -> torch.Tensor:
    """The scan of ``args`` (see :class:`ScanArgs`) by mamba-ssm's kernel, in its
    ``[Bt, E, L]`` layout.

    Returns ``y [Bt, L, E]`` in ``u``'s dtype; differentiable (mamba-ssm's backward).
    """
    u, delta, A, B, C, D, z, delta_bias, delta_softplus = args
    fn = _selective_scan_fn()
    if u.device.type != "cuda":
        raise ValueError(f"mamba_ssm scan needs CUDA tensors, got {u.device}")

    def channel_major(x: torch.Tensor | None) -> torch.Tensor | None:
        # mamba-ssm wants the token axis contiguous: [Bt, L, X] -> [Bt, X, L]
        return None if x is None else x.transpose(1, 2).contiguous()

    y = fn(
        channel_major(u), channel_major(delta), A.float().contiguous(),
        channel_major(B), channel_major(C),
        None if D is None else D.float(), channel_major(z),
        None if delta_bias is None else delta_bias.float(), delta_softplus,
    )
    return y.transpose(1, 2)


__all__ = ["selective_scan_mamba_ssm"]
