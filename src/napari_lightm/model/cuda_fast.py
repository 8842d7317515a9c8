"""Whole-network speed-ups for CUDA that keep the module tree and state-dict keys.

Each switch changes module classes to subclasses with other forwards (see "switching
forwards" below): parameters, buffers, the module tree and the state dict are untouched,
and ``enabled=False`` restores the plain classes. The engine turns the fast path on for
models on CUDA (:func:`enable_fast_path`).

Why (profiles: ``benchmarks/gpu/profile_gpu.py``, tables in ``docs/benchmarks.md``): with
plain modules GroupNorm's statistics kernel (one thread block per (sample, group)) and
LayerNorm over C=32..256 take a large share of inference; the fused kernels do each in one
pass near memory bandwidth, and CUDA graphs remove the Python launch cost that then
dominates small inputs.

- :func:`enable_fast_norms`: GroupNorm and the RVM layers' LayerNorm computed from
  ``torch.var_mean`` (:mod:`napari_lightm.model.ops.norms.var_mean`); same weights, same
  result to float32 rounding.
- :func:`enable_rvm_checkpointing`: each RVM layer recomputes its activations in
  backward instead of storing them (a mixer's token-major intermediates at full
  resolution are ~10x its input), which cuts a 3D train step's memory to a fraction.
- :func:`enable_fused_kernels`: the Triton kernels of :mod:`napari_lightm.model.ops`
  for every GroupNorm + ReLU pair, both LayerNorms of each RVM layer (the second fused
  with the residual ``+ s * t``), and a channels-last layout through the whole network, so
  every RVM layer's token view ``[B, L, C]`` is free (no transposes around the mixers).
- :func:`enable_fast_path`: what the engine uses on CUDA: the fused kernels where Triton
  runs (else the fast norms), plus recomputation when training.
- :class:`GraphedInference`: forward passes replayed from CUDA graphs, per input shape.
- :func:`fastest_scan_backend`: the scan backend auto-selection uses on CUDA.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from napari_lightm.model.blocks import ResMambaBlock, ResUpBlock, RVMLayer
from napari_lightm.model.ops.norms.var_mean import group_norm, layer_norm_tokens
from napari_lightm.model.scan import is_available, resolve_backend


def _rvm_forward(layer: RVMLayer, x: torch.Tensor) -> torch.Tensor:
    """RVMLayer.forward with :func:`layer_norm_tokens` for the shared LayerNorm."""
    if x.dtype == torch.float16:  # as the released code: half input is lifted to float32
        x = x.float()
    b, c, *spatial = x.shape
    t = x.reshape(b, c, -1).transpose(1, 2).contiguous()  # [B, L, C], one copy
    h = layer.mamba(layer_norm_tokens(layer.norm, t)) + layer.skip_scale * t
    h = layer.proj(layer_norm_tokens(layer.norm, h))
    return h.transpose(1, 2).reshape(b, layer.out_channels, *spatial)


# ---------------------------------------------------------------- fused Triton kernels


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, *S] -> [B, L, C]``: a free view for channels-last memory, else one copy."""
    b, c = x.shape[:2]
    t = torch.movedim(x, 1, -1).reshape(b, -1, c)
    return t if t.stride(-1) == 1 else t.contiguous()


def _fused_rvm_forward(layer: RVMLayer, x: torch.Tensor) -> torch.Tensor:
    """RVMLayer.forward with Triton LayerNorm and residual + LayerNorm kernels."""
    from napari_lightm.model.ops.norms import layer_norm_triton as norms

    if x.dtype == torch.float16:  # as the released code: half input is lifted to float32
        x = x.float()
    b, c, *spatial = x.shape
    ln = layer.norm
    t = _tokens(x)
    m = layer.mamba(norms.layer_norm(t, ln.weight, ln.bias, ln.eps))
    h = norms.residual_layer_norm(m, t.to(m.dtype), layer.skip_scale, ln.weight, ln.bias,
                                  ln.eps)
    h = layer.proj(h)
    return torch.movedim(h.reshape(b, *spatial, layer.out_channels), -1, 1)


