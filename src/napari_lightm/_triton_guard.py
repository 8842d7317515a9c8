"""Keep Triton out of CPU-only processes, where it can only crash them.

Triton bundles its own LLVM. When it loads after an OpenGL driver built on another
LLVM (Mesa's llvmpipe: Xvfb, remote desktops, laptops without a GPU driver), the
process dies with a segmentation fault; inside napari that is after the canvas exists.
PyTorch imports Triton lazily and often: ``torch._dynamo`` does (the first
``torch.optim`` optimizer, ``torch.compiler.disable``), so any model use could be that
import. Without a CUDA device Triton has nothing to run on, so the core hides it
before the first such import: ``import triton`` then raises ImportError and PyTorch
carries on without it.

Triton stays importable when it is already imported, when a CUDA device is present,
or when ``TRITON_INTERPRET=1`` asks for its CPU interpreter (this project's kernel
tests).
"""

from __future__ import annotations

import os
import sys


def keep_triton_out() -> bool:
    """Hide Triton from this process when it has no use here; True when hidden now."""
    if "triton" in sys.modules or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    import torch

    if torch.cuda.is_available():
        return False
    sys.modules["triton"] = None  # `import triton` raises ImportError from now on
    return True
