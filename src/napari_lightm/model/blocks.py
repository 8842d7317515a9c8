"""The named blocks of LightM-UNet, generic over ``spatial_dims`` (2 or 3)."""

from __future__ import annotations

import torch
from torch import nn

from napari_lightm.model.mamba import Mamba

GN_GROUPS = 8


def conv_type(spatial_dims: int) -> type[nn.Module]:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d


def pool_type(spatial_dims: int) -> type[nn.Module]:
    return nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d


class DWConv(nn.Sequential):
    """Depthwise-separable convolution: depthwise ``k`` (groups=in) then pointwise 1x1."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int,
                 kernel_size: int = 3, bias: bool = False):
        conv = conv_type(spatial_dims)
        super().__init__(
            conv(in_channels, in_channels, kernel_size, padding=kernel_size // 2,
                 groups=in_channels, bias=bias),
            conv(in_channels, out_channels, 1, bias=bias),
        )


class RVMLayer(nn.Module):
    """Residual Vision Mamba layer on a feature map ``[B, Cin, *S] -> [B, Cout, *S]``.

    Tokens ``t`` are the spatial positions in C order; ``h = Mamba(LN(t)) + s * t``,
    then the same LayerNorm again, then ``Linear(Cin -> Cout)``.
    """

    def __init__(self, in_channels: int, out_channels: int, scan_backend: str | None = None):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.norm = nn.LayerNorm(in_channels)
        self.mamba = Mamba(in_channels, scan_backend=scan_backend)
        self.proj = nn.Linear(in_channels, out_channels)
        self.skip_scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float16:  # as the released code: half input is lifted to float32
            x = x.float()
        b, c, *spatial = x.shape
        # tokens in C order of the spatial axes; a free view for channels-last input
        t = torch.movedim(x, 1, -1).reshape(b, -1, c)  # [B, L, C]
        h = torch.addcmul(self.mamba(self.norm(t)), self.skip_scale, t)  # Mamba(LN(t)) + s * t
        h = self.proj(self.norm(h))
        # back to [B, Cout, *S] as a channels-last view (true channels-last strides, also
        # for batch 1, so pooling and GroupNorm take their channels-last kernels)
        return torch.movedim(h.reshape(b, *spatial, self.out_channels), -1, 1)


class ResMambaBlock(nn.Module):
    """``x + RVM_2(ReLU(GN_2(RVM_1(ReLU(GN_1(x))))))`` at constant width."""

    def __init__(self, spatial_dims: int, channels: int, scan_backend: str | None = None):
        super().__init__()
        self.norm1 = nn.GroupNorm(GN_GROUPS, channels)
        self.rvm1 = RVMLayer(channels, channels, scan_backend)
        self.norm2 = nn.GroupNorm(GN_GROUPS, channels)
        self.rvm2 = RVMLayer(channels, channels, scan_backend)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.rvm1(self.act(self.norm1(x)))
        y = self.rvm2(self.act(self.norm2(y)))
        return y + x


class ResUpBlock(nn.Module):
    """``ReLU(GN_2(DWConv(ReLU(GN_1(x))) + s * x))`` at constant width."""

    def __init__(self, spatial_dims: int, channels: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(GN_GROUPS, channels)
        self.conv = DWConv(spatial_dims, channels, channels, kernel_size=3)
        self.norm2 = nn.GroupNorm(GN_GROUPS, channels)
        self.act = nn.ReLU()
        self.skip_scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(self.act(self.norm1(x))) + self.skip_scale * x
        return self.act(self.norm2(y))


class DownStage(nn.Sequential):
    """Encoder stage: optional ``RVM(C/2 -> C)`` + MaxPool(2), then ResMambaBlocks."""

    def __init__(self, spatial_dims: int, channels: int, n_blocks: int, downsample: bool,
                 scan_backend: str | None = None):
        layers: list[nn.Module] = []
        if downsample:
            layers += [RVMLayer(channels // 2, channels, scan_backend), pool_type(spatial_dims)(2)]
        layers += [ResMambaBlock(spatial_dims, channels, scan_backend) for _ in range(n_blocks)]
        super().__init__(*layers)


class UpSample(nn.Sequential):
    """Decoder up-sampling: ``Conv1x1(C -> C/2)`` then x2 (bi/tri)linear interpolation."""

    def __init__(self, spatial_dims: int, channels: int):
        mode = "bilinear" if spatial_dims == 2 else "trilinear"
        super().__init__(
            conv_type(spatial_dims)(channels, channels // 2, 1, bias=False),
            nn.Upsample(scale_factor=2, mode=mode, align_corners=False),
        )
