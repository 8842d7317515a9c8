"""The Mamba path's norms, by implementation.

- ``var_mean``: GroupNorm and LayerNorm from ``torch.var_mean`` and one fused
  scale-and-shift, for any device.
- ``layer_norm_triton``: LayerNorm and residual + LayerNorm, fused Triton kernels.
- ``group_norm_triton``: GroupNorm + ReLU, fused Triton kernels.

The Triton modules import Triton: import them only where it runs.
"""
