"""Sequential selective scan: one step per token, any dtype (float64 too). The test oracle."""

from __future__ import annotations

import torch

from napari_lightm.model.scan.args import ScanArgs


def selective_scan_reference(args: ScanArgs) -> torch.Tensor:
    """The scan of ``args`` (see :class:`ScanArgs`), one Python step per token.

    Computed in ``u``'s dtype (float32 when ``u`` is half precision); returns ``y [Bt, L, E]``
    in ``u``'s dtype.
    """
    u, dt, A, B, C = args.in_work_dtype()
    bt, length, e = u.shape
    h = u.new_zeros(bt, e, A.shape[1])
    ys = []
    for t in range(length):
        d_t = dt[:, t, :, None]  # [Bt, E, 1]
        h = torch.exp(d_t * A) * h + d_t * B[:, t, None, :] * u[:, t, :, None]
        ys.append((h * C[:, t, None, :]).sum(-1))
    return args.finish(torch.stack(ys, dim=1), u)
