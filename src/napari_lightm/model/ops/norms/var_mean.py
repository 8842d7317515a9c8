"""GroupNorm and LayerNorm computed from ``torch.var_mean``, for any device.

``torch.var_mean`` is a reduction torch spreads over the whole GPU, where ``nn.GroupNorm``'s
kernel runs one thread block per (sample, group); the normalisation is then one fused
scale-and-shift. Same weights, same result as the ``nn`` modules to float32 rounding;
gradients flow through the same formulas.
"""

from __future__ import annotations

import torch
from torch import nn


def group_norm(gn: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """``gn(x)`` for ``x [B, C, *S]`` via ``var_mean`` over each (sample, group) and one
    ``x * scale + shift`` pass with per-(sample, channel) ``scale``/``shift``."""
    b, c = x.shape[:2]
    g = gn.num_groups
    var, mean = torch.var_mean(x.reshape(b, g, -1), dim=-1, unbiased=False)  # [B, G]
    rstd = torch.rsqrt(var + gn.eps)
    scale = rstd.repeat_interleave(c // g, dim=1)  # [B, C]
    shift = -mean.repeat_interleave(c // g, dim=1) * scale
    if gn.affine:
        shift = shift * gn.weight + gn.bias
        scale = scale * gn.weight
    view = (b, c) + (1,) * (x.ndim - 2)
    return torch.addcmul(shift.view(view), x, scale.view(view))


def layer_norm_tokens(ln: nn.LayerNorm, t: torch.Tensor) -> torch.Tensor:
    """``ln(t)`` for tokens ``t [..., C]`` via ``var_mean`` over the last axis."""
    var, mean = torch.var_mean(t, dim=-1, keepdim=True, unbiased=False)
    y = (t - mean) * torch.rsqrt(var + ln.eps)
    if ln.elementwise_affine:
        y = torch.addcmul(ln.bias, y, ln.weight) if ln.bias is not None else y * ln.weight
    return y


__all__ = ["group_norm", "layer_norm_tokens"]
