"""Fast CPU selective scan: numba kernels for the forward and the backward pass.

Layout and parallelism: the tensors stay token-major (``[Bt, L, E]``), so for one
token the channels of a block are contiguous. Work is split into tasks of one
batch row and ``BLOCK`` (16) channels; each task walks the tokens in order and
keeps its state ``h [N, BLOCK]`` in registers/L1. The innermost loops run over
the 16 channels of the block, a compile-time trip count that LLVM turns into
whole SIMD vectors. Tasks run on a thread pool (the kernels release the GIL),
sized by ``torch.get_num_threads()``.

Accuracy: each step's decay ``exp(delta * A)`` is formed directly (no log-space
cumulative sums, which lose precision in float32 on long decays), with the
vectorisable ``exp`` / ``log1p`` of :mod:`napari_lightm.model.ops._numba`. Float64
inputs keep a float64 state (for tests).

Backward by recomputation: the forward stores the state only at the start of
every ``chunk`` tokens (``[Bt, L / chunk, N, E]``, i.e. ``L*E*N/chunk`` values);
the backward walks the chunks last to first, recomputes the chunk's states and
decays from the stored one into a small per-task buffer, then runs the adjoint
recurrence backwards through the chunk. Memory stays O(L*E).

The kernels compile on first use (a few seconds, once: ``cache=True`` keeps
them on disk), never at import of :mod:`napari_lightm`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit

from napari_lightm.model.ops._numba import JIT, ONE, run_tasks
from napari_lightm.model.ops._numba import exp as _exp
from napari_lightm.model.ops._numba import sigmoid as _sigmoid
from napari_lightm.model.ops._numba import softplus as _softplus
from napari_lightm.model.scan.args import ScanArgs

BLOCK = 16  # channels per task: one AVX-512 (two AVX2) vectors, a compile-time trip count
DEFAULT_CHUNK = 64  # tokens between stored states; the backward recomputes one chunk at a time


@njit(inline="always", **JIT)
def _step_size(delta_row, bias_row, softplus, out):
    """``out = softplus(delta + bias)`` (or without softplus) for one token's channel block."""
    if softplus:
        for i in range(BLOCK):
            out[i] = _softplus(delta_row[i] + bias_row[i])
    else:
        for i in range(BLOCK):
            out[i] = delta_row[i] + bias_row[i]


