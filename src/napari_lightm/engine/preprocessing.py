"""Preprocessing stored with every model: model spacing, intensity scheme, input channels.

Intensity schemes (as nnU-Net):

- ``CT``: clip to the 0.5 / 99.5 percentiles of the *foreground* voxels of the training
  data, then z-score with the foreground mean / std (dataset statistics, per channel).
  Before a model has seen data (:meth:`Preprocessing.default`), a fixed HU window is used:
  clip to [-1000, 1000] HU, then ``(x - 0) / 500``.
- ``MR`` and ``XR`` (and anything else): per-image z-score, per channel.

Spacing: ``spacing`` is the model's voxel size in **array order** for the model's spatial
axes (``(y, x)`` for 2D models, ``(z, y, x)`` for 3D), or ``None`` = use the image as it
is (no resampling). Images are resampled to it with ``order=1`` and logits back with
``order=1``; labels go with ``order=0``, always through
:func:`napari_lightm.io.geometry.resample`. A 2D model on a 3D image resamples only the
in-plane axes (slices along axis 0 stay slices).

Array layout: a single-channel image is ``[*S]``; a multi-channel one is ``[C, *S]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MODALITIES = ("CT", "MR", "XR")
DEFAULT_CT_WINDOW = (-1000.0, 1000.0)  # HU, before dataset statistics exist
DEFAULT_CT_MEAN = 0.0
DEFAULT_CT_STD = 500.0
CT_PERCENTILES = (0.5, 99.5)
MAX_STAT_VOXELS = 1_000_000  # foreground voxels sampled for CT statistics


@dataclass
class Preprocessing:
    """How images become model input, stored in every checkpoint.

    Attributes:
        modality: ``"CT"``, ``"MR"`` or ``"XR"`` (chooses the intensity scheme).
        in_channels: image channels the model takes.
        spacing: model voxel size, array order, model spatial axes; None = native.
        clip_low, clip_high, mean, std: CT statistics per channel (lists of length
            ``in_channels``); unused for MR/XR.
        stats_from: ``"default"`` (fixed HU window) or ``"data"`` (computed by training).
        field_of_view: median physical extent of the training images (mm, array order,
            model axes), or None; scales images without a known spacing
            (:func:`estimate_spacing`).
    """

    modality: str = "CT"
    in_channels: int = 1
    spacing: tuple[float, ...] | None = None
    clip_low: list[float] = field(default_factory=list)
    clip_high: list[float] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    stats_from: str = "default"
    field_of_view: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        self.modality = normalize_modality(self.modality)
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {self.in_channels}")
        if self.spacing is not None:
            self.spacing = tuple(float(s) for s in self.spacing)
            if any(s <= 0 or not np.isfinite(s) for s in self.spacing):
                raise ValueError(f"spacing must be positive, got {self.spacing}")
        if self.field_of_view is not None:
            self.field_of_view = tuple(float(v) for v in self.field_of_view)
            if not all(np.isfinite(v) and v > 0 for v in self.field_of_view):
                raise ValueError(f"field of view must be positive, got {self.field_of_view}")
        if self.modality == "CT" and not self.mean:
            c = self.in_channels
            self.clip_low = [DEFAULT_CT_WINDOW[0]] * c
            self.clip_high = [DEFAULT_CT_WINDOW[1]] * c
            self.mean = [DEFAULT_CT_MEAN] * c
            self.std = [DEFAULT_CT_STD] * c
            self.stats_from = "default"

    @classmethod
    def default(
        cls, modality: str = "CT", in_channels: int = 1, spacing: Sequence[float] | None = None
    ) -> Preprocessing:
        """Preprocessing of a new model (fixed CT window until data statistics exist)."""
        return cls(
            modality=modality,
            in_channels=in_channels,
            spacing=None if spacing is None else tuple(spacing),
        )

    @property
    def scheme(self) -> str:
        """``"ct"`` (clip + dataset z-score) or ``"zscore"`` (per image)."""
        return "ct" if self.modality == "CT" else "zscore"

    def fit(
        self, images: Sequence[np.ndarray], labels: Sequence[np.ndarray], seed: int = 0
    ) -> Preprocessing:
        """A copy with CT statistics computed from the foreground (label > 0, not 255)
        voxels of ``images`` (each ``[C, *S]``); MR/XR: an unchanged copy.

        With no foreground voxels at all, the image voxels are used.
        """
        out = Preprocessing.from_dict(self.to_dict())
        if self.scheme != "ct":
            return out
        rng = np.random.default_rng(seed)
        per_case = max(1, MAX_STAT_VOXELS // max(1, len(images)))
        samples: list[list[np.ndarray]] = [[] for _ in range(self.in_channels)]
        for image, label in zip(images, labels):
            fg = (label > 0) & (label != 255)
            if not fg.any():
                fg = np.ones_like(label, dtype=bool)
            idx = np.flatnonzero(fg)
            if idx.size > per_case:
                idx = rng.choice(idx, per_case, replace=False)
            for c in range(self.in_channels):
                samples[c].append(image[c].reshape(-1)[idx].astype(np.float64))
        out.clip_low, out.clip_high, out.mean, out.std = [], [], [], []
        for c in range(self.in_channels):
            v = np.concatenate(samples[c])
            lo, hi = np.percentile(v, CT_PERCENTILES)
            v = np.clip(v, lo, hi)
            out.clip_low.append(float(lo))
            out.clip_high.append(float(hi))
            out.mean.append(float(v.mean()))
            out.std.append(float(max(v.std(), 1e-8)))
        out.stats_from = "data"
        return out

    def normalize(self, image: np.ndarray) -> np.ndarray:
        """Intensities to model input: ``[C, *S]`` -> float32 ``[C, *S]``."""
        out = np.empty(image.shape, dtype=np.float32)
        for c in range(image.shape[0]):
            x = image[c].astype(np.float32, copy=False)
            if self.scheme == "ct":
                x = np.clip(x, self.clip_low[c], self.clip_high[c])
                out[c] = (x - self.mean[c]) / self.std[c]
            else:
                out[c] = (x - x.mean()) / max(float(x.std()), 1e-8)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "modality": self.modality,
            "in_channels": self.in_channels,
            "spacing": None if self.spacing is None else list(self.spacing),
            "scheme": self.scheme,
            "clip_low": list(self.clip_low),
            "clip_high": list(self.clip_high),
            "mean": list(self.mean),
            "std": list(self.std),
            "stats_from": self.stats_from,
            "field_of_view": None if self.field_of_view is None else list(self.field_of_view),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        keys = (
            "modality",
            "in_channels",
            "spacing",
            "clip_low",
            "clip_high",
            "mean",
            "std",
            "stats_from",
            "field_of_view",
        )
        return cls(**{k: d[k] for k in keys if k in d})


def normalize_modality(modality: str) -> str:
    """``"ct"`` -> ``"CT"``, ``"MRI"`` -> ``"MR"``, ``"CR"/"DX"/"X-ray"`` -> ``"XR"``."""
    m = str(modality).strip().upper().replace("-", "")
    aliases = {"MRI": "MR", "CR": "XR", "DX": "XR", "XRAY": "XR", "DR": "XR"}
    m = aliases.get(m, m)
    if m not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; choose from {', '.join(MODALITIES)}")
    return m


def as_channels(image: np.ndarray, in_channels: int) -> np.ndarray:
    """``[*S]`` (one channel) or ``[C, *S]`` -> ``[C, *S]``; checks the channel count."""
    if in_channels == 1:
        return image[None]
    if image.shape[0] != in_channels:
        raise ValueError(
            f"the model takes {in_channels} input channels (array [C, *S]); "
            f"got an image of shape {image.shape}"
        )
    return image


def array_spacing(geometry: Any, ndim: int) -> tuple[float, ...]:
    """Array-order voxel spacing of an image with ``ndim`` spatial axes (1.0 without geometry)."""
    if geometry is None:
        return (1.0,) * ndim
    scale = tuple(float(s) for s in geometry.scale)
    if len(scale) != ndim:
        raise ValueError(f"geometry has {len(scale)} axes but the image has {ndim} spatial axes")
    return scale


def resample_to(
    array: np.ndarray,
    src_spacing: Sequence[float],
    dst_spacing: Sequence[float] | None,
    order: int,
    antialias: bool = False,
) -> np.ndarray:
    """Resample the last ``len(src_spacing)`` axes from ``src`` to ``dst`` spacing (None: as is).

    ``antialias``: low-pass the axes that shrink first (Gaussian, sigma = (factor - 1) / 2
    voxels, as scikit-image), so a film downsampled 8x keeps its anatomy instead of aliased
    noise; for images, never for labels.
    """
    from napari_lightm.io.geometry import resample

    if dst_spacing is None or np.allclose(src_spacing, dst_spacing, rtol=1e-3):
        return array
    if antialias and order > 0:
        factors = [d / s for s, d in zip(src_spacing, dst_spacing)]
        sigma = [0.0] * (array.ndim - len(factors)) + [max(0.0, (f - 1) / 2) for f in factors]
        if any(v > 0 for v in sigma):
            from scipy import ndimage

            array = ndimage.gaussian_filter(
                array.astype(np.float32, copy=False), sigma, mode="nearest"
            )
    return resample(array, tuple(src_spacing), tuple(dst_spacing), order=order)


def spacing_is_known(geometry: Any) -> bool:
    """False for images without a physical pixel spacing (``units="pixel"``: PNG, JPEG,
    TIFF, DICOM without PixelSpacing) and for no geometry at all."""
    return geometry is not None and getattr(geometry, "units", "mm") != "pixel"


def estimate_spacing(
    shape: Sequence[int], preprocessing: Preprocessing
) -> tuple[float, ...] | None:
    """Isotropic spacing (mm) that fits the image's shorter side to the model's field of view.

    For X-rays without a spacing: chest films are framed on the chest, so the image spans
    about what the training images spanned. The shorter sides are matched because film
    formats differ mostly in their longer side (14 x 14 vs 14 x 17 inch). None when the
    model records no field of view.
    """
    fov = preprocessing.field_of_view
    if fov is None or not len(shape):
        return None
    side = min(int(n) for n in shape)
    return (float(min(fov)) / max(side, 1),) * len(shape)


def resample_shape(array: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """Resample the last ``len(shape)`` axes to exactly ``shape``."""
    from napari_lightm.io.geometry import resample

    nd = len(shape)
    if tuple(array.shape[-nd:]) == tuple(shape):
        return array
    return resample(array, (1.0,) * nd, shape=tuple(shape), order=order)


__all__ = [
    "CT_PERCENTILES",
    "DEFAULT_CT_WINDOW",
    "MODALITIES",
    "Preprocessing",
    "array_spacing",
    "as_channels",
    "estimate_spacing",
    "normalize_modality",
    "resample_shape",
    "resample_to",
    "spacing_is_known",
]
