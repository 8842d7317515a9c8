"""The selective scan's arguments: the one type every backend takes."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class ScanArgs(NamedTuple):
    """The arguments of ``y = SSM(u)`` (optionally ``* SiLU(z)``), token-major.

    Attributes:
        u: inputs ``[Bt, L, E]``.
        delta: step sizes ``[Bt, L, E]`` (before ``delta_bias`` / softplus).
        A: state matrix ``[E, N]`` (negative for a stable scan).
        B: input matrix ``[Bt, L, N]``.
        C: output matrix ``[Bt, L, N]``.
        D: skip ``[E]`` or None.
        z: gate ``[Bt, L, E]`` or None; the output is multiplied by ``SiLU(z)``.
        delta_bias: ``[E]`` added to ``delta`` before the softplus, or None.
        delta_softplus: apply softplus to ``delta`` (+ ``delta_bias``).

    Every backend returns ``y [Bt, L, E]`` in ``u``'s dtype.
    """

    u: torch.Tensor
    delta: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    D: torch.Tensor | None = None
    z: torch.Tensor | None = None
    delta_bias: torch.Tensor | None = None
    delta_softplus: bool = False

    @property
    def work_dtype(self) -> torch.dtype:
        """The dtype the state is kept in: float64 for float64 ``u``, else float32."""
        return torch.float64 if self.u.dtype == torch.float64 else torch.float32

    def check_shapes(self) -> None:
        """Raise ValueError naming the first argument whose shape does not fit the others."""
        u, delta, A = self.u, self.delta, self.A
        if u.ndim != 3 or delta.shape != u.shape:
            raise ValueError(f"u and delta must be [Bt, L, E] of equal shape, got "
                             f"{tuple(u.shape)}, {tuple(delta.shape)}")
        bt, length, e = u.shape
        if A.ndim != 2 or A.shape[0] != e:
            raise ValueError(f"A must be [E={e}, N], got {tuple(A.shape)}")
        n = A.shape[1]
        for name, m in (("B", self.B), ("C", self.C)):
            if m.shape != (bt, length, n):
                raise ValueError(f"{name} must be [Bt, L, N] = {(bt, length, n)}, "
                                 f"got {tuple(m.shape)}")
        if self.z is not None and self.z.shape != u.shape:
            raise ValueError(f"z must match u {tuple(u.shape)}, got {tuple(self.z.shape)}")
        for name, v in (("D", self.D), ("delta_bias", self.delta_bias)):
            if v is not None and v.shape != (e,):
                raise ValueError(f"{name} must be [E={e}], got {tuple(v.shape)}")

    def in_work_dtype(self) -> tuple[torch.Tensor, ...]:
        """``u, dt, A, B, C`` in :attr:`work_dtype`, where ``dt`` is the step size actually
        used: ``delta + delta_bias``, through softplus when asked."""
        work = self.work_dtype
        u, dt, A, B, C = (t.to(work) for t in (self.u, self.delta, self.A, self.B, self.C))
        if self.delta_bias is not None:
            dt = dt + self.delta_bias.to(work)
        if self.delta_softplus:
            dt = F.softplus(dt)
        return u, dt, A, B, C

    def finish(self, y: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``(y + D u) * SiLU(z)`` from the state readout ``y = <C, h>`` and ``u`` (both in
        :attr:`work_dtype`), in ``u``'s input dtype."""
        work = self.work_dtype
        if self.D is not None:
            y = y + u * self.D.to(work)
        if self.z is not None:
            y = y * F.silu(self.z.to(work))
        return y.to(self.u.dtype)


__all__ = ["ScanArgs"]
