"""The model's compute kernels besides the selective scan (``model/scan/``), by op.

- ``conv1d/``: the Mamba mixer's causal depthwise conv1d + SiLU (``cpu``: numba, inference;
  ``triton``: CUDA, forward and backward).
- ``norms/``: LayerNorm, residual + LayerNorm and GroupNorm + ReLU (``var_mean``: torch
  formulas for any device; ``layer_norm_triton``, ``group_norm_triton``: fused kernels).
- ``dwconv``: the depthwise 3x3(x3) convolution on channels-last maps (Triton).
- ``launch``: every Triton kernel's launch constants, and the benchmark that chose them.

Nothing here imports Triton or numba at package import: each kernel module does, and is
imported only where it runs.
"""
