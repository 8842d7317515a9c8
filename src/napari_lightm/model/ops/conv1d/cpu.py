"""The Mamba mixer's ``SiLU(causal depthwise conv1d(x))`` on the CPU (numba), for inference.

One pass over memory instead of torch's pad, multiply-adds, bias and SiLU; the mixer uses
it for float32 inference next to the numba scan (``Mamba.conv_silu``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from numba import njit

from napari_lightm.model.ops._numba import JIT, run_tasks, sigmoid

CONV_WIDTH = 4  # the fused conv kernel's taps (mamba's d_conv); narrower weights are zero-padded


@njit(nogil=True, **JIT)
def _conv_silu_tasks(lo, hi, n_spans, x, w_t, bias, out):
    """Tasks ``lo..hi-1`` of ``out = SiLU(causal depthwise conv1d(x))`` (no grad).

    A task is one batch row and one of ``n_spans`` token spans. x, out: ``[Bt, L, E]``;
    w_t: the conv weight transposed and left-padded to CONV_WIDTH taps,
    ``[CONV_WIDTH, E]`` (the last tap meets the current token); bias: ``[E]``.
    """
    length = x.shape[1]
    n_channels = x.shape[2]
    span = -(-length // n_spans)
    for task in range(lo, hi):
        b = task // n_spans
        t0 = (task % n_spans) * span
        t1 = min(length, t0 + span)
        for t in range(t0, min(t1, CONV_WIDTH - 1)):  # the first tokens see zero padding
            for i in range(n_channels):
                s = bias[i] + w_t[3, i] * x[b, t, i]
                if t >= 1:
                    s += w_t[2, i] * x[b, t - 1, i]
                if t >= 2:
                    s += w_t[1, i] * x[b, t - 2, i]
                out[b, t, i] = s * sigmoid(s)
        for t in range(max(t0, CONV_WIDTH - 1), t1):
            for i in range(n_channels):
                s = (bias[i] + w_t[0, i] * x[b, t - 3, i] + w_t[1, i] * x[b, t - 2, i]
                     + w_t[2, i] * x[b, t - 1, i] + w_t[3, i] * x[b, t, i])
                out[b, t, i] = s * sigmoid(s)


def causal_conv1d_silu_cpu(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """``SiLU(causal depthwise conv1d(x))`` in the token-major layout, for inference (no grad).

    Args:
        x: ``[Bt, L, E]`` float32.
        weight: ``[E, 1, width]`` (``nn.Conv1d(E, E, width, groups=E)``'s weight).
        bias: ``[E]``.

    Returns ``[Bt, L, E]``; equal to left-padding ``width - 1`` zeros, the depthwise
    convolution and SiLU, in one pass over memory.
    """
    bt, length, e = x.shape
    width = weight.shape[-1]
    if x.dtype != torch.float32 or width > CONV_WIDTH:
        raise ValueError(
            f"causal_conv1d_silu_cpu needs float32 [Bt, L, E] and at most {CONV_WIDTH} taps; "
            f"got {x.dtype}, {width} taps"
        )
    x = x.contiguous()
    w_t = F.pad(weight.detach()[:, 0, :].float(), (CONV_WIDTH - width, 0)).t().contiguous()
    out = torch.empty_like(x)
    n_spans = max(1, min(4 * torch.get_num_threads(), length // 4096))
    run_tasks(_conv_silu_tasks, bt * n_spans, n_spans, x.detach().numpy(), w_t.numpy(),
              bias.detach().to(torch.float32).contiguous().numpy(), out.numpy())
    return out


__all__ = ["CONV_WIDTH", "causal_conv1d_silu_cpu"]
