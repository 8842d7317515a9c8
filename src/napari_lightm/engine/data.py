"""Training data: dataset folders, patch sampling with foreground oversampling, augmentation.

Dataset layouts read by :func:`load_dataset`:

- nnU-Net raw / Medical Segmentation Decathlon: ``imagesTr/`` + ``labelsTr/`` (+ optional
  ``dataset.json``). Images ``<case>_0000.<ext>`` (one file per channel, ``_0001`` ...) or
  ``<case>.<ext>``; labels ``<case>.<ext>``. ``dataset.json`` may name the classes
  (nnU-Net v2 ``{"labels": {"background": 0, ...}}`` or MSD ``{"labels": {"0": "background"}}``)
  and the modality (``channel_names`` / ``modality``: ``{"0": "CT"}``).
- Two folders of 2D pictures: ``images/`` + ``labels/`` with the same file stems. A PNG
  label set whose only values are 0 and 255 is read as a binary mask (255 -> 1).

Every file goes through :func:`napari_lightm.io.read_image`. Labels value 255 is the
ignore label (:data:`napari_lightm.engine.losses.IGNORE`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_lightm.engine.losses import IGNORE

FG_FRACTION = 1 / 3  # share of patches centred on foreground (nnU-Net)
MAX_FG_INDICES = 20_000  # foreground voxel positions kept per class and case
LATERAL = re.compile(r"\b(left|right)\b", re.IGNORECASE)


class DatasetError(ValueError):
    """A dataset folder that cannot be used for training (one-line reason)."""


@dataclass
class Case:
    """One training image: ``image [C, *S]`` (raw intensities), ``labels [*S]`` (uint8, 255
    = ignore), ``spacing`` (array order, mm)."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, ...]
    fg_index: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.image.shape[1:] != self.labels.shape:
            raise DatasetError(
                f"case {self.name}: image {self.image.shape[1:]} and labels {self.labels.shape} "
                "differ in shape"
            )


@dataclass
class Dataset:
    cases: list[Case]
    class_names: list[str]
    modality: str


def lateral_classes(class_names: Sequence[str]) -> bool:
    """True when classes name a side (left/right): mirroring would swap them."""
    return any(LATERAL.search(n) for n in class_names)


# --- reading folders -------------------------------------------------------------------


def file_stem(path: Path) -> str:
    """The file name without its image/labels suffix (``.nii.gz`` kept whole)."""
    name = path.name
    for suffix in (
        ".nii.gz",
        ".nii",
        ".nrrd",
        ".mha",
        ".mhd",
        ".png",
        ".jpg",
        ".jpeg",
        ".tif",
        ".tiff",
        ".dcm",
        ".npy",
    ):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def case_name(path: Path) -> str:
    """The case a file belongs to: its stem without nnU-Net's channel suffix ``_0000``
    (``liver_003_0000.nii.gz`` and ``liver_003.nii.gz`` are both case ``liver_003``)."""
    stem = file_stem(path)
    return stem[:-5] if re.fullmatch(r".+_0000", stem) else stem


def data_files(folder: Path) -> list[Path]:
    from napari_lightm.io.readers import ARRAY_SUFFIXES, IMAGE_SUFFIXES

    suffixes = IMAGE_SUFFIXES + ARRAY_SUFFIXES
    return sorted(
        p
        for p in folder.iterdir()
        if not p.name.startswith(".") and any(p.name.lower().endswith(s) for s in suffixes)
    )