@njit(nogil=True, **JIT)
def _forward_tasks(lo, hi, u, delta, a_t, b_in, c_in, d_skip, z, bias, softplus, has_z, chunk,
                   y, h_store):
    """Run tasks ``lo..hi-1`` (task = batch row x channel block) of the forward scan.

    Channels come split into blocks, ``E = K * BLOCK`` (C-contiguous views, one float dtype):
        u, delta, z, y: ``[Bt, L, K, BLOCK]`` (``z`` unused unless ``has_z``; ``y`` is written).
        a_t: ``A`` transposed, ``[N, K, BLOCK]``. b_in, c_in: ``[Bt, L, N]``.
        d_skip, bias: ``[K, BLOCK]``.
        h_store: ``[Bt, ceil(L / chunk), N, K, BLOCK]``: the state before each chunk's
            first token (written unless its size is 0).
    """
    length = u.shape[1]
    n_blocks = u.shape[2]
    n_state = a_t.shape[0]
    save = h_store.size > 0
    for task in range(lo, hi):
        b = task // n_blocks
        k = task % n_blocks
        a_blk = a_t[:, k, :].copy()
        h = np.zeros((n_state, BLOCK), u.dtype)
        dt = np.empty(BLOCK, u.dtype)
        dtu = np.empty(BLOCK, u.dtype)
        acc = np.empty(BLOCK, u.dtype)
        for t in range(length):
            if save and t % chunk == 0:
                h_store[b, t // chunk, :, k, :] = h
            _step_size(delta[b, t, k], bias[k], softplus, dt)
            for i in range(BLOCK):
                dtu[i] = dt[i] * u[b, t, k, i]
                acc[i] = d_skip[k, i] * u[b, t, k, i]
            for n in range(n_state):
                bn = b_in[b, t, n]
                cn = c_in[b, t, n]
                for i in range(BLOCK):
                    hv = _exp(dt[i] * a_blk[n, i]) * h[n, i] + dtu[i] * bn
                    h[n, i] = hv
                    acc[i] += cn * hv
            if has_z:
                for i in range(BLOCK):
                    zz = z[b, t, k, i]
                    y[b, t, k, i] = acc[i] * zz * _sigmoid(zz)
            else:
                for i in range(BLOCK):
                    y[b, t, k, i] = acc[i]


@njit(nogil=True, **JIT)
def _backward_tasks(lo, hi, u, delta, a_t, b_in, c_in, d_skip, z, bias, softplus, has_z, chunk,
                    h_store, dy, du_out, ddelta_out, dz_out, db_part, dc_part, da_part, dd_part,
                    dbias_part):
    """Run tasks ``lo..hi-1`` of the backward scan (inputs as :func:`_forward_tasks`).

    Outputs: ``du_out, ddelta_out, dz_out [Bt, L, K, BLOCK]`` (``ddelta`` w.r.t. the
    delta before bias and softplus); per channel block partial sums ``db_part,
    dc_part [K, Bt, L, N]``; per batch row ``da_part [Bt, N, K, BLOCK]``,
    ``dd_part, dbias_part [Bt, K, BLOCK]``.
    """
    length = u.shape[1]
    n_blocks = u.shape[2]
    n_state = a_t.shape[0]
    n_chunks = h_store.shape[1]
    dtype = u.dtype
    zero = np.zeros(1, dtype)[0]
    for task in range(lo, hi):
        b = task // n_blocks
        k = task % n_blocks
        a_blk = a_t[:, k, :].copy()
        hs = np.empty((chunk + 1, n_state, BLOCK), dtype)  # hs[j + 1]: state after token j
        decay = np.empty((chunk, n_state, BLOCK), dtype)
        dts = np.empty((chunk, BLOCK), dtype)
        y_ssm = np.empty((chunk, BLOCK), dtype)  # <C_t, h_t>
        dh = np.zeros((n_state, BLOCK), dtype)  # adjoint state, already times the next decay
        da_sum = np.zeros((n_state, BLOCK), dtype)
        dd_sum = np.zeros(BLOCK, dtype)
        dbias_sum = np.zeros(BLOCK, dtype)
        da_chunk = np.empty((n_state, BLOCK), dtype)  # per-chunk sums keep float32 sums short
        dd_chunk = np.empty(BLOCK, dtype)
        dbias_chunk = np.empty(BLOCK, dtype)
        dtu = np.empty(BLOCK, dtype)
        dys = np.empty(BLOCK, dtype)
        g_u = np.empty(BLOCK, dtype)
        g_dt = np.empty(BLOCK, dtype)
        acc = np.empty(BLOCK, dtype)
        for c in range(n_chunks - 1, -1, -1):
            t0 = c * chunk
            t1 = min(length, t0 + chunk)
            hs[0] = h_store[b, c, :, k, :]
            # recompute this chunk's decays and states
            for t in range(t0, t1):
                j = t - t0
                _step_size(delta[b, t, k], bias[k], softplus, dts[j])
                for i in range(BLOCK):
                    dtu[i] = dts[j, i] * u[b, t, k, i]
                    acc[i] = 0
                for n in range(n_state):
                    bn = b_in[b, t, n]
                    cn = c_in[b, t, n]
                    for i in range(BLOCK):
                        a = _exp(dts[j, i] * a_blk[n, i])
                        decay[j, n, i] = a
                        hv = a * hs[j, n, i] + dtu[i] * bn
                        hs[j + 1, n, i] = hv
                        acc[i] += cn * hv
                for i in range(BLOCK):
                    y_ssm[j, i] = acc[i]
            # adjoint recurrence, last token first
            da_chunk[:] = 0
            dd_chunk[:] = 0
            dbias_chunk[:] = 0
            for t in range(t1 - 1, t0 - 1, -1):
                j = t - t0
                if has_z:
                    for i in range(BLOCK):
                        zz = z[b, t, k, i]
                        sg = _sigmoid(zz)
                        g = dy[b, t, k, i]
                        y_pre = y_ssm[j, i] + d_skip[k, i] * u[b, t, k, i]
                        dz_out[b, t, k, i] = g * y_pre * sg * (ONE + zz * (ONE - sg))
                        dys[i] = g * zz * sg
                else:
                    for i in range(BLOCK):
                        dys[i] = dy[b, t, k, i]
                for i in range(BLOCK):
                    uv = u[b, t, k, i]
                    dd_chunk[i] += dys[i] * uv
                    g_u[i] = dys[i] * d_skip[k, i]
                    g_dt[i] = 0
                    dtu[i] = dts[j, i] * uv
                for n in range(n_state):
                    bn = b_in[b, t, n]
                    cn = c_in[b, t, n]
                    s_b = zero
                    s_c = zero
                    for i in range(BLOCK):
                        dhv = dh[n, i] + dys[i] * cn
                        a = decay[j, n, i]
                        s_c += dys[i] * hs[j + 1, n, i]
                        s_b += dhv * dtu[i]
                        g_u[i] += dhv * dts[j, i] * bn
                        q = dhv * a * hs[j, n, i]
                        g_dt[i] += q * a_blk[n, i] + dhv * u[b, t, k, i] * bn
                        da_chunk[n, i] += q * dts[j, i]
                        dh[n, i] = dhv * a
                    db_part[k, b, t, n] = s_b
                    dc_part[k, b, t, n] = s_c
                if softplus:  # d softplus(x) / dx = sigmoid(x)
                    for i in range(BLOCK):
                        g_dt[i] *= _sigmoid(delta[b, t, k, i] + bias[k, i])
                for i in range(BLOCK):
                    ddelta_out[b, t, k, i] = g_dt[i]
                    dbias_chunk[i] += g_dt[i]
                    du_out[b, t, k, i] = g_u[i]
            da_sum += da_chunk
            dd_sum += dd_chunk
            dbias_sum += dbias_chunk
        da_part[b, :, k, :] = da_sum
        dd_part[b, k] = dd_sum
        dbias_part[b, k] = dbias_sum


def _blocks(t: torch.Tensor) -> np.ndarray:
    """A NumPy view with the last (channel) axis split into ``[E / BLOCK, BLOCK]``."""
    return t.detach().numpy().reshape(*t.shape[:-1], t.shape[-1] // BLOCK, BLOCK)


class _SelectiveScanCPU(torch.autograd.Function):
    """Autograd wrapper of the kernels; inputs float32/64, contiguous, ``E % BLOCK == 0``."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk, grad_needed):
        bt, length, e = u.shape
        n = A.shape[1]
        a_t = A.t().contiguous()
        y = torch.empty_like(u)
        save = grad_needed and any(ctx.needs_input_grad)
        n_chunks = -(-length // chunk)
        h_store = u.new_empty((bt, n_chunks, n, e) if save else (0, 0, 0, BLOCK))
        z_arr = z if z is not None else u.new_empty(0, 0, BLOCK)
        run_tasks(
            _forward_tasks, bt * (e // BLOCK),
            _blocks(u), _blocks(delta), _blocks(a_t), B.detach().numpy(), C.detach().numpy(),
            _blocks(D), _blocks(z_arr), _blocks(delta_bias), bool(delta_softplus),
            z is not None, int(chunk), _blocks(y), _blocks(h_store),
        )
        if save:
            ctx.save_for_backward(u, delta, a_t, B, C, D, z, delta_bias, h_store)
            ctx.softplus = bool(delta_softplus)
            ctx.chunk = int(chunk)
        return y

    @staticmethod
    def backward(ctx, dy):
        u, delta, a_t, B, C, D, z, delta_bias, h_store = ctx.saved_tensors
        bt, length, e = u.shape
        n = a_t.shape[0]
        n_blocks = e // BLOCK
        dy = dy.to(u.dtype).contiguous()
        du = torch.empty_like(u)
        ddelta = torch.empty_like(u)
        dz = torch.empty_like(u) if z is not None else u.new_empty(0, 0, BLOCK)
        db_part = u.new_empty(n_blocks, bt, length, n)
        dc_part = u.new_empty(n_blocks, bt, length, n)
        da_part = u.new_empty(bt, n, e)
        dd_part = u.new_empty(bt, e)
        dbias_part = u.new_empty(bt, e)
        z_arr = z if z is not None else u.new_empty(0, 0, BLOCK)
        run_tasks(
            _backward_tasks, bt * n_blocks,
            _blocks(u), _blocks(delta), _blocks(a_t), B.detach().numpy(), C.detach().numpy(),
            _blocks(D), _blocks(z_arr), _blocks(delta_bias), ctx.softplus, z is not None,
            ctx.chunk, _blocks(h_store), _blocks(dy), _blocks(du), _blocks(ddelta), _blocks(dz),
            db_part.numpy(), dc_part.numpy(), _blocks(da_part), _blocks(dd_part),
            _blocks(dbias_part),
        )
        return (
            du, ddelta, da_part.sum(0).t(), db_part.sum(0), dc_part.sum(0), dd_part.sum(0),
            dz if z is not None else None, dbias_part.sum(0), None, None, None,
        )


def selective_scan_cpu(args: ScanArgs, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """The scan of ``args`` (see :class:`ScanArgs`) on CPU tensors.

    Differentiable in every tensor argument. Computes in float32 (float64 for float64
    ``u``); returns ``y [Bt, L, E]`` in ``u``'s dtype. ``chunk`` is the number of tokens
    between the states kept for the backward.
    """
    u, delta, A, B, C, D, z, delta_bias, delta_softplus = args
    if u.device.type != "cpu":
        raise ValueError(f"the cpu scan backend needs CPU tensors, got {u.device}")
    work = args.work_dtype
    e = u.shape[-1]
    pad = (-e) % BLOCK

    def prep(t: torch.Tensor | None, channel_dim: int = -1) -> torch.Tensor | None:
        """To the working dtype, contiguous, channels padded to a multiple of BLOCK."""
        if t is None:
            return None
        t = t.to(work)
        if pad:  # padded channels are computed and dropped
            t = F.pad(t, (0, 0) * (t.ndim - 1 - channel_dim % t.ndim) + (0, pad))
        return t.contiguous()

    zeros = torch.zeros(e, dtype=work)
    # under no_grad / inference_mode nothing is kept for a backward
    grad_needed = torch.is_grad_enabled()
    y = _SelectiveScanCPU.apply(
        prep(u), prep(delta), prep(A, channel_dim=0), B.to(work).contiguous(),
        C.to(work).contiguous(), prep(zeros if D is None else D), prep(z),
        prep(zeros if delta_bias is None else delta_bias), delta_softplus, chunk, grad_needed,
    )
    if pad:
        y = y[..., :e]
    return y.to(u.dtype)


__all__ = ["BLOCK", "DEFAULT_CHUNK", "selective_scan_cpu"]
