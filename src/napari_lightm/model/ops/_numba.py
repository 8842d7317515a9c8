"""What the numba CPU kernels share: vectorisable float32 math and a thread pool.

numba has no vector math library here, so ``exp`` and ``log1p`` are small polynomial
routines that LLVM turns into SIMD code; they are accurate to a few ulp in float32.
Float64 inputs use ``math.exp`` / ``math.log1p`` (the tests' exact path).

numba's on-disk cache (``cache=True``) checks only the source file of the kernel it
caches: after editing this module, delete the ``*.nbi`` / ``*.nbc`` files under the
kernels' ``__pycache__`` folders so that they recompile with the change.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

# numpy's error model: no ZeroDivisionError checks, which would stop LLVM vectorising
JIT = {"fastmath": True, "error_model": "numpy", "cache": True}
_f32 = np.float32
# exp: x = n ln2 + r with |r| <= ln2/2, exp(r) by a degree-7 minimax polynomial (Cephes'
# expf coefficients), 2**n from the bits. fastmath may fold the two-part ln2 into one
# float32 constant: relative error then <= 2.5e-7 (at n = -126), ~1e-7 for |x| < 20.
_LOG2E = _f32(1.4426950408889634)
_LN2_HI = _f32(0.693359375)
_LN2_LO = _f32(-2.12194440e-4)
_EXP_MIN = _f32(-87.0)  # keeps 2**n a normal float; exp(-87) ~ 1.6e-38 stands in for 0
_EXP_MAX = _f32(88.0)
_EXP_P0 = _f32(1.9875691500e-4)
_EXP_P1 = _f32(1.3981999507e-3)
_EXP_P2 = _f32(8.3334519073e-3)
_EXP_P3 = _f32(4.1665795894e-2)
_EXP_P4 = _f32(1.6666665459e-1)
_EXP_P5 = _f32(5.0000001201e-1)
# log1p on [0, 1] by the atanh series
_SQRT2_M1 = _f32(0.41421356237309503)
_LN2 = _f32(0.6931471805599453)
ZERO = _f32(0.0)  # float32 constants keep float32 arithmetic in float32
ONE = _f32(1.0)
_THREE = _f32(3.0)
_HALF = _f32(0.5)
_TWO = _f32(2.0)
_THIRD = _f32(1.0 / 3.0)
_FIFTH = _f32(1.0 / 5.0)
_SEVENTH = _f32(1.0 / 7.0)
_NINTH = _f32(1.0 / 9.0)


@intrinsic
def _int32_as_float32(typingctx, bits):
    """Reinterpret the low 32 bits of an integer as a float32 (vectorisable, unlike a view)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        value = args[0]
        if bits.bitwidth > 32:
            value = builder.trunc(value, ir.IntType(32))
        return builder.bitcast(value, ir.FloatType())

    return types.float32(bits), codegen


def exp(x):
    """``exp(x)``; float32: the vectorisable polynomial, float64: ``math.exp``."""
    raise NotImplementedError  # only callable from numba code


def log1p_unit(w):
    """``log(1 + w)`` for ``0 <= w <= 1``; float32: vectorisable, float64: ``math.log1p``."""
    raise NotImplementedError


@overload(exp, inline="always", jit_options=JIT)
def _exp_overload(x):
    if x == types.float32:

        def exp32(x):
            x = min(max(x, _EXP_MIN), _EXP_MAX)
            n = np.floor(x * _LOG2E + _HALF)
            r = x - n * _LN2_HI - n * _LN2_LO
            p = _EXP_P0 * r + _EXP_P1
            p = p * r + _EXP_P2
            p = p * r + _EXP_P3
            p = p * r + _EXP_P4
            p = p * r + _EXP_P5
            p = p * (r * r) + r + ONE
            return p * _int32_as_float32((np.int32(n) + np.int32(127)) << np.int32(23))

        return exp32
    if x == types.float64:
        return lambda x: math.exp(x)
    return None


@overload(log1p_unit, inline="always", jit_options=JIT)
def _log1p_unit_overload(w):
    if w == types.float32:

        def log1p_unit32(w):
            # log(1 + w) = 2 atanh(s) with s = w / (2 + w); above sqrt(2) - 1 use
            # log(1 + w) = ln 2 + 2 atanh((w - 1) / (w + 3)). Either way |s| <= 0.172.
            big = w > _SQRT2_M1
            s = (w - ONE if big else w) / (w + _THREE if big else w + _TWO)
            s2 = s * s
            poly = ONE + s2 * (_THIRD + s2 * (_FIFTH + s2 * (_SEVENTH + s2 * _NINTH)))
            return (_LN2 if big else ZERO) + _TWO * s * poly

        return log1p_unit32
    if w == types.float64:
        return lambda w: math.log1p(w)
    return None


@njit(inline="always", **JIT)
def softplus(x):
    """``log(1 + exp(x))`` without branches: ``max(x, 0) + log1p(exp(-|x|))``."""
    return max(x, ZERO) + log1p_unit(exp(-abs(x)))


@njit(inline="always", **JIT)
def sigmoid(x):
    return ONE / (ONE + exp(-x))


_pool: ThreadPoolExecutor | None = None
_pool_key: tuple[int, int] = (0, 0)  # (process id, threads): a forked child builds its own
_pool_lock = threading.Lock()


def _executor(workers: int) -> ThreadPoolExecutor:
    """A thread pool of ``workers`` threads, kept between calls."""
    global _pool, _pool_key
    key = (os.getpid(), workers)
    with _pool_lock:
        if _pool is None or _pool_key != key:
            if _pool is not None and _pool_key[0] == key[0]:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(workers, thread_name_prefix="lightm-cpu")
            _pool_key = key
        return _pool


def run_tasks(kernel, n_tasks: int, *args) -> None:
    """Run ``kernel(lo, hi, *args)`` over ``range(n_tasks)`` on torch's number of threads.

    The kernels are ``nogil`` numba functions, so the threads run them in parallel.
    """
    workers = min(torch.get_num_threads(), n_tasks)
    if workers <= 1:
        kernel(0, n_tasks, *args)
        return
    # a few task ranges per thread balance the load when other work shares the cores
    n_parts = min(n_tasks, 4 * workers)
    bounds = np.linspace(0, n_tasks, n_parts + 1).astype(int)
    pool = _executor(workers)
    futures = [pool.submit(kernel, int(lo), int(hi), *args)
               for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
    for f in futures:
        f.result()


__all__ = ["JIT", "ONE", "ZERO", "exp", "log1p_unit", "run_tasks", "sigmoid", "softplus"]