def find_pairs(root: str | Path) -> tuple[list[tuple[str, list[Path], Path]], dict[str, Any]]:
    """``[(case, [channel files], label file)]`` and the parsed ``dataset.json`` (or {})."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    meta: dict[str, Any] = {}
    if (root / "dataset.json").is_file():
        try:
            meta = json.loads((root / "dataset.json").read_text())
        except json.JSONDecodeError as err:
            raise DatasetError(f"{root / 'dataset.json'} is not valid JSON: {err}") from err
    for images_dir, labels_dir in (("imagesTr", "labelsTr"), ("images", "labels")):
        if (root / images_dir).is_dir() and (root / labels_dir).is_dir():
            break
    else:
        raise DatasetError(
            f"{root} has neither imagesTr/ + labelsTr/ (nnU-Net / MSD) nor images/ + labels/"
        )
    labels = {file_stem(p): p for p in data_files(root / labels_dir)}
    channels: dict[str, dict[int, Path]] = {}
    image_files = data_files(root / images_dir)
    # nnU-Net names every image <case>_XXXX (channel); MSD / picture folders use <case>
    suffixed = bool(image_files) and all(
        re.fullmatch(r".+_\d{4}", file_stem(p)) for p in image_files
    )
    for p in image_files:
        stem = file_stem(p)
        case, ch = (stem[:-5], int(stem[-4:])) if suffixed else (stem, 0)
        channels.setdefault(case, {})[ch] = p
    pairs = []
    for case in sorted(channels):
        if case not in labels:
            raise DatasetError(
                f"{root / images_dir}: image {case} has no label file in {labels_dir}/"
            )
        chans = channels[case]
        if sorted(chans) != list(range(len(chans))):
            raise DatasetError(f"case {case}: channel files {sorted(chans)} are not 0..n-1")
        pairs.append((case, [chans[c] for c in range(len(chans))], labels[case]))
    if not pairs:
        raise DatasetError(f"no image/label pairs in {root}")
    n_ch = {len(p[1]) for p in pairs}
    if len(n_ch) > 1:
        raise DatasetError(f"cases have different channel counts {sorted(n_ch)}")
    return pairs, meta


def class_names_from(meta: dict[str, Any], max_label: int) -> list[str]:
    """Class names from ``dataset.json`` (nnU-Net v2 or MSD style) or generic names."""
    labels = meta.get("labels")
    names: dict[int, str] = {}
    if isinstance(labels, dict):
        for k, v in labels.items():
            if isinstance(v, int) or (isinstance(v, str) and v.isdigit()):
                names[int(v)] = str(k)  # nnU-Net v2: name -> value
            elif str(k).isdigit():
                names[int(k)] = str(v)  # MSD: value -> name
    n = max(max_label, *names) + 1 if names else max_label + 1
    out = [names.get(i, "background" if i == 0 else f"class {i}") for i in range(max(n, 2))]
    return out


def modality_from(meta: dict[str, Any], geometry: Any) -> str:
    ch = meta.get("channel_names") or meta.get("modality") or {}
    first = str(next(iter(ch.values()))) if isinstance(ch, dict) and ch else ""
    text = first.upper()
    if "CT" in text:
        return "CT"
    if "MR" in text or text.startswith("T1") or text.startswith("T2") or "FLAIR" in text:
        return "MR"
    if "X" in text or "CR" in text:
        return "XR"
    mod = getattr(geometry, "modality", "unknown")
    if mod in ("CT", "MR", "XR"):
        return mod
    return "XR" if geometry is not None and len(geometry.spacing) == 2 else "MR"


def read_labels(path: Path) -> np.ndarray:
    """A label file as integer array (rounded; negative or > 255 values are an error)."""
    return read_label_image(path)[0]


def read_label_image(path: Path) -> tuple[np.ndarray, Any]:
    """:func:`read_labels` with the file's :class:`~napari_lightm.io.Geometry`."""
    from napari_lightm.io import read_image

    array, geometry = read_image(path)
    if array.dtype.kind == "f":
        array = np.rint(array)
    if array.min() < 0 or array.max() > 255:
        raise DatasetError(f"{path}: label values must be 0..255, got {array.min()}..{array.max()}")
    return array.astype(np.uint8), geometry


