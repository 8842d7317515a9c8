"""Strong augmentation for chest X-rays: what differs between hospitals, drawn per sample.

:class:`XRayAugmentation` works on a batch of normalised patches ``x [B, 1, H, W]``,
``y [B, H, W]`` (torch, any device) and stands for the differences a model trained on
one archive meets elsewhere:

- geometry: zoom (+-30 %, log-uniform), AP-like magnification (the anatomy larger along
  one axis than the other, +-10 %), rotation (+-12 degrees), shifts (+-8 % of the field);
  outside the film is background, filled with a dark value;
- contrast: windowing (clip to random low / high percentiles), gamma (0.6-1.7),
  brightness and contrast; never an inversion (readers undo MONOCHROME1);
- acquisition: Gaussian blur (sigma 0.5-2 px), Gaussian noise;
- film artefacts: collimation bands along the borders, bright markers and text blocks.

Every sample is standardised again at the end (zero mean, unit variance), as the model
input of an X-ray is at prediction time. No mirroring: the classes say left and right.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass
class XRayAugmentation:
    """Per-sample probabilities and ranges of each perturbation (see the module docstring)."""

    p_spatial: float = 0.8
    zoom_range: tuple[float, float] = (0.7, 1.3)
    aspect_range: tuple[float, float] = (0.9, 1.1)
    max_angle: float = math.radians(12)
    max_shift: float = 0.08
    p_window: float = 0.3
    p_gamma: float = 0.5
    gamma_range: tuple[float, float] = (0.6, 1.7)
    p_contrast: float = 0.3
    p_blur: float = 0.2
    blur_range: tuple[float, float] = (0.5, 2.0)
    p_noise: float = 0.2
    max_noise: float = 0.15
    p_border: float = 0.2
    max_border: float = 0.1
    p_marker: float = 0.2

    def __call__(self, x: Any, y: Any, generator: Any) -> tuple[Any, Any]:
        """``x [B, 1, H, W]`` float, ``y [B, H, W]`` long -> augmented (same shapes)."""
        if x.ndim != 4:
            raise ValueError(f"X-ray augmentation takes 2D patches [B, C, H, W], got {x.shape}")
        x, y = self.spatial(x, y, generator)
        x = self.contrast(x, generator)
        x = self.acquisition(x, generator)
        x = self.artefacts(x, generator)
        return standardise(x), y

    # --- helpers drawing per-sample numbers on the CPU generator --------------------------
    @staticmethod
    def _draw(p: float, b: int, g: Any) -> Any:
        import torch

        return torch.rand(b, generator=g) < p

    @staticmethod
    def _uniform(lo: float, hi: float, b: int, g: Any) -> Any:
        import torch

        return lo + torch.rand(b, generator=g) * (hi - lo)

    # --- the four groups --------------------------------------------------------------------
    def spatial(self, x: Any, y: Any, g: Any) -> tuple[Any, Any]:
        import torch
        import torch.nn.functional as F

        b = x.shape[0]
        on = self._draw(self.p_spatial, b, g)
        if not on.any():
            return x, y
        lo, hi = self.zoom_range
        zoom = torch.exp(self._uniform(math.log(lo), math.log(hi), b, g))
        aspect = self._uniform(*self.aspect_range, b, g)
        angle = self._uniform(-self.max_angle, self.max_angle, b, g)
        shift = self._uniform(-self.max_shift, self.max_shift, 2 * b, g).view(b, 2) * 2
        zoom_x, zoom_y = zoom * aspect.sqrt(), zoom / aspect.sqrt()
        c, s = torch.cos(angle), torch.sin(angle)
        theta = torch.zeros(b, 2, 3)
        # output pixel -> input position: rotate, then divide by the zoom (zoom > 1 enlarges)
        theta[:, 0, 0], theta[:, 0, 1] = c / zoom_x, -s / zoom_x
        theta[:, 1, 0], theta[:, 1, 1] = s / zoom_y, c / zoom_y
        theta[:, :, 2] = shift
        identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        theta = torch.where(on.view(b, 1, 1), theta, identity).to(x.device, x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        dark = x.amin(dim=(1, 2, 3), keepdim=True)
        inside = F.grid_sample(torch.ones_like(x[:, :1]), grid, mode="nearest",
                               padding_mode="zeros", align_corners=False)
        moved = F.grid_sample(x - dark, grid, mode="bilinear", padding_mode="zeros",
                              align_corners=False) + dark
        labels = F.grid_sample(y[:, None].to(x.dtype), grid, mode="nearest",
                               padding_mode="zeros", align_corners=False)[:, 0]
        labels = torch.where(inside[:, 0] > 0.5, labels, torch.zeros_like(labels))
        return moved, labels.round().long()

    def contrast(self, x: Any, g: Any) -> Any:
        import torch

        b = x.shape[0]
        view = (b, 1, 1, 1)
        dev = x.device
        flat = x.flatten(1)
        # windowing: clip at random low / high percentiles of each sample
        window = self._draw(self.p_window, b, g).view(view).to(dev)
        q_lo = self._uniform(0.0, 0.1, b, g).to(dev, x.dtype)
        q_hi = self._uniform(0.9, 1.0, b, g).to(dev, x.dtype)
        sorted_vals = flat.sort(dim=1).values
        n = flat.shape[1] - 1
        lo = sorted_vals.gather(1, (q_lo * n).long()[:, None]).view(view)
        hi = sorted_vals.gather(1, (q_hi * n).long()[:, None]).view(view)
        x = torch.where(window, torch.maximum(torch.minimum(x, hi), lo), x)
        # gamma on the sample's own range
        gamma_on = self._draw(self.p_gamma, b, g).view(view).to(dev)
        gamma = torch.exp(self._uniform(*map(math.log, self.gamma_range), b, g))
        lo_v, hi_v = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
        span = (hi_v - lo_v).clamp_min(1e-6)
        curved = ((x - lo_v) / span).clamp(0, 1) ** gamma.view(view).to(dev, x.dtype) * span
        x = torch.where(gamma_on, curved + lo_v, x)
        # contrast about the mean, and brightness
        con_on = self._draw(self.p_contrast, b, g).view(view).to(dev)
        factor = self._uniform(0.7, 1.3, b, g).view(view).to(dev, x.dtype)
        offset = self._uniform(-0.3, 0.3, b, g).view(view).to(dev, x.dtype)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return torch.where(con_on, (x - mean) * factor + mean + offset * span, x)

    def acquisition(self, x: Any, g: Any) -> Any:
        import torch
        import torch.nn.functional as F

        b = x.shape[0]
        blur = self._draw(self.p_blur, b, g)
        sigmas = self._uniform(*self.blur_range, b, g)
        if blur.any():
            out = []
            for i in range(b):
                if not blur[i]:
                    out.append(x[i : i + 1])
                    continue
                sigma = float(sigmas[i])
                r = max(1, int(math.ceil(2.5 * sigma)))
                t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
                k = torch.exp(-0.5 * (t / sigma) ** 2)
                k = k / k.sum()
                xi = F.pad(x[i : i + 1], (r, r, r, r), mode="replicate")
                xi = F.conv2d(xi, k.view(1, 1, 1, -1))
                out.append(F.conv2d(xi, k.view(1, 1, -1, 1)))
            x = torch.cat(out)
        noise_on = self._draw(self.p_noise, b, g).view(b, 1, 1, 1).to(x.device)
        sigma = self._uniform(0.0, self.max_noise, b, g).view(b, 1, 1, 1).to(x.device, x.dtype)
        noise = torch.randn(x.shape, generator=g).to(x.device, x.dtype) * sigma
        return torch.where(noise_on, x + noise, x)

    def artefacts(self, x: Any, g: Any) -> Any:
        import torch

        b, _, h, w = x.shape
        border = self._draw(self.p_border, b, g)
        marker = self._draw(self.p_marker, b, g)
        if not (border.any() or marker.any()):
            return x
        x = x.clone()
        for i in range(b):
            lo, hi = float(x[i].min()), float(x[i].max())
            if border[i]:  # collimation: one to four bands at the film's edges
                value = lo if torch.rand(1, generator=g).item() < 0.7 else hi
                for side in range(4):
                    if torch.rand(1, generator=g).item() < 0.5:
                        continue
                    size = h if side < 2 else w
                    width = int(torch.rand(1, generator=g).item() * self.max_border * size)
                    if width == 0:
                        continue
                    if side == 0:
                        x[i, :, :width] = value
                    elif side == 1:
                        x[i, :, h - width :] = value
                    elif side == 2:
                        x[i, :, :, :width] = value
                    else:
                        x[i, :, :, w - width :] = value
            if marker[i]:  # side markers and burnt-in text: small bright blocks near edges
                for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
                    bh = max(2, int(h * (0.02 + 0.06 * torch.rand(1, generator=g).item())))
                    bw = max(2, int(w * (0.02 + 0.15 * torch.rand(1, generator=g).item())))
                    top = int(torch.randint(0, max(1, h - bh), (1,), generator=g))
                    left = int(torch.randint(0, max(1, w - bw), (1,), generator=g))
                    if torch.rand(1, generator=g).item() < 0.7:  # mostly near the corners
                        top = top % max(1, h // 6) + (0 if top < h // 2 else h - h // 6 - bh)
                        top = min(max(top, 0), h - bh)
                    x[i, :, top : top + bh, left : left + bw] = hi
        return x


def standardise(x: Any) -> Any:
    """Zero mean, unit variance per sample of ``x [B, C, *S]`` (the X-ray model input)."""
    dims = tuple(range(1, x.ndim))
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True).clamp_min(1e-6)
    return (x - mean) / std


__all__ = ["XRayAugmentation", "standardise"]