def _gn_relu(gn: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """``ReLU(gn(x))`` in one Triton pass (plus its statistics), channels-last output."""
    from napari_lightm.model.ops.norms.group_norm_triton import group_norm_relu

    return group_norm_relu(x, gn.num_groups, gn.weight, gn.bias, gn.eps)


def _is_head(module: nn.Module) -> bool:
    return (isinstance(module, nn.Sequential) and len(module) == 3
            and isinstance(module[0], nn.GroupNorm) and isinstance(module[1], nn.ReLU))


# ---------------------------------------------------------------- switching forwards
#
# A module is switched by changing its class to a subclass whose forward reads plain
# instance flags: parameters, module tree and state-dict keys stay as they were,
# ``isinstance`` still holds, and ``copy.deepcopy`` keeps the switch (bound methods stored
# on instances would not survive a copy).


class _FastRVMLayer(RVMLayer):
    """RVMLayer whose forward follows ``_lightm_fused`` / ``_lightm_fast_norms`` /
    ``_lightm_checkpoint``."""

    def _inner(self):
        if getattr(self, "_lightm_fused", False):
            return _fused_rvm_forward
        if getattr(self, "_lightm_fast_norms", False):
            return _rvm_forward
        return RVMLayer.forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inner = self._inner()
        if getattr(self, "_lightm_checkpoint", False) and torch.is_grad_enabled():
            # store only the input; recompute the mixer's activations in backward. The
            # first pass runs the Triton scan as for inference (nothing it would keep
            # survives that pass) and hands its super-chunk states on; the recomputation
            # keeps what the backward needs. Its saved tensors therefore differ in shape
            # from the first pass's placeholders, hence no metadata check.
            return checkpoint(inner, self, x, use_reentrant=False, context_fn=_pass_contexts,
                              determinism_check="none")
        return inner(self, x)


def _pass_contexts():
    """(first pass, recomputation) contexts of an RVM layer's activation checkpoint: the
    Triton scan's first pass runs as for inference and hands its super-chunk states to the
    recomputation (``scan.triton.recomputation_contexts``)."""
    if is_available("triton"):
        from napari_lightm.model.scan.triton import recomputation_contexts

        return recomputation_contexts()
    return contextlib.nullcontext(), contextlib.nullcontext()


class _FastGroupNorm(nn.GroupNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_norm(self, x)


class _FusedResMambaBlock(ResMambaBlock):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.rvm1(_gn_relu(self.norm1, x))
        y = self.rvm2(_gn_relu(self.norm2, y))
        return y + x


class _FusedResUpBlock(ResUpBlock):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from napari_lightm.model.ops import dwconv

        h = _gn_relu(self.norm1, x)
        dw, pw = self.conv
        if dwconv.is_supported(dw) and _is_pointwise(pw):
            # channels-last throughout: the Triton depthwise kernel, then the pointwise
            # convolution as one GEMM on the token view
            h = _pointwise_tokens(dwconv.depthwise_conv(h, dw.weight), pw.weight, pw.bias)
        else:
            # the default layout: cuDNN's channels-last grouped kernels run a depthwise
            # convolution one group at a time (slowest for the weight gradient in bf16);
            # torch's own kernel does not
            h = self.conv(h.contiguous())
        return _gn_relu(self.norm2, h + self.skip_scale * x)


class _FusedHead(nn.Sequential):
    """The head ``GroupNorm, ReLU, DWConv`` with the first two as one kernel; a 1x1(x1)
    DWConv (the released head) as one matrix product on the channels-last token view.

    A depthwise 1x1 convolution is a per-channel scale and shift, so the pair is one
    pointwise map ``W_pw diag(w_dw) x + (W_pw b_dw + b_pw)``: the same parameters (their
    gradients flow through the product), one GEMM instead of cuDNN's slow grouped kernel.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _gn_relu(self[0], x)
        dw, pw = self[2]
        if not _is_pointwise_pair(dw, pw):
            return self[2](h)
        c, out = dw.in_channels, pw.out_channels
        w_pw = pw.weight.reshape(out, c)
        weight = w_pw * dw.weight.reshape(1, c)
        bias = pw.bias
        if dw.bias is not None:
            shift = w_pw @ dw.bias
            bias = shift if bias is None else bias + shift
        return _pointwise_tokens(h, weight, bias)


def _pointwise_tokens(h: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor | None) -> torch.Tensor:
    """A 1x1(x1) convolution of ``h [B, C, *S]`` as one matrix product on the token view
    (free for channels-last memory); a channels-last ``[B, out, *S]`` view back."""
    out = weight.shape[0]
    b, _, *spatial = h.shape
    y = torch.nn.functional.linear(_tokens(h), weight.reshape(out, -1), bias)  # [B, L, out]
    return torch.movedim(y.reshape(b, *spatial, out), -1, 1)


def _is_pointwise(conv: nn.Module) -> bool:
    """A dense 1x1(x1) convolution (no groups, stride or padding)."""
    return (isinstance(conv, nn.modules.conv._ConvNd) and conv.groups == 1
            and all(k == 1 for k in conv.kernel_size) and all(s == 1 for s in conv.stride)
            and all(p == 0 for p in conv.padding))


def _is_pointwise_pair(dw: nn.Module, pw: nn.Module) -> bool:
    """A depthwise 1x1(x1) convolution followed by a 1x1(x1) one, no padding/stride."""
    return (isinstance(dw, nn.modules.conv._ConvNd) and _is_pointwise(pw)
            and dw.groups == dw.in_channels == dw.out_channels == pw.in_channels
            and all(k == 1 for k in dw.kernel_size) and all(s == 1 for s in dw.stride)
            and all(p == 0 for p in dw.padding))


def _set_rvm_flag(layer: RVMLayer, flag: str, enabled: bool) -> None:
    """Set one of the RVM layer's switches; its class follows: fast while any is on."""
    setattr(layer, flag, enabled)
    flags = ("_lightm_fused", "_lightm_fast_norms", "_lightm_checkpoint")
    layer.__class__ = (_FastRVMLayer if any(getattr(layer, f, False) for f in flags)
                       else RVMLayer)


def _swap(module: nn.Module, base: type, fast: type, enabled: bool) -> None:
    module.__class__ = fast if enabled else base


def enable_fused_kernels(model: nn.Module, enabled: bool = True) -> int:
    """Run ``model``'s norms through the fused Triton kernels (or back to the plain modules).

    Covers every RVM layer (LayerNorm, residual + LayerNorm), ResMambaBlock, ResUpBlock
    and the head (GroupNorm + ReLU), and makes the network keep channels-last memory.
    Needs Triton (CUDA, or its interpreter on the CPU). Parameters, module tree and
    state dict are untouched. Returns the number of modules changed.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, RVMLayer):
            _set_rvm_flag(module, "_lightm_fused", enabled)
        elif isinstance(module, ResMambaBlock):
            _swap(module, ResMambaBlock, _FusedResMambaBlock, enabled)
        elif isinstance(module, ResUpBlock):
            _swap(module, ResUpBlock, _FusedResUpBlock, enabled)
        elif _is_head(module):
            _swap(module, nn.Sequential, _FusedHead, enabled)
        else:
            if hasattr(module, "channels_last"):  # the LightMUNet itself
                module.channels_last = True if enabled else None
            continue  # not counted: no forward changed
        count += 1
    return count


def enable_fast_norms(model: nn.Module, enabled: bool = True) -> int:
    """Compute every GroupNorm and RVM LayerNorm of ``model`` the fast way (or the plain way).

    Returns the number of modules changed. Outputs match the ``nn`` modules to float32
    rounding (tested); gradients flow through the same formulas.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, nn.GroupNorm):
            _swap(module, nn.GroupNorm, _FastGroupNorm, enabled)
            count += 1
        elif isinstance(module, RVMLayer):
            _set_rvm_flag(module, "_lightm_fast_norms", enabled)
            count += 1
    return count


def enable_rvm_checkpointing(model: nn.Module, enabled: bool = True) -> int:
    """Turn activation recomputation of every RVM layer in ``model`` on (or off).

    Returns the number of RVM layers changed. Combines with the other switches.
    """
    layers = [m for m in model.modules() if isinstance(m, RVMLayer)]
    for layer in layers:
        _set_rvm_flag(layer, "_lightm_checkpoint", enabled)
    return len(layers)


def enable_fast_path(model: nn.Module, training: bool = False) -> str:
    """The fastest CUDA configuration available: fused Triton kernels when Triton imports
    (else the ``var_mean`` norms), with RVM recomputation when ``training``.

    Returns a short description (``"fused kernels"`` / ``"fast norms"``, ``+ recomputation``).
    """
    fused = is_available("triton")
    if fused:
        enable_fused_kernels(model)
    else:
        enable_fast_norms(model)
    enable_rvm_checkpointing(model, training)
    return ("fused kernels" if fused else "fast norms") + (" + recomputation" if training
                                                            else "")


def disable_fast_path(model: nn.Module) -> None:
    """Back to the plain modules (their own classes and forwards) everywhere."""
    enable_fused_kernels(model, False)
    enable_fast_norms(model, False)
    enable_rvm_checkpointing(model, False)


class GraphedInference:
    """Inference replayed from captured CUDA graphs, one per input shape / dtype / autocast.

    The first call for a shape warms the model up (Triton compiles, one-time probes) on a
    side stream and captures one forward into a CUDA graph; later calls copy the input into
    the graph's static input and replay it. That removes Python's per-kernel launch cost
    (hundreds of small launches per forward), which dominates 2D patches on a fast GPU.
    Returns a copy of the graph's output. If a capture fails, that shape runs eagerly from
    then on. Runs under ``no_grad``; keeps at most ``max_graphs`` graphs (oldest dropped).
    """

    def __init__(self, model: nn.Module, max_graphs: int = 2):
        self.model = model
        self.max_graphs = max_graphs
        self._graphs: dict[tuple, tuple | None] = {}

    def parameters(self):
        return self.model.parameters()

    def _capture(self, x: torch.Tensor):
        static_x = x.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(2):  # compile kernels and run one-time probes outside the capture
                self.model(static_x)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():
            static_y = self.model(static_x)
        return graph, static_x, static_y

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA input, got {x.device}")
        key = (tuple(x.shape), x.dtype, x.device, torch.is_autocast_enabled("cuda"),
               torch.get_autocast_dtype("cuda"))
        if key not in self._graphs:
            while len(self._graphs) >= self.max_graphs:
                self._graphs.pop(next(iter(self._graphs)))
            try:
                self._graphs[key] = self._capture(x)
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception:  # an op that cannot be captured: run this shape eagerly
                self._graphs[key] = None
        entry = self._graphs[key]
        if entry is None:
            with torch.no_grad():
                return self.model(x)
        graph, static_x, static_y = entry
        static_x.copy_(x)
        graph.replay()
        return static_y.clone()


def fastest_scan_backend(device: str | torch.device = "cuda") -> str:
    """Name of the scan backend auto-selection picks for tensors on ``device``."""
    return resolve_backend(device, "auto")


__all__ = [
    "GraphedInference",
    "disable_fast_path",
    "enable_fast_norms",
    "enable_fast_path",
    "enable_fused_kernels",
    "enable_rvm_checkpointing",
    "fastest_scan_backend",
]
