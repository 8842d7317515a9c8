"""Sequential selective scan: one step per token, any dtype (float64 too). The test oracle."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """Selective scan in the token-major layout, one Python step per token.

    Args:
        u: inputs ``[Bt, L, E]``.
        delta: step sizes ``[Bt, L, E]`` (before ``delta_bias`` / softplus).
        A: state matrix ``[E, N]`` (negative for a stable scan).
        B: input matrix ``[Bt, L, N]``.
        C: output matrix ``[Bt, L, N]``.
        D: skip ``[E]`` or None.
        z: gate ``[Bt, L, E]`` or None; the output is multiplied by ``SiLU(z)``.
        delta_bias: ``[E]`` added to ``delta`` before the softplus.
        delta_softplus: apply softplus to ``delta``.

    Returns:
        ``y`` ``[Bt, L, E]`` in the dtype of ``u``. Computed in ``u``'s dtype
        (upcast to float32 when ``u`` is half precision).
    """
    dtype_in = u.dtype
    work = torch.float64 if dtype_in == torch.float64 else torch.float32
    u, delta, A, B, C = (t.to(work) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(work)
    if delta_softplus:
        delta = F.softplus(delta)
    bt, length, e = u.shape
    n = A.shape[1]
    h = u.new_zeros(bt, e, n)
    ys = []
    for t in range(length):
        d_t = delta[:, t, :, None]  # [Bt, E, 1]
        h = torch.exp(d_t * A) * h + d_t * B[:, t, None, :] * u[:, t, :, None]
        ys.append((h * C[:, t, None, :]).sum(-1))
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + u * D.to(work)
    if z is not None:
        y = y * F.silu(z.to(work))
    return y.to(dtype_in)
