"""Pure-PyTorch chunked two-pass selective scan for any device (CUDA without mamba-ssm, MPS, CPU).

Pass 1 runs every chunk from a zero state in parallel (a Python loop over the
steps of a chunk, vectorised over chunks) and keeps only each chunk's end state
and total decay; a short carry pass turns those into each chunk's true start
state; pass 2 re-runs the chunks from their start states and emits ``y``. Each
step's decay ``exp(delta * A)`` is formed inside the loop (no log-space
cumulative sums, which lose precision in float32 on long decays).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from napari_lightm.model.scan.args import ScanArgs

DEFAULT_CHUNK = 64


def selective_scan_torch(args: ScanArgs, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """The scan of ``args`` (see :class:`ScanArgs`) in chunks of ``chunk`` tokens."""
    u, delta, A, B, C = args.in_work_dtype()
    bt, length, e = u.shape
    n = A.shape[1]
    t_len = min(chunk, length)
    pad = (-length) % t_len
    if pad:  # zero delta and zero input leave the state untouched
        u, delta = (F.pad(t, (0, 0, 0, pad)) for t in (u, delta))
        B, C = (F.pad(t, (0, 0, 0, pad)) for t in (B, C))
    k = (length + pad) // t_len
    uc = u.view(bt, k, t_len, e)
    dc = delta.view(bt, k, t_len, e)
    bc = B.view(bt, k, t_len, n)
    cc = C.view(bt, k, t_len, n)

    # pass 1: chunk end states from zero, and the product of the decays
    h = u.new_zeros(bt, k, e, n)
    decay = u.new_ones(bt, k, e, n)
    for s in range(t_len):
        d_s = dc[:, :, s, :, None]
        da = torch.exp(d_s * A)
        h = da * h + d_s * bc[:, :, s, None, :] * uc[:, :, s, :, None]
        decay = decay * da
    # carry pass over chunks (sequential, k is small)
    starts = [u.new_zeros(bt, e, n)]
    for j in range(k - 1):
        starts.append(decay[:, j] * starts[-1] + h[:, j])
    h = torch.stack(starts, dim=1)
    # pass 2: outputs from the true start states
    ys = []
    for s in range(t_len):
        d_s = dc[:, :, s, :, None]
        h = torch.exp(d_s * A) * h + d_s * bc[:, :, s, None, :] * uc[:, :, s, :, None]
        ys.append((h * cc[:, :, s, None, :]).sum(-1))
    y = torch.stack(ys, dim=2).reshape(bt, k * t_len, e)[:, :length]
    return args.finish(y, u[:, :length])
