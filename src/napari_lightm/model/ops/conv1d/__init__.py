"""The Mamba mixer's causal depthwise conv1d + SiLU: ``cpu`` (numba) and ``triton`` (CUDA)."""
