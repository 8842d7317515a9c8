"""LightM-UNet in pure PyTorch: blocks, the Mamba mixer and selective-scan backends."""

from napari_lightm._triton_guard import keep_triton_out

keep_triton_out()  # before torch._dynamo can import it (see the guard's docstring)

# ruff: noqa: E402

from napari_lightm.model.blocks import DownStage, DWConv, ResMambaBlock, ResUpBlock, RVMLayer
from napari_lightm.model.lightm_unet import CONFIGS, LightMUNet
from napari_lightm.model.mamba import Mamba
from napari_lightm.model.scan import available_backends, resolve_backend, selective_scan

__all__ = [
    "CONFIGS",
    "DWConv",
    "DownStage",
    "LightMUNet",
    "Mamba",
    "ResMambaBlock",
    "ResUpBlock",
    "RVMLayer",
    "available_backends",
    "resolve_backend",
    "selective_scan",
]
