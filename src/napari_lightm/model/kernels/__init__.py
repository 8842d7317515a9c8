"""Fused Triton kernels for the CUDA fast path (conv + SiLU, norms, depthwise 3x3(x3) conv).

Each module holds Triton kernels plus a differentiable ``torch.autograd.Function`` wrapper;
they run compiled on CUDA and in Triton's interpreter (``TRITON_INTERPRET=1``) on the CPU,
which is how the tests check them on machines without a GPU.
"""
