"""Our Mamba v1 mixer: the parameters, names, shapes and init of ``mamba_ssm.Mamba``.

A state dict saved from :class:`Mamba` loads into ``mamba_ssm.Mamba`` (same
``d_model``, ``d_state=16``, ``d_conv=4``, ``expand=2``) and back. The forward
runs in the token-major layout ``[B, L, C]`` throughout; the selective scan goes
through :func:`napari_lightm.model.scan.selective_scan` and its backends.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from napari_lightm.model.scan import is_available, resolve_backend, selective_scan


class Mamba(nn.Module):
    """Selective state-space mixer (Mamba v1) on tokens ``[B, L, d_model]``.

    Args:
        d_model: token width C.
        d_state: SSM state size N (16).
        d_conv: causal depthwise convolution width (4).
        expand: inner width factor, ``E = expand * C`` (2).
        dt_rank: rank of the step-size projection; ``"auto"`` = ``ceil(C / 16)``.
        dt_min, dt_max, dt_init_floor, dt_scale: step-size init, as mamba_ssm.
        scan_backend: force a selective-scan backend (``None`` = auto / env var).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_scale: float = 1.0,
        scan_backend: str | None = None,
    ):
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.scan_backend = scan_backend
        e, n, r = self.d_inner, d_state, self.dt_rank

        self.in_proj = nn.Linear(d_model, 2 * e, bias=False)
        self.conv1d = nn.Conv1d(e, e, kernel_size=d_conv, groups=e, padding=d_conv - 1, bias=True)
        self.x_proj = nn.Linear(e, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, e, bias=True)
        self.out_proj = nn.Linear(e, d_model, bias=False)

        # step-size projection init, as mamba_ssm
        std = r**-0.5 * dt_scale
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(
            torch.rand(e) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp(min=dt_init_floor)
        inv_softplus_dt = dt + torch.log(-torch.expm1(-dt))
        with torch.no_grad():
            self.dt_proj.bias.copy_(inv_softplus_dt)
        self.dt_proj.bias._no_reinit = True

        # S4D-real init of A; A_log and D get no weight decay
        a = torch.arange(1, n + 1, dtype=torch.float32).repeat(e, 1)
        self.A_log = nn.Parameter(torch.log(a))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(e))
        self.D._no_weight_decay = True

    @property
    def backend(self) -> str:
        """Name of the scan backend this module uses on its current device."""
        return resolve_backend(self.A_log.device, self.scan_backend)

    def causal_conv(self, x: torch.Tensor) -> torch.Tensor:
        """Causal depthwise conv1d along L in the token-major layout: ``[B, L, E] -> [B, L, E]``."""
        k = self.d_conv
        length = x.shape[1]
        xp = F.pad(x, (0, 0, k - 1, 0))
        w = self.conv1d.weight[:, 0, :]  # [E, k]
        out = xp[:, 0:length] * w[:, 0]
        for j in range(1, k):
            out = out + xp[:, j : j + length] * w[:, j]
        return out + self.conv1d.bias

    def _fused_conv_available(self, x: torch.Tensor) -> bool:
        """True for CPU float32 inference with the numba backend: one-pass conv + SiLU."""
        return (
            x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.d_conv <= 4
            and not (
                torch.is_grad_enabled() and (x.requires_grad or self.conv1d.weight.requires_grad)
            )
            and self.backend == "cpu"
        )

    def conv_silu(self, x: torch.Tensor) -> torch.Tensor:
        """``SiLU(causal_conv(x))``, ``[B, L, E] -> [B, L, E]``."""
        if torch.compiler.is_compiling():  # plain ops: the compiler fuses them itself
            return F.silu(self.causal_conv(x))
        if x.is_cuda and is_available("triton"):  # one Triton pass each way
            from napari_lightm.model.ops.conv1d.triton import causal_conv1d_silu

            return causal_conv1d_silu(x, self.conv1d.weight, self.conv1d.bias)
        if self._fused_conv_available(x):
            from napari_lightm.model.ops.conv1d.cpu import causal_conv1d_silu_cpu

            return causal_conv1d_silu_cpu(x, self.conv1d.weight, self.conv1d.bias)
        return F.silu(self.causal_conv(x))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """``u [B, L, d_model] -> [B, L, d_model]``."""
        e, n, r = self.d_inner, self.d_state, self.dt_rank
        # in_proj as two products (same weights, same result as splitting one): x and z
        # come out contiguous, which the conv and the scan read at full speed
        w_x, w_z = self.in_proj.weight.split(e, dim=0)
        x = self.conv_silu(F.linear(u, w_x))
        z = F.linear(u, w_z)
        dt, b, c = self.x_proj(x).split([r, n, n], dim=-1)
        a = -torch.exp(self.A_log.float())
        # delta is formed here by one GEMM, not inside the scan: fusing dt_proj into the
        # triton scan is slower (docs/benchmarks.md, "GPU kernel launch settings")
        delta = F.linear(dt, self.dt_proj.weight)  # bias + softplus happen in the scan
        y = _scan(x, delta, a, b, c, self.D.float(), z, self.dt_proj.bias.float(),
                  self.scan_backend)
        return self.out_proj(y)


# The scans run eagerly: under ``torch.compile`` each mixer's scan is one clean graph break
# (the backends are custom kernels with their own autograd), and the compiler fuses what
# comes before and after it.


@torch.compiler.disable
def _scan(x, delta, a, b, c, d, z, delta_bias, backend):
    return selective_scan(x, delta, a, b, c, d, z, delta_bias=delta_bias, delta_softplus=True,
                          backend=backend)