def load_dataset(root: str | Path, modality: str | None = None) -> Dataset:
    """Read every image/label pair of a dataset folder (see the module docstring)."""
    from napari_lightm.io import read_image

    pairs, meta = find_pairs(root)
    cases = []
    geometry = None
    for name, channel_files, label_file in pairs:
        chans = []
        for f in channel_files:
            array, geometry = read_image(f)
            chans.append(array.astype(np.float32))
        shapes = {c.shape for c in chans}
        if len(shapes) > 1:
            raise DatasetError(f"case {name}: channel images differ in shape {sorted(shapes)}")
        labels = read_labels(label_file)
        cases.append(Case(name, np.stack(chans), labels, tuple(geometry.scale)))
    picture_labels = all(
        p[2].suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff") for p in pairs
    )
    if picture_labels and set(np.unique(np.concatenate([np.unique(c.labels) for c in cases]))) <= {
        0,
        255,
    }:
        for c in cases:  # 0/255 masks: binary foreground, not the ignore label
            c.labels = (c.labels > 0).astype(np.uint8)
    max_label = max(int(c.labels[c.labels != IGNORE].max(initial=0)) for c in cases)
    names = class_names_from(meta, max_label)
    return Dataset(cases, names, modality or modality_from(meta, geometry))


# --- patches -----------------------------------------------------------------------------


def crop_pad(
    array: np.ndarray, start: Sequence[int], size: Sequence[int], fill: float
) -> np.ndarray:
    """Crop the last ``len(size)`` axes at ``start`` (may be negative / past the end),
    padding with ``fill`` outside the array."""
    nd = len(size)
    lead = array.shape[:-nd]
    out = np.full((*lead, *size), fill, dtype=array.dtype)
    src, dst = [], []
    for s, n, p in zip(start, array.shape[-nd:], size):
        a, b = max(s, 0), min(s + p, n)
        if b <= a:
            return out
        src.append(slice(a, b))
        dst.append(slice(a - s, b - s))
    out[(..., *dst)] = array[(..., *src)]
    return out


