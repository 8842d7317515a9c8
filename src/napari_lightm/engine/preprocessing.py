"""Preprocessing stored with every model: model spacing, intensity scheme, input channels.

Intensity schemes (as nnU-Net):

- ``CT``: clip to the 0.5 / 99.5 percentiles of the *foreground* voxels of the training
  data, then z-score with the foreground mean / std (dataset statistics, per channel).
  Before a model has seen data (:meth:`Preprocessing.default`), a fixed HU window is used:
  clip to [-1000, 1000] HU, then ``(x - 0) / 500``.
- ``MR`` and ``XR`` (and anything else): per-image z-score, per channel, after clipping
  to the image's own 0.5 / 99.5 percentiles, so a few extreme voxels (a 1e30 pixel, a
  burned-in marker) neither shift the statistics nor swamp the rest of the image.

Statistics and the z-score are computed in float64 (in blocks, so memory stays near the
float32 output's) and the result is clipped to +-:data:`MAX_ABS_Z`: intensities up to
the float32 / float64 limits give finite model input.

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
ZSCORE_PERCENTILES = (0.5, 99.5)  # per-image clip of MR / XR before the z-score
MAX_STAT_VOXELS = 1_000_000  # voxels sampled for percentiles (CT: foreground voxels)
MAX_ABS_Z = 1e4  # normalised values are clipped to this (float32-safe, far beyond real data)
BLOCK = 1 << 20  # voxels per float64 block
MIN_SPACING, MAX_SPACING = 1e-3, 1e3  # mm; a model spacing outside is refused
MAX_UPSAMPLING = 64  # resampling may multiply the voxel count by at most this ...
MIN_CAPPED_VOXELS = 2**26  # ... once the result is larger than this


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
        if isinstance(self.in_channels, bool) or not isinstance(self.in_channels, int):
            raise ValueError(f"in_channels must be an integer, got {_short(self.in_channels)}")
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {self.in_channels}")
        if self.spacing is not None:
            self.spacing = tuple(float(s) for s in self.spacing)
            if not all(MIN_SPACING <= s <= MAX_SPACING for s in self.spacing):  # NaN fails too
                raise ValueError(
                    f"spacing must be between {MIN_SPACING} and {MAX_SPACING} mm, "
                    f"got {self.spacing}"
                )
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
        if self.modality == "CT":
            self._check_ct_statistics()

    def _check_ct_statistics(self) -> None:
        stats = {"clip_low": self.clip_low, "clip_high": self.clip_high, "mean": self.mean,
                 "std": self.std}
        for name, values in stats.items():
            if not isinstance(values, (list, tuple)) or len(values) != self.in_channels:
                raise ValueError(
                    f"CT statistic {name} needs {self.in_channels} value(s), got {_short(values)}"
                )
            if not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
                for v in values
            ):
                raise ValueError(
                    f"CT statistic {name} must be finite numbers, got {_short(values)}"
                )
            stats[name] = [float(v) for v in values]
        self.clip_low, self.clip_high = stats["clip_low"], stats["clip_high"]
        self.mean, self.std = stats["mean"], stats["std"]
        if any(s <= 0 for s in self.std) or any(
            lo > hi for lo, hi in zip(self.clip_low, self.clip_high)
        ):
            raise ValueError(
                f"CT statistics need std > 0 and clip_low <= clip_high, got std {self.std}, "
                f"clip {self.clip_low}..{self.clip_high}"
            )

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
            mean, std = float(v.mean()), float(v.std())
            if not np.isfinite([lo, hi, mean, std]).all():
                raise ValueError(
                    f"channel {c}: intensities {lo:.3g}..{hi:.3g} are too large for statistics"
                )
            out.clip_low.append(float(lo))
            out.clip_high.append(float(hi))
            out.mean.append(mean)
            out.std.append(max(std, 1e-8))
        out.stats_from = "data"
        return out

    def statistics(self, image: np.ndarray) -> list[tuple[float, ...]]:
        """Per channel of ``image [C, *S]``: ``(low, high, mean, std, scale)``, what
        :meth:`normalize` maps intensities with. Fixed for CT; read from the whole image
        otherwise (per-image z-score), so parts normalised with the statistics of their
        image match the whole image normalised at once."""
        stats = []
        for c in range(image.shape[0]):
            if self.scheme == "ct":
                stats.append((self.clip_low[c], self.clip_high[c], self.mean[c], self.std[c],
                               1.0))
                continue
            x = np.ascontiguousarray(image[c]).reshape(-1)
            scale = _safe_scale(x)
            lo, hi, median = _sample_percentiles(x, (*ZSCORE_PERCENTILES, 50.0), scale)
            mean, std = clipped_mean_std(x, lo, hi, median, scale)
            stats.append((lo, hi, mean, std, scale))
        return stats

    def normalize(
        self, image: np.ndarray, stats: Sequence[tuple[float, ...]] | None = None
    ) -> np.ndarray:
        """Intensities to model input: ``[C, *S]`` -> float32 ``[C, *S]`` (finite, within
        +-:data:`MAX_ABS_Z`, for any finite input). ``stats``: from :meth:`statistics`
        of the whole image when ``image`` is a part of it (default: of ``image``)."""
        stats = self.statistics(image) if stats is None else stats
        out = np.empty(image.shape, dtype=np.float32)
        for c, (lo, hi, mean, std, scale) in enumerate(stats):
            x = np.ascontiguousarray(image[c]).reshape(-1)
            dst = out[c].reshape(-1)  # a view: out is C-contiguous
            for i in range(0, x.size, BLOCK):
                v = np.clip(_block(x, i, scale), lo, hi)
                v -= mean
                v /= std
                dst[i : i + BLOCK] = np.clip(v, -MAX_ABS_Z, MAX_ABS_Z)
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


def _short(value: Any) -> str:
    """``repr`` on one line of at most 60 characters (values from a file may be huge)."""
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."


def robust_range(x: np.ndarray) -> tuple[float, float]:
    """The :data:`ZSCORE_PERCENTILES` of ``x`` (flat, finite), float64; from a fixed random
    sample of :data:`MAX_STAT_VOXELS` voxels for large images."""
    scale = _safe_scale(x)
    lo, hi = _sample_percentiles(x, ZSCORE_PERCENTILES, scale)
    return lo / scale, hi / scale


def _safe_scale(x: np.ndarray) -> float:
    """A power of two that brings float64 intensities near the type's limit down to where
    sums of squares cannot overflow (z-scores do not change with the scale); 1 otherwise."""
    if x.size == 0 or x.dtype.kind != "f" or x.dtype.itemsize <= 4:
        return 1.0  # float32 / integer squares stay far below the float64 limit
    top = max(abs(float(x.max())), abs(float(x.min())))
    return 2.0 ** -np.frexp(top)[1] if top > 1e150 else 1.0


def _block(x: np.ndarray, start: int, scale: float = 1.0) -> np.ndarray:
    v = x[start : start + BLOCK].astype(np.float64)
    if scale != 1.0:
        v *= scale
    return v


def _sample_percentiles(x: np.ndarray, q: Sequence[float], scale: float = 1.0) -> list[float]:
    if x.size == 0:
        return [0.0] * len(q)
    if x.size > MAX_STAT_VOXELS:
        x = x[np.random.default_rng(0).integers(0, x.size, MAX_STAT_VOXELS)]
    return [float(v) for v in np.percentile(x.astype(np.float64) * scale, q)]


def clipped_mean_std(
    x: np.ndarray, lo: float, hi: float, center: float | None = None, scale: float = 1.0
) -> tuple[float, float]:
    """Mean and standard deviation (floor 1e-8) of ``clip(x * scale, lo, hi)`` (``x`` flat),
    float64, one pass in blocks; sums are taken around ``center`` (default: the median)
    to keep their precision."""
    n = max(1, x.size)
    if center is None:
        center = _sample_percentiles(x, (50.0,), scale)[0]
    ref = min(max(center, lo), hi)
    total = squares = 0.0
    for i in range(0, x.size, BLOCK):
        v = np.clip(_block(x, i, scale), lo, hi)
        v -= ref
        total += float(v.sum())
        squares += float(np.dot(v, v))
    mean = total / n
    std = float(np.sqrt(max(squares / n - mean * mean, 0.0)))
    return ref + mean, std if std > 1e-8 else 1e-8


def normalize_modality(modality: str) -> str:
    """``"ct"`` -> ``"CT"``, ``"MRI"`` -> ``"MR"``, ``"CR"/"DX"/"X-ray"`` -> ``"XR"``."""
    m = str(modality)[:40].strip().upper().replace("-", "")
    aliases = {"MRI": "MR", "CR": "XR", "DX": "XR", "XRAY": "XR", "DR": "XR"}
    m = aliases.get(m, m)
    if m not in MODALITIES:
        raise ValueError(
            f"unknown modality {_short(modality)}; choose from {', '.join(MODALITIES)}"
        )
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
    check_resampled_size(array.shape[-len(src_spacing):], src_spacing, dst_spacing)
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


def check_resampled_size(
    shape: Sequence[int], src_spacing: Sequence[float], dst_spacing: Sequence[float]
) -> None:
    """Refuse a resampling that would multiply the voxel count by more than
    :data:`MAX_UPSAMPLING` into more than :data:`MIN_CAPPED_VOXELS` voxels (a spacing
    off by orders of magnitude), before anything is allocated."""
    before = float(np.prod(shape))
    after = float(np.prod([n * s / d for n, s, d in zip(shape, src_spacing, dst_spacing)]))
    if after > MIN_CAPPED_VOXELS and after > MAX_UPSAMPLING * before:
        raise ValueError(
            f"resampling {tuple(shape)} voxels of spacing {tuple(src_spacing)} to the model "
            f"spacing {tuple(dst_spacing)} would make {after:.3g} voxels; check the spacing"
        )


def resample_shape(array: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """Resample the last ``len(shape)`` axes to exactly ``shape``."""
    from napari_lightm.io.geometry import resample

    nd = len(shape)
    if tuple(array.shape[-nd:]) == tuple(shape):
        return array
    return resample(array, (1.0,) * nd, shape=tuple(shape), order=order)


__all__ = [
    "CT_PERCENTILES",
    "MAX_ABS_Z",
    "ZSCORE_PERCENTILES",
    "DEFAULT_CT_WINDOW",
    "MODALITIES",
    "Preprocessing",
    "array_spacing",
    "as_channels",
    "check_resampled_size",
    "clipped_mean_std",
    "estimate_spacing",
    "normalize_modality",
    "resample_shape",
    "resample_to",
    "robust_range",
    "spacing_is_known",
]
