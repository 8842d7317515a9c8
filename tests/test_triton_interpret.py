"""The Triton scan kernels on the CPU through Triton's interpreter, against the float64 reference.

Tiny shapes (the interpreter runs each tile element by element); the same kernels run
compiled on CUDA in ``test_scan_gpu.py``.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from napari_lightm.model.ops.launch import Scan
from napari_lightm.model.scan import ScanArgs
from napari_lightm.model.scan.reference import selective_scan_reference

if importlib.util.find_spec("triton") is None:
    pytest.skip("Triton is not installed", allow_module_level=True)

# the kernels the interpreted_module fixture (conftest.py) loads
INTERPRETED_SOURCE = "src/napari_lightm/model/scan/triton"
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


@pytest.fixture(scope="module")
def ts(interpreted_module):
    """A private copy of ``scan.triton`` whose kernels run in Triton's interpreter."""
    return interpreted_module


@pytest.fixture(autouse=True)
def _interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the module checks it per call too


def inputs(bt=2, length=21, e=3, n=4, harsh=False, full=True, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    u, delta, z = r(bt, length, e), r(bt, length, e), r(bt, length, e)
    a = -torch.rand(e, n, generator=g) * 3 - 0.05
    if harsh:  # large steps next to near-zero decay rates
        delta = delta * 4 + 2
        a[0] = -1e-3
    b, c, d, bias = r(bt, length, n), r(bt, length, n), r(e), r(e)
    args = [u.to(dtype), delta.to(dtype), a, b.to(dtype), c.to(dtype), d, z.to(dtype), bias]
    if not full:
        args[5] = args[6] = args[7] = None
    return args


def run_both(ts, args, softplus, chunk=8):
    """Triton (fp32) and reference (float64) outputs and gradients for the same leaves."""
    leaves = [None if t is None else t.clone().requires_grad_() for t in args]
    y = ts.selective_scan_triton(ScanArgs(*leaves, delta_softplus=softplus), chunk=chunk)
    leaves64 = [None if t is None else t.detach().double().requires_grad_() for t in args]
    y64 = selective_scan_reference(ScanArgs(*leaves64, delta_softplus=softplus))
    gy = torch.randn(y64.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    used = [t for t in leaves if t is not None]
    used64 = [t for t in leaves64 if t is not None]
    grads = torch.autograd.grad(y, used, gy.to(y.dtype))
    grads64 = torch.autograd.grad(y64, used64, gy)
    names = [n for n, t in zip(NAMES, args) if t is not None]
    return y, y64, dict(zip(names, zip(grads, grads64)))


def rel(a, b):
    return ((a.double() - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize(
    ("full", "softplus", "harsh", "n"),
    [(True, True, False, 4), (False, False, False, 3), (True, True, True, 4)],
    ids=["gated+bias+softplus", "bare, N=3", "harsh decays"],
)
def test_forward_and_gradients_match_float64_reference(ts, full, softplus, harsh, n):
    args = inputs(full=full, harsh=harsh, n=n)
    y, y64, grads = run_both(ts, args, softplus)
    assert y.dtype == torch.float32 and y.shape == y64.shape
    assert rel(y, y64) < 1e-5
    for name, (g, g64) in grads.items():
        assert g.shape == g64.shape, name
        assert rel(g, g64) < 1e-4, name


def test_flip_fallback_for_reverse_scans_is_exact(ts, monkeypatch):
    """The path used where Triton's reverse scan mis-orders (see reverse_scan_needs_flip)."""
    monkeypatch.setattr(ts.autograd, "_flip_mode", lambda device: True)
    _, _, grads = run_both(ts, inputs(seed=3), softplus=True)
    for name, (g, g64) in grads.items():
        assert rel(g, g64) < 1e-4, name


@pytest.mark.parametrize("min_programs", [1, 6, 10**6], ids=["1 group", "2 groups", "per block"])
def test_channel_groups_of_the_backward_kernel(ts, monkeypatch, min_programs):
    """The chunk backward (WALK_BWD off): dB/dC summed over channels in registers (groups
    of blocks) or as per-block partials."""
    monkeypatch.setattr(Scan, "WALK_BWD", False)
    monkeypatch.setattr(Scan, "BWD_MIN_PROGRAMS", min_programs)  # 3 chunks x 3 channel blocks
    _, _, grads = run_both(ts, inputs(bt=1, e=9, seed=8), softplus=True)
    for name, (g, g64) in grads.items():
        assert rel(g, g64) < 1e-4, name


@pytest.mark.parametrize(("states_be", "adj_be"), [(4, 2), (2, 8)], ids=["4|2", "2|8"])
def test_small_channel_blocks_in_every_kernel(ts, monkeypatch, states_be, adj_be):
    """E=9 over several channel blocks in the forward kernels (plain and state-keeping,
    whose settings differ) and in the adjoint pass of the backward."""
    monkeypatch.setattr(Scan, "FWD_BLOCK_E", 4)
    monkeypatch.setattr(Scan, "STATES_BLOCK_E", states_be)
    monkeypatch.setattr(Scan, "ADJ_BLOCK_E", adj_be)
    args = inputs(bt=2, e=9, seed=12)
    y, y64, grads = run_both(ts, args, softplus=True)
    assert rel(y, y64) < 1e-5
    with torch.no_grad():  # the plain forward (no states kept), in blocks of 4 channels
        y_plain = ts.selective_scan_triton(ScanArgs(*args, delta_softplus=True), chunk=8)
    assert rel(y_plain, y64) < 1e-5
    for name, (g, g64) in grads.items():
        assert rel(g, g64) < 1e-4, name


def force_super_chunks(ts, monkeypatch, fwd_sub, bwd_sub):
    """Exactly ``fwd_sub`` / ``bwd_sub`` chunks per super-chunk (both backward kernels),
    carry blocks of 2 summaries."""
    monkeypatch.setattr(ts.autograd, "_sub_chunks",
                        lambda chunks, others, min_programs, max_sub: max_sub)
    monkeypatch.setattr(Scan, "FWD_MAX_SUB", fwd_sub)
    monkeypatch.setattr(Scan, "BWD_MAX_SUB", bwd_sub)
    monkeypatch.setattr(Scan, "WALK_MAX_SUB", bwd_sub)
    monkeypatch.setattr(Scan, "CARRY_BLOCK_K", 2)  # the super-chunk summaries span carry blocks


@pytest.mark.parametrize(
    ("fwd_sub", "bwd_sub", "harsh", "flip"),
    [(2, 3, False, False), (4, 4, False, False), (5, 2, True, False), (8, 7, False, True)],
    ids=["full 2|3", "partial 4|4", "harsh, partial 5|2", "one super-chunk, flip"],
)
def test_super_chunks_match_float64_reference(ts, monkeypatch, fwd_sub, bwd_sub, harsh, flip):
    """chunk=4 and L=21: K=6 chunks walked by super-chunks of 2..8 (full, partial, one)."""
    force_super_chunks(ts, monkeypatch, fwd_sub, bwd_sub)
    if flip:
        monkeypatch.setattr(ts.autograd, "_flip_mode", lambda device: True)
    args = inputs(harsh=harsh, seed=10 + fwd_sub)
    y, y64, grads = run_both(ts, args, softplus=True, chunk=4)
    assert rel(y, y64) < 1e-5
    assert set(grads) == set(NAMES)
    for name, (g, g64) in grads.items():
        assert g.shape == g64.shape, name
        assert rel(g, g64) < 1e-4, name


@pytest.mark.parametrize("min_programs", [1, 6], ids=["1 group of 5 blocks", "3 groups of 2"])
def test_super_chunks_with_channel_groups(ts, monkeypatch, min_programs):
    """The chunk backward: several channel blocks per program hand mu and the dA/dD sums
    over their own slots."""
    monkeypatch.setattr(Scan, "WALK_BWD", False)
    force_super_chunks(ts, monkeypatch, 3, 4)  # backward: K=6 -> super-chunks of 4 + 2
    monkeypatch.setattr(Scan, "BWD_MIN_PROGRAMS", min_programs)  # E=9: 5 blocks of 2 channels
    _, _, grads = run_both(ts, inputs(bt=1, e=9, seed=11), softplus=True, chunk=4)
    for name, (g, g64) in grads.items():
        assert rel(g, g64) < 1e-4, name


@pytest.mark.parametrize(
    ("e", "block_e", "sub", "full"),
    [(9, 4, 4, True), (9, 2, 5, False), (40, 32, 3, True), (5, 8, 1, True)],
    ids=["3 blocks, tail of 1, 4|2 chunks", "5 blocks, bare, 5|1", "2 blocks of 32, 3|3",
         "1 masked block, chunk by chunk"],
)
def test_walk_backward_channel_blocks_and_super_chunks(ts, monkeypatch, e, block_e, sub, full):
    """The walk backward: channel blocks with a masked tail (their dB/dC partials summed),
    super-chunks walked last chunk to first (mu handed on in registers), chunk=4, L=21."""
    monkeypatch.setattr(Scan, "WALK_BWD", True)
    monkeypatch.setattr(Scan, "WALK_BLOCK_E", block_e)
    force_super_chunks(ts, monkeypatch, 2, sub)
    args = inputs(bt=2, e=e, full=full, seed=20 + e + sub)
    _, _, grads = run_both(ts, args, softplus=full, chunk=4)
    assert set(grads) == {n for n, t in zip(NAMES, args) if t is not None}
    for name, (g, g64) in grads.items():
        assert g.shape == g64.shape, name
        assert rel(g, g64) < 1e-4, name


def test_super_chunk_inference_stores_no_states(ts, monkeypatch):
    """Without grad the forward skips the per-chunk states but gives the same ``y``."""
    force_super_chunks(ts, monkeypatch, 4, 4)
    stored = []
    original = ts.autograd._forward
    monkeypatch.setattr(ts.autograd, "_forward", lambda *a, **k: stored.append(original(*a, **k)) or
                        stored[-1])
    args = inputs(seed=12)
    with torch.no_grad():
        y_inf = ts.selective_scan_triton(ScanArgs(*args, delta_softplus=True), chunk=4)
    leaves = [t.clone().requires_grad_() for t in args]
    y = ts.selective_scan_triton(ScanArgs(*leaves, delta_softplus=True), chunk=4)
    assert stored[0][1] is None
    assert stored[1][1].shape == (2, 6, 3, 4)  # [Bt, K, E, N]: every chunk's end state
    torch.testing.assert_close(y_inf, y.detach(), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("chunks", "others", "min_programs", "max_sub", "want"),
    [(65536, 8, 8192, 64, 64), (65536, 8, 8192, 16, 16), (65536, 1, 8192, 64, 8),
     (100, 8, 8192, 64, 1), (3000, 8, 8192, 64, 2), (65536, 8, 8192, 1, 1)],
)
def test_sub_chunk_policy(ts, chunks, others, min_programs, max_sub, want):
    """As many chunks per program as keep ``min_programs`` programs, within 1..max_sub."""
    assert ts.autograd._sub_chunks(chunks, others, min_programs, max_sub) == want


def spy_forward(ts, monkeypatch) -> list:
    """Record ``(chunk, states kept, start states handed in)`` of every ``_forward`` call."""
    calls = []
    forward = ts.autograd._forward

    def spy(*args, store_states, starts=None):
        calls.append((args[9], store_states, starts is not None))
        return forward(*args, store_states=store_states, starts=starts)

    monkeypatch.setattr(ts.autograd, "_forward", spy)
    return calls


def checkpointed_scan(ts, args, context_fn):
    """The scan under non-reentrant activation checkpointing: ``y`` and its leaves."""
    from torch.utils.checkpoint import checkpoint

    leaves = [t.clone().requires_grad_() for t in args]

    def scan(*t):
        return ts.selective_scan_triton(ScanArgs(*t, delta_softplus=True))

    y = checkpoint(scan, *leaves, use_reentrant=False, context_fn=context_fn,
                   determinism_check="none")
    return y, leaves


def assert_float64_gradients(args, y, leaves) -> None:
    """``y`` and the gradients reaching ``leaves`` against float64 autograd of the reference."""
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    grads = torch.autograd.grad(y, leaves, gy.float())
    leaves64 = [t.detach().double().requires_grad_() for t in args]
    y64 = selective_scan_reference(ScanArgs(*leaves64, delta_softplus=True))
    assert rel(y, y64) < 1e-5
    for name, g, g64 in zip(NAMES, grads, torch.autograd.grad(y64, leaves64, gy)):
        assert rel(g, g64) < 1e-4, name


def test_first_pass_of_recomputation_keeps_no_states_and_exact_gradients(ts, monkeypatch):
    """Under activation checkpointing the first pass runs as inference (short chunks, no
    chunk states); the recomputation keeps the states; gradients equal float64's."""
    import contextlib

    calls = spy_forward(ts, monkeypatch)
    args = inputs(length=37, seed=11)

    def contexts():
        return ts.first_pass_of_recomputation(), contextlib.nullcontext()

    y, leaves = checkpointed_scan(ts, args, contexts)
    assert calls == [(Scan.INFER_CHUNK, False, False)]
    assert_float64_gradients(args, y, leaves)  # the backward runs the recomputation
    assert calls == [(Scan.INFER_CHUNK, False, False), (Scan.DEFAULT_CHUNK, True, False)]
    with ts.first_pass_of_recomputation():  # the flag is scoped
        pass
    assert not getattr(ts.recompute.STATE, "first_pass", False)


@pytest.mark.parametrize(("fwd_sub", "reused"), [(4, True), (1, False)],
                         ids=["super-chunks of 32 tokens: reused", "8 tokens: not reusable"])
def test_recomputation_reuses_the_first_pass_super_chunk_states(ts, monkeypatch, fwd_sub,
                                                                reused):
    """recomputation_contexts: the first pass (8-token chunks) hands its super-chunk end
    states to the recomputation (16-token chunks), which then skips the end-state pass and
    the carry (when its chunks tile the same super-chunks); gradients equal float64's."""
    force_super_chunks(ts, monkeypatch, fwd_sub, 1)
    carries = []
    carry = ts.autograd.carry
    monkeypatch.setattr(ts.autograd, "carry", lambda *a, **k: carries.append(k["reverse"]) or
                        carry(*a, **k))
    calls = spy_forward(ts, monkeypatch)
    args = inputs(length=37, seed=13)
    y, leaves = checkpointed_scan(ts, args, ts.recomputation_contexts)
    assert_float64_gradients(args, y, leaves)
    # the recomputation got the first pass's states
    assert calls == [(Scan.INFER_CHUNK, False, False), (Scan.DEFAULT_CHUNK, True, True)]
    # forward carry of the first pass, (the recomputation's only if not reused), reverse
    assert carries == ([False, True] if reused else [False, False, True])
    state = ts.recompute.STATE
    assert getattr(state, "replay", None) is None and state.handoff is None


def test_reverse_scan_probe_passes_in_interpreter(ts):
    assert ts.common.reverse_scan_needs_flip(-1) is False


@pytest.mark.parametrize(("sub", "chunk", "seed"), [(None, 8, 4), (3, 4, 13)],
                         ids=["chunks", "super-chunks of 3"])
def test_bfloat16_inputs_keep_float32_state(ts, monkeypatch, sub, chunk, seed):
    if sub is not None:
        force_super_chunks(ts, monkeypatch, sub, sub)
    args = inputs(dtype=torch.bfloat16, seed=seed)
    y = ts.selective_scan_triton(ScanArgs(*args, delta_softplus=True), chunk=chunk)
    ref = selective_scan_reference(ScanArgs(*[t.double() for t in args], delta_softplus=True))
    assert y.dtype == torch.bfloat16
    assert rel(y.float(), ref) < 1e-2  # only the output rounding to bfloat16


def test_strided_token_major_views_need_no_copy(ts):
    """``x, z = in_proj(u).split(E, -1)`` views (token stride 2E) give the contiguous result."""
    u, delta, a, b, c, d, z, bias = inputs(seed=5)
    xz = torch.cat([u, z], dim=-1)
    x_view, z_view = xz.split(u.shape[-1], dim=-1)
    y_view = ts.selective_scan_triton(ScanArgs(x_view, delta, a, b, c, d, z_view, bias, True),
                                      chunk=16)
    y = ts.selective_scan_triton(ScanArgs(u, delta, a, b, c, d, z, bias, True), chunk=16)
    torch.testing.assert_close(y_view, y, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.__setitem__(2, a[2][:2]), "A must be"),
        (lambda a: a.__setitem__(3, a[3][:, :-1]), "B must be"),
        (lambda a: a.__setitem__(6, a[6][..., :-1]), "z must match"),
        (lambda a: a.__setitem__(0, a[0].double()), "float64"),
    ],
    ids=["A", "B", "z", "float64"],
)
def test_bad_input_is_named(ts, change, message):
    args = inputs(seed=6)
    change(args)
    with pytest.raises(ValueError, match=message):
        ts.selective_scan_triton(ScanArgs(*args, delta_softplus=True), chunk=8)


def test_chunk_must_be_a_power_of_two(ts):
    args = inputs(seed=7)
    with pytest.raises(ValueError, match="power of two"):
        ts.selective_scan_triton(ScanArgs(*args), chunk=12)