def foreground_index(labels: np.ndarray, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """Flat positions of each foreground class (subsampled to MAX_FG_INDICES)."""
    index = {}
    for k in np.unique(labels):
        if k == 0 or k == IGNORE:
            continue
        pos = np.flatnonzero(labels == k)
        if pos.size > MAX_FG_INDICES:
            pos = np.sort(rng.choice(pos, MAX_FG_INDICES, replace=False))
        index[int(k)] = pos
    return index


class PatchSampler:
    """Random training patches ``x [B, C, *P]`` float32, ``y [B, *P]`` uint8.

    A share ``fg_fraction`` of the patches (1/3, as nnU-Net) contains a voxel of a
    randomly chosen foreground class at a random position of the patch; the others are
    uniform. A 2D patch from a 3D case is a slice along axis 0. A patch stays inside the
    image along axes where the image is at least the patch size, and holds the whole image
    along the others; there the input is padded with 0 (the normalised mean) and the labels
    with the ignore label.
    ``centers`` (optional, per case): flat voxel positions patches must be centred on
    (fine-tuning: reviewed voxels) instead of uniform sampling.
    """

    def __init__(
        self,
        cases: Sequence[Case],
        patch_size: Sequence[int],
        spatial_dims: int,
        rng: np.random.Generator,
        fg_fraction: float = FG_FRACTION,
        centers: Sequence[np.ndarray] | None = None,
    ):
        self.cases = list(cases)
        self.patch = tuple(int(p) for p in patch_size)
        self.spatial_dims = spatial_dims
        self.rng = rng
        self.fg_fraction = fg_fraction
        self.centers = centers
        for c in self.cases:
            if not c.fg_index:
                c.fg_index = foreground_index(c.labels, rng)
            if c.labels.ndim < spatial_dims:
                raise DatasetError(
                    f"case {c.name}: a {spatial_dims}D model needs "
                    f"{spatial_dims}D images, got shape {c.labels.shape}"
                )

    def _anchor(self, i: int, case: Case, force_fg: bool) -> tuple[int, ...] | None:
        """A voxel that must lie in the patch, or None for a uniform patch."""
        if force_fg and case.fg_index:
            k = self.rng.choice(sorted(case.fg_index))
            pos = case.fg_index[k]
            return np.unravel_index(pos[self.rng.integers(pos.size)], case.labels.shape)
        if self.centers is not None and self.centers[i].size:
            pos = self.centers[i]
            return np.unravel_index(pos[self.rng.integers(pos.size)], case.labels.shape)
        return None

    def one(self) -> tuple[np.ndarray, np.ndarray]:
        i = int(self.rng.integers(len(self.cases)))
        case = self.cases[i]
        force_fg = self.rng.random() < self.fg_fraction
        anchor = self._anchor(i, case, force_fg)
        image, labels = case.image, case.labels
        if labels.ndim > self.spatial_dims:  # 2D model on a 3D case: pick a slice
            z = int(anchor[0]) if anchor is not None else int(self.rng.integers(labels.shape[0]))
            image, labels = image[:, z], labels[z]
            anchor = anchor[1:] if anchor is not None else None
        start = []
        for axis, (n, p) in enumerate(zip(labels.shape, self.patch)):
            # starts that keep the patch inside the image (n >= p) or the whole image
            # inside the patch (n < p): a patch never wastes voxels on padding it can avoid
            first, last = min(0, n - p), max(0, n - p)
            if anchor is None:
                lo, hi = first, last
            else:  # anchor anywhere in the patch (centre-weighted when fine-tuning)
                a = int(anchor[axis])
                lo, hi = a - p + 1, a
                if self.centers is not None:
                    lo, hi = a - p // 2 - p // 4, a - p // 2 + p // 4
            # clipping keeps the anchor in the patch (as nnU-Net's foreground sampling)
            start.append(int(np.clip(self.rng.integers(lo, hi + 1), first, last)))
        return crop_pad(image, start, self.patch, 0.0), crop_pad(labels, start, self.patch, IGNORE)

    def batch(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = zip(*(self.one() for _ in range(batch_size)))
        return np.stack(xs), np.stack(ys)


# --- augmentation (torch, on the patch batch) ---------------------------------------------


@dataclass
class Augmentation:
    """nnU-Net-style augmentation on a batch of patches (probabilities per sample).

    Spatial (one affine per sample, image linear / labels nearest, outside -> ignore):
    rotation (in-plane, +-30 degrees) p=0.2, scaling (0.7-1.4) p=0.2. Mirroring along each
    axis p=0.5 and in-plane rot90 p=0.5 (square planes) unless ``mirror=False`` (set for
    left/right classes). Intensity: brightness x(0.75-1.25) p=0.15, contrast p=0.15,
    gamma (0.7-1.5) p=0.3, Gaussian noise (sigma <= 0.1) p=0.1.
    """

    p_rotate: float = 0.2
    max_angle: float = math.pi / 6
    p_scale: float = 0.2
    scale_range: tuple[float, float] = (0.7, 1.4)
    mirror: bool = True
    p_brightness: float = 0.15
    p_contrast: float = 0.15
    p_gamma: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)
    p_noise: float = 0.1

    def __call__(self, x: Any, y: Any, generator: Any) -> tuple[Any, Any]:
        """``x [B, C, *P]`` float, ``y [B, *P]`` long -> augmented (same shapes)."""
        x, y = self.spatial(x, y, generator)
        if self.mirror:
            x, y = self.flips(x, y, generator)
        return self.intensity(x, generator), y

    @staticmethod
    def _rand(n: int, generator: Any, device: Any) -> Any:
        import torch

        return torch.rand(n, generator=generator).to(device)

    def spatial(self, x: Any, y: Any, g: Any) -> tuple[Any, Any]:
        import torch
        import torch.nn.functional as F

        b, nd = x.shape[0], x.ndim - 2
        rot = torch.rand(b, generator=g) < self.p_rotate
        sca = torch.rand(b, generator=g) < self.p_scale
        if not (rot.any() or sca.any()):
            return x, y
        angle = (torch.rand(b, generator=g) * 2 - 1) * self.max_angle * rot
        lo, hi = self.scale_range
        scale = torch.where(sca, lo + torch.rand(b, generator=g) * (hi - lo), torch.ones(b))
        theta = torch.zeros(b, nd, nd + 1)
        theta[:, :nd, :nd] = torch.eye(nd)
        c, s = torch.cos(angle), torch.sin(angle)
        # grid_sample's last two coordinates are (x, y) = the last two array axes
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = c, -s, s, c
        theta[:, :nd, :nd] /= scale[:, None, None]  # output samples a zoomed-out input
        theta = theta.to(x.device, x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x_new = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        yf = y[:, None].to(x.dtype)
        y_new = F.grid_sample(yf, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        inside = F.grid_sample(
            torch.ones_like(yf), grid, mode="nearest", padding_mode="zeros", align_corners=False
        )
        y_new = torch.where(inside > 0.5, y_new, torch.full_like(y_new, IGNORE))[:, 0].long()
        keep = ~(rot | sca).to(x.device)
        x = torch.where(keep.view(-1, *[1] * (x.ndim - 1)), x, x_new)
        y = torch.where(keep.view(-1, *[1] * (y.ndim - 1)), y, y_new)
        return x, y

    def flips(self, x: Any, y: Any, g: Any) -> tuple[Any, Any]:
        import torch

        b, nd = x.shape[0], x.ndim - 2
        xs, ys = [], []
        for i in range(b):
            xi, yi = x[i], y[i]
            axes = [a for a in range(nd) if torch.rand(1, generator=g).item() < 0.5]
            if axes:
                xi, yi = xi.flip([a + 1 for a in axes]), yi.flip(axes)
            if xi.shape[-1] == xi.shape[-2] and torch.rand(1, generator=g).item() < 0.5:
                k = int(torch.randint(1, 4, (1,), generator=g))
                xi, yi = xi.rot90(k, (-2, -1)), yi.rot90(k, (-2, -1))
            xs.append(xi)
            ys.append(yi)
        return torch.stack(xs), torch.stack(ys)

    def intensity(self, x: Any, g: Any) -> Any:
        import torch

        b = x.shape[0]
        shape = (b, *[1] * (x.ndim - 1))
        dims = tuple(range(1, x.ndim))

        def draw(p: float) -> Any:
            return (torch.rand(b, generator=g) < p).view(shape).to(x.device)

        def uniform(lo: float, hi: float) -> Any:
            return (lo + torch.rand(b, generator=g) * (hi - lo)).view(shape).to(x.device, x.dtype)

        x = torch.where(draw(self.p_brightness), x * uniform(0.75, 1.25), x)
        mean = x.mean(dims, keepdim=True)
        x = torch.where(draw(self.p_contrast), (x - mean) * uniform(0.75, 1.25) + mean, x)
        lo_v, hi_v = x.amin(dims, keepdim=True), x.amax(dims, keepdim=True)
        span = (hi_v - lo_v).clamp_min(1e-6)
        gamma = ((x - lo_v) / span).clamp(0, 1) ** uniform(*self.gamma_range) * span + lo_v
        x = torch.where(draw(self.p_gamma), gamma, x)
        noise = torch.randn(x.shape, generator=g).to(x.device, x.dtype) * uniform(0.0, 0.1)
        return torch.where(draw(self.p_noise), x + noise, x)


__all__ = [
    "Augmentation",
    "Case",
    "Dataset",
    "DatasetError",
    "PatchSampler",
    "crop_pad",
    "find_pairs",
    "lateral_classes",
    "load_dataset",
]
