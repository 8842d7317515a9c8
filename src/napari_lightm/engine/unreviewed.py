"""Segment unreviewed: the model's labels for everything a person has not reviewed.

:func:`predict_unreviewed` is what the widget's "Segment unreviewed" button calls for
each image. Besides the model it uses what the person already gave, as the recipe
(:class:`~napari_lightm.engine.recipe.FinetuneRecipe`) says:

1. the model's logits for the whole image (a 2D model predicts several slices per
   forward pass);
2. between the first and the last fully reviewed slice of a volume, each class's logit
   is pulled towards the shape interpolated from the reviewed slices
   (:mod:`~napari_lightm.engine.interpolation`), firmly next to a reviewed slice and
   less so half way between two (the recipe's ``prior_*`` fields);
3. per class, only the 3D connected components that touch a reviewed voxel of that
   class are kept, and in-plane holes are filled
   (:mod:`~napari_lightm.engine.postprocess`);
4. the truth (reviewed voxels) is copied back unchanged.

Nothing is kept between calls: the interpolation comes from the ``labels`` and
``truth`` passed in, so the result always follows the latest corrections.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np

from napari_lightm.engine.callbacks import CancelToken, Progress, ProgressCallback, check, drain
from napari_lightm.engine.recipe import DEFAULT_RECIPE, FinetuneRecipe
from napari_lightm.engine.segmenter import Segmenter


def add_shape_prior(
    logits: np.ndarray,
    labels: np.ndarray,
    truth: np.ndarray,
    spacing: Any,
    recipe: FinetuneRecipe,
) -> bool:
    """Add the interpolated shape of the reviewed slices to ``logits [K, Z, Y, X]`` in
    place (see the module docstring); False when there is nothing to interpolate."""
    from napari_lightm.engine.interpolation import interpolate_shapes, reviewed_slices

    zs = reviewed_slices(truth)
    if labels.ndim != 3 or len(zs) < 2 or recipe.prior_weight == 0:
        return False
    sp = (1.0, 1.0, 1.0) if spacing is None else tuple(float(s) for s in spacing)
    classes = [c for c in range(1, logits.shape[0])]
    shapes = interpolate_shapes(labels, zs, sp, classes=classes)
    gap_mm = shapes.gap * sp[0]
    weight = (recipe.prior_weight / (1.0 + gap_mm / recipe.prior_gap_mm))[:, None, None]
    region = slice(shapes.first, shapes.last + 1)
    for i, c in enumerate(shapes.classes):
        scale = recipe.prior_scale_mm + recipe.prior_spread * shapes.spread[i]
        prior = np.clip(-shapes.sdf[i] / scale, -recipe.prior_clip, recipe.prior_clip)
        logits[c, region] += weight * prior
    return True


def iter_predict_unreviewed(
    segmenter: Segmenter,
    image: np.ndarray,
    geometry: Any,
    labels: np.ndarray,
    truth: np.ndarray,
    *,
    recipe: FinetuneRecipe | None = None,
    cancel: CancelToken | None = None,
    tile_batch: int | None = None,
) -> Generator[Progress, None, np.ndarray]:
    """Yields :class:`Progress` per forward pass; returns the labels of the whole image.

    Args:
        segmenter: the (fine-tuned) model.
        image: ``[*S]`` (or ``[C, *S]``) raw intensities, as for :meth:`Segmenter.predict`.
        geometry: the image's geometry (spacing), or None (1 mm).
        labels: the current labels ``[*S]`` (read where ``truth`` is set).
        truth: ``[*S]`` bool, the voxels a person reviewed, painted or clicked; slices
            that are all truth are the reviewed slices the shape is interpolated from.
        recipe: default :data:`~napari_lightm.engine.recipe.DEFAULT_RECIPE`.
        cancel: checked between forward passes and stages; raises :class:`Cancelled`.
        tile_batch: windows per forward pass (default: several slices at a time).

    Returns ``labels`` dtype of the segmenter, ``[*S]``: truth voxels exactly as given,
    every other voxel predicted. Raises ValueError for arrays of other shapes.
    """
    from napari_lightm.engine.preprocessing import array_spacing

    recipe = DEFAULT_RECIPE if recipe is None else recipe
    labels = np.asarray(labels)
    truth = np.asarray(truth, bool)
    spatial = image.shape[-labels.ndim :] if labels.ndim else ()
    if labels.shape != truth.shape or tuple(spatial) != labels.shape:
        raise ValueError(
            f"segment unreviewed: image {image.shape}, labels {labels.shape} and truth "
            f"{truth.shape} must have the same spatial shape"
        )
    if labels.dtype.kind not in "biu":
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    top = int(labels[truth].max(initial=0))
    if top >= segmenter.n_classes:
        raise ValueError(
            f"label value {top} but the model has classes {segmenter.class_names}"
        )
    logits = yield from segmenter.iter_logits(
        image, geometry, cancel=cancel, tile_batch=tile_batch
    )
    check(cancel)
    spacing = array_spacing(geometry, labels.ndim)
    return labels_from_logits(logits, labels, truth, spacing, recipe, segmenter.labels_dtype)


def labels_from_logits(
    logits: np.ndarray,
    labels: np.ndarray,
    truth: np.ndarray,
    spacing: Any,
    recipe: FinetuneRecipe | None = None,
    dtype: type = np.uint8,
) -> np.ndarray:
    """Steps 2-4 of the module docstring on a model's ``logits [K, *S]`` (changed in
    place): shape prior, argmax, connected components and holes, truth copied back."""
    from napari_lightm.engine.postprocess import fill_holes, keep_connected

    recipe = DEFAULT_RECIPE if recipe is None else recipe
    truth = np.asarray(truth, bool)
    add_shape_prior(logits, labels, truth, spacing, recipe)
    pred = logits.argmax(0).astype(dtype)
    seeds = np.where(truth, labels, 0)
    classes = [int(c) for c in np.unique(seeds) if c != 0]
    if recipe.keep_connected and labels.ndim == 3:
        pred = keep_connected(pred, classes, seeds=seeds)  # classes with a reviewed voxel
    if recipe.fill_holes:
        pred = fill_holes(pred)
    pred[truth] = labels[truth]
    return pred


def predict_unreviewed(
    segmenter: Segmenter,
    image: np.ndarray,
    geometry: Any,
    labels: np.ndarray,
    truth: np.ndarray,
    *,
    progress: ProgressCallback | None = None,
    **kwargs: Any,
) -> np.ndarray:
    """Plain form of :func:`iter_predict_unreviewed` (same arguments)."""
    return drain(
        iter_predict_unreviewed(segmenter, image, geometry, labels, truth, **kwargs), progress
    )


__all__ = [
    "add_shape_prior",
    "iter_predict_unreviewed",
    "labels_from_logits",
    "predict_unreviewed",
]
