"""LightM-UNet (Liao et al. 2024) for 2D and 3D, as the authors' released code builds it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from napari_lightm.model.blocks import DownStage, DWConv, ResUpBlock, RVMLayer, UpSample
from napari_lightm.model.mamba import Mamba

# named configurations (stored in checkpoint metadata)
CONFIGS: dict[str, dict[str, Any]] = {
    # near the paper's ~1M budget; the default
    "light": {"init_filters": 16, "blocks_down": (1, 2, 2, 4), "blocks_up": (1, 1, 1)},
    # the authors' released code
    "repo": {"init_filters": 32, "blocks_down": (1, 2, 2, 4), "blocks_up": (1, 1, 1)},
}


class LightMUNet(nn.Module):
    """LightM-UNet: a UNet whose encoder is made of Residual Vision Mamba layers.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: number of classes (logits).
        init_filters: width f of the first stage (16 = ``light``, 32 = ``repo``).
        blocks_down: ResMambaBlocks per encoder stage (1, 2, 2, 4).
        blocks_up: ResUpBlocks per decoder stage (1, 1, 1).
        scan_backend: force a selective-scan backend for every mixer (None = auto).

    Input ``[B, in_channels, *S]`` with every spatial size divisible by
    ``2 ** (len(blocks_down) - 1)``; output logits ``[B, out_channels, *S]``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        init_filters: int = 16,
        blocks_down: Sequence[int] = (1, 2, 2, 4),
        blocks_up: Sequence[int] = (1, 1, 1),
        scan_backend: str | None = None,
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if len(blocks_up) != len(blocks_down) - 1:
            raise ValueError("blocks_up needs one entry fewer than blocks_down")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.init_filters = f = init_filters
        self.blocks_down = tuple(blocks_down)
        self.blocks_up = tuple(blocks_up)

        self.stem = DWConv(spatial_dims, in_channels, f)
        self.down_stages = nn.ModuleList(
            DownStage(spatial_dims, f * 2**i, n, downsample=i > 0, scan_backend=scan_backend)
            for i, n in enumerate(self.blocks_down)
        )
        n_up = len(self.blocks_up)
        widths = [f * 2 ** (n_up - i) for i in range(n_up)]  # 8f, 4f, 2f
        self.up_samples = nn.ModuleList(UpSample(spatial_dims, c) for c in widths)
        self.up_stages = nn.ModuleList(
            nn.Sequential(*(ResUpBlock(spatial_dims, c // 2) for _ in range(n)))
            for c, n in zip(widths, self.blocks_up)
        )
        # memory layout of the feature maps: channels-last (the RVM layers' token view is then
        # free) or the default; None = channels-last on the CPU only (see forward)
        self.channels_last: bool | None = None
        self.head = nn.Sequential(
            nn.GroupNorm(8, f), nn.ReLU(), DWConv(spatial_dims, f, out_channels, 1, bias=True)
        )

    @classmethod
    def from_config(cls, name: str, spatial_dims: int, in_channels: int, out_channels: int,
                    **kwargs: Any) -> LightMUNet:
        """Build a named configuration (``light`` or ``repo``)."""
        if name not in CONFIGS:
            raise ValueError(f"unknown LightM-UNet config {name!r}; choose from {sorted(CONFIGS)}")
        return cls(spatial_dims, in_channels, out_channels, **{**CONFIGS[name], **kwargs})

    @property
    def divisor(self) -> int:
        """Every spatial size must be a multiple of this."""
        return 2 ** (len(self.blocks_down) - 1)

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-able), for checkpoints."""
        return {
            "spatial_dims": self.spatial_dims,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "init_filters": self.init_filters,
            "blocks_down": list(self.blocks_down),
            "blocks_up": list(self.blocks_up),
        }

    def set_scan_backend(self, backend: str | None) -> None:
        """Force (or with None, un-force) the scan backend of every mixer."""
        for m in self.modules():
            if isinstance(m, Mamba):
                m.scan_backend = backend

    @property
    def scan_backend(self) -> str:
        """Name of the scan backend the mixers use on the model's current device."""
        return next(m for m in self.modules() if isinstance(m, Mamba)).backend

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"LightMUNet({self.spatial_dims}D) expects a [B, C, *spatial] input with "
                f"{self.spatial_dims} spatial axes, got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {x.shape[1]}")
        bad = [s for s in x.shape[2:] if s % self.divisor]
        if bad:
            raise ValueError(
                f"spatial size {tuple(x.shape[2:])} is not divisible by {self.divisor}; "
                f"pad or crop it to a multiple of {self.divisor} "
                "(sliding-window inference pads for you)"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, out_channels, *S]`` for ``x [B, in_channels, *S]``."""
        self.check_input(x)
        channels_last = self.channels_last
        if channels_last is None:
            channels_last = x.device.type == "cpu"
        # channels-last memory (same values): the RVM layers' token view [B, L, C] is then
        # free, and GroupNorm, pooling, convs and upsampling have kernels for it (on CUDA
        # model/cuda_fast.py turns it on). On CUDA the layout changes after the stem, whose
        # 3x3(x3) convolution cuDNN runs slowly on a channels-last input.
        fmt = torch.channels_last if self.spatial_dims == 2 else torch.channels_last_3d
        if channels_last and x.device.type != "cuda":
            x = x.contiguous(memory_format=fmt)
        x = self.stem(x)
        if channels_last and x.device.type == "cuda":
            x = x.contiguous(memory_format=fmt)
        skips = []
        for stage in self.down_stages:
            x = stage(x)
            skips.append(x)
        skips = skips[-2::-1]  # encoder outputs of each decoder scale, deepest first
        for up, stage, skip in zip(self.up_samples, self.up_stages, skips):
            x = stage(up(x) + skip)
        return self.head(x).contiguous()


__all__ = ["CONFIGS", "LightMUNet", "RVMLayer"]
