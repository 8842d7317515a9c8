"""The few-slice fine-tuning recipe: one named object the widget, the API and the CLI share.

A person labels a few slices of a structure, presses "Fine-tune", then "Segment
unreviewed". :data:`DEFAULT_RECIPE` says how: the model a new volume gets
(:func:`new_segmenter`), how :func:`~napari_lightm.engine.finetuning.iter_finetune`
trains it, and how :func:`~napari_lightm.engine.unreviewed.predict_unreviewed` turns its
output and the reviewed slices into labels. The measurements behind each default are in
``docs/benchmarks.md`` (``benchmarks/hitl.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class FinetuneRecipe:
    """Everything "Fine-tune" and "Segment unreviewed" choose for the user.

    Model (what :func:`new_segmenter` builds; an untrained model without a spacing of its
    own also takes ``plane_spacing_mm`` when fine-tuned):

    - ``spatial_dims``, ``init_filters``: a 2D LightM-UNet of this width.
    - ``plane_spacing_mm``: in-plane model voxel size (never finer than the image's).
    - ``patch``: training patch edge (model voxels), capped at the slice size.

    Optimisation (:func:`~napari_lightm.engine.finetuning.iter_finetune`):

    - ``lr`` for a model that never trained, ``lr_trained`` for one that did;
      ``schedule`` ``"constant"``, ``"poly"`` (exponent 0.9) or ``"cosine"`` over the
      budget (steps or seconds, whichever ends first); ``warmup`` steps of linear warm-up.
    - ``batch_size``, ``default_steps`` (when neither steps nor seconds are given).
    - ``augment`` (the training augmentation) with ``mirror`` (flips and rot90; off for
      CT, whose orientation is fixed: a flipped left kidney looks like the right one).

    The shape between reviewed slices (a volume with at least two reviewed slices):

    - ``pseudo_fraction``: share of the patches taken from the unreviewed slices between
      reviewed ones, labelled by shape interpolation
      (:mod:`~napari_lightm.engine.interpolation`) where it is sure: inside /
      outside the interpolated boundary by more than ``pseudo_margin_mm`` plus
      ``pseudo_margin_slope`` x the distance (mm along the slice axis) to the nearest
      reviewed slice; the band in between is ignored.

    Segment unreviewed (:func:`~napari_lightm.engine.unreviewed.predict_unreviewed`):

    - ``prior_weight``, ``prior_scale_mm``: between reviewed slices, a class's logit gets
      ``prior_weight * clip(-d / prior_scale_mm, +-prior_clip)``, ``d`` the interpolated
      signed distance (mm), scaled down by ``1 + gap_mm / prior_gap_mm`` away from the
      reviewed slices; ``prior_spread`` widens ``prior_scale_mm`` by this factor x how
      far the two reviewed shapes around a slice disagree there (0: off).
    - ``keep_connected``: per class, only the 3D components touching reviewed voxels of
      that class; ``fill_holes``: in-plane holes filled.
    - ``slice_batch``: slices per forward pass when a 2D model predicts a volume.
    """

    name: str = "few-slice v1"
    spatial_dims: int = 2
    init_filters: int = 8
    plane_spacing_mm: float = 1.5
    patch: int = 256
    lr: float = 1e-2
    lr_trained: float = 1e-3
    schedule: str = "poly"
    warmup: int = 0
    batch_size: int = 2
    default_steps: int = 100
    augment: bool = True
    mirror: bool = False
    pseudo_fraction: float = 0.5
    pseudo_margin_mm: float = 1.0
    pseudo_margin_slope: float = 0.5
    prior_weight: float = 4.0
    prior_scale_mm: float = 1.0
    prior_clip: float = 8.0
    prior_gap_mm: float = 1000.0
    prior_spread: float = 0.0
    keep_connected: bool = True
    fill_holes: bool = True
    slice_batch: int = 8

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not 0.0 <= self.pseudo_fraction < 1.0:
            raise ValueError(f"pseudo_fraction must be in [0, 1), got {self.pseudo_fraction}")
        for key in ("lr", "lr_trained", "plane_spacing_mm", "prior_scale_mm", "prior_gap_mm"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)}")
        if self.patch % 8 or self.patch < 8:
            raise ValueError(f"patch must be a positive multiple of 8, got {self.patch}")

    def replace(self, **changes: Any) -> FinetuneRecipe:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def learning_rate(self, untrained: bool) -> float:
        return self.lr if untrained else self.lr_trained

    def lr_factor(self, progress: float, step: int) -> float:
        """LR multiplier at ``progress`` (0..1 of the budget) and ``step`` (0-based)."""
        p = min(max(progress, 0.0), 1.0)
        if self.schedule == "poly":
            f = (1.0 - p) ** 0.9
        elif self.schedule == "cosine":
            f = 0.5 * (1.0 + np.cos(np.pi * p))
        else:
            f = 1.0
        if self.warmup and step < self.warmup:
            f *= (step + 1) / (self.warmup + 1)
        return float(max(f, 0.02))  # the last steps still move

    def model_spacing(self, image_spacing: Sequence[float], spatial_dims: int) -> tuple:
        """Model voxel size (array order, model axes) for an image of ``image_spacing``
        (array order): in-plane at least ``plane_spacing_mm``; slices as they are."""
        sp = [float(s) for s in image_spacing][-spatial_dims:]
        plane = [max(s, self.plane_spacing_mm) for s in sp[-2:]]
        return tuple(sp[:-2] + plane)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SCHEDULES = ("constant", "poly", "cosine")

DEFAULT_RECIPE = FinetuneRecipe()


def untrained(segmenter: Any) -> bool:
    """True for a model that never trained (version 0, no history)."""
    return segmenter.version == 0 and not segmenter.history


def new_segmenter(
    class_names: Sequence[str],
    image_spacing: Sequence[float] | None = None,
    *,
    modality: str = "CT",
    recipe: FinetuneRecipe | None = None,
    device: Any = "auto",
    in_channels: int = 1,
) -> Any:
    """The recipe's new model for images of ``image_spacing`` (array order, mm).

    What "New model" should create for few-slice work: a ``recipe.spatial_dims`` LightM-UNet
    of width ``recipe.init_filters``, at ``recipe.model_spacing`` (None without a spacing),
    with the recipe's patch.
    """
    from napari_lightm.engine.segmenter import DEFAULT_PATCH, Segmenter

    recipe = recipe or DEFAULT_RECIPE
    dims = recipe.spatial_dims
    spacing = None
    if image_spacing is not None and len(image_spacing) >= dims:
        spacing = recipe.model_spacing(image_spacing, dims)
    patch = (recipe.patch,) * 2 if dims == 2 else DEFAULT_PATCH[3]
    return Segmenter.new(
        dims,
        class_names,
        modality=modality,
        device=device,
        in_channels=in_channels,
        patch_size=patch,
        spacing=spacing,
        init_filters=recipe.init_filters,
    )


def interpolated_targets(
    labels: np.ndarray,
    truth: np.ndarray,
    spacing: Sequence[float] | None,
    recipe: FinetuneRecipe | None = None,
) -> np.ndarray | None:
    """Training labels for the unreviewed slices between reviewed ones, from their shape.

    Args:
        labels: ``[Z, Y, X]`` integer labels (read on the reviewed slices).
        truth: ``[Z, Y, X]`` bool, the voxels a person reviewed; slices that are all
            truth are the reviewed slices.
        spacing: array-order voxel size (mm), None = 1 mm.

    Returns uint8 ``[Z, Y, X]``: the interpolated class where the interpolated boundary is
    more than the recipe's margin away (0 for sure background), the ignore label 255 on
    the band around it, on truth voxels and outside the reviewed range; None with fewer
    than two reviewed slices (nothing to interpolate).
    """
    from napari_lightm.engine.interpolation import interpolate_shapes, reviewed_slices
    from napari_lightm.engine.losses import IGNORE

    recipe = recipe or DEFAULT_RECIPE
    labels = np.asarray(labels)
    if labels.ndim != 3:
        return None
    zs = reviewed_slices(truth)
    if len(zs) < 2:
        return None
    sp = (1.0, 1.0, 1.0) if spacing is None else tuple(float(s) for s in spacing)
    shapes = interpolate_shapes(labels, zs, sp)
    out = np.full(labels.shape, IGNORE, np.uint8)
    margin = recipe.pseudo_margin_mm + recipe.pseudo_margin_slope * shapes.gap * sp[0]
    margin = margin[:, None, None]
    region = out[shapes.first : shapes.last + 1]
    if shapes.classes:
        best = shapes.sdf.min(0)
        cls = np.asarray(shapes.classes, np.uint8)[shapes.sdf.argmin(0)]
        region[best < -margin] = cls[best < -margin]
        region[best > margin] = 0
    else:
        region[:] = 0  # no structure on any reviewed slice: background in between
    out[np.asarray(truth, bool)] = IGNORE
    return out


__all__ = [
    "DEFAULT_RECIPE",
    "FinetuneRecipe",
    "interpolated_targets",
    "new_segmenter",
    "untrained",
]
