"""Shape-based interpolation between reviewed slices (signed-distance interpolation).

The classic way to fill the slices between hand-drawn ones (Raya & Udupa 1990; what
"fill between slices" tools do): every class of every reviewed slice becomes an in-plane
signed distance map (mm, negative inside, zero on the boundary), the maps of two
neighbouring reviewed slices are blended linearly along axis 0, and a voxel belongs to
the class whose blended distance is negative (the most negative one where classes meet).
A shape whose boundary moves linearly between two slices is reproduced exactly.

A class present in one reviewed slice and absent from the next one shrinks to nothing
half way between them: the empty slice gets the constant distance ``+depth``, ``depth``
being the deepest inside distance of the other slice's shape.

Slices before the first and after the last reviewed slice are not filled (``0``):
interpolation says nothing there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def signed_distance(mask: np.ndarray, spacing: Sequence[float] = (1.0, 1.0)) -> np.ndarray:
    """Signed distance (mm) of a 2D mask: negative inside, zero half a voxel out of the
    boundary voxels, positive outside. ``mask`` must have both inside and outside voxels."""
    from scipy.ndimage import distance_transform_edt

    mask = np.asarray(mask, bool)
    sampling = tuple(float(s) for s in spacing)
    half = 0.5 * min(sampling)
    outside = distance_transform_edt(~mask, sampling=sampling)  # > 0 outside
    inside = distance_transform_edt(mask, sampling=sampling)  # > 0 inside
    return np.where(mask, half - inside, outside - half).astype(np.float32)


@dataclass
class ShapeInterpolation:
    """Blended signed distances of the classes between the first and last reviewed slice.

    Attributes:
        classes: the foreground classes that occur in a reviewed slice.
        first, last: first and last reviewed slice (inclusive range covered).
        sdf: float32 ``[len(classes), last - first + 1, Y, X]`` (mm); ``+inf`` where a class
            is absent on both sides.
        gap: float32 ``[last - first + 1]``: distance (slices) to the nearest reviewed slice.
        span: float32 ``[last - first + 1]``: length (slices) of the interval between the
            two reviewed slices around each slice (0 on a reviewed slice).
        spread: float32 like ``sdf`` (mm): how far the boundary may be from the blended one,
            ``|d_a - d_b| * min(t, 1 - t)`` for the distances ``d_a``, ``d_b`` of the two
            reviewed slices around and the fraction ``t`` of the way between them; 0 on
            reviewed slices and where both slices agree.
    """

    classes: list[int]
    first: int
    last: int
    sdf: np.ndarray
    gap: np.ndarray
    span: np.ndarray
    spread: np.ndarray

    def labels(self, shape: Sequence[int], dtype: type = np.uint8) -> np.ndarray:
        """Interpolated labels of the whole volume (``0`` outside ``first..last``)."""
        out = np.zeros(tuple(shape), dtype=dtype)
        if not self.classes:
            return out
        best = self.sdf.argmin(0)
        inside = np.take_along_axis(self.sdf, best[None], 0)[0] < 0
        values = np.asarray(self.classes, dtype=dtype)[best]
        out[self.first : self.last + 1] = np.where(inside, values, 0)
        return out


def reviewed_slices(truth: np.ndarray) -> list[int]:
    """Indices along axis 0 of the slices whose every voxel is truth (``truth [Z, Y, X]``)."""
    truth = np.asarray(truth, bool)
    return [int(z) for z in np.flatnonzero(truth.reshape(truth.shape[0], -1).all(1))]


def interpolate_shapes(
    labels: np.ndarray,
    slices: Sequence[int],
    spacing: Sequence[float] | None = None,
    classes: Sequence[int] | None = None,
) -> ShapeInterpolation:
    """Signed-distance interpolation of ``labels [Z, Y, X]`` between ``slices``.

    Args:
        labels: integer labels; only the listed slices are read.
        slices: indices along axis 0 of the reviewed (fully labelled) slices.
        spacing: voxel size in array order (3 values) or in-plane (2 values), mm;
            None = 1 mm. Only the in-plane spacing matters.
        classes: foreground classes to interpolate (default: those in the slices).

    Raises ValueError for a labels array that is not 3D or slice indices outside it.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"interpolation needs a 3D labels array, got shape {labels.shape}")
    zs = sorted({int(z) for z in slices})
    if any(z < 0 or z >= labels.shape[0] for z in zs):
        raise ValueError(f"reviewed slices {zs} outside 0..{labels.shape[0] - 1}")
    plane = (1.0, 1.0) if spacing is None else tuple(float(s) for s in spacing)[-2:]
    if classes is None:
        found = np.unique(labels[zs]) if zs else np.zeros(0, labels.dtype)
        classes = [int(c) for c in found if c != 0]
    classes = [int(c) for c in classes]
    if not zs:
        empty = np.zeros((len(classes), 0, *labels.shape[1:]), np.float32)
        return ShapeInterpolation(classes, 0, -1, empty, np.zeros(0, np.float32),
                                  np.zeros(0, np.float32), empty.copy())
    first, last = zs[0], zs[-1]
    n = last - first + 1
    sdf = np.full((len(classes), n, *labels.shape[1:]), np.inf, np.float32)
    spread = np.zeros_like(sdf)
    gap = np.zeros(n, np.float32)
    span = np.zeros(n, np.float32)
    for a, b in zip(zs[:-1], zs[1:]):
        t = (np.arange(a, b + 1) - a) / (b - a)
        gap[a - first : b - first + 1] = np.minimum(t, 1 - t) * (b - a)
        span[a - first + 1 : b - first] = b - a
    for i, c in enumerate(classes):
        maps = {}
        for z in zs:
            m = labels[z] == c
            maps[z] = signed_distance(m, plane) if m.any() and not m.all() else (
                np.full(m.shape, -np.inf if m.all() else np.inf, np.float32)
            )
        if len(zs) == 1:
            sdf[i, 0] = maps[first]
            continue
        for a, b in zip(zs[:-1], zs[1:]):
            da, db = maps[a], maps[b]
            if np.isposinf(da).all() and np.isposinf(db).all():
                continue  # absent on both sides
            if np.isposinf(da).all():  # vanishes half way towards the empty slice
                da = np.full_like(db, max(0.0, -float(db.min())))
            elif np.isposinf(db).all():
                db = np.full_like(da, max(0.0, -float(da.min())))
            t = ((np.arange(a, b + 1) - a) / (b - a)).astype(np.float32)[:, None, None]
            with np.errstate(invalid="ignore"):  # inf * 0 where a slice is all one class
                blend = (1 - t) * da[None] + t * db[None]
                change = np.abs(da - db)[None] * np.minimum(t, 1 - t)
            sdf[i, a - first : b - first + 1] = np.nan_to_num(blend, nan=0.0)
            spread[i, a - first : b - first + 1] = np.nan_to_num(change, nan=0.0, posinf=0.0)
    return ShapeInterpolation(classes, first, last, sdf, gap, span, spread)


def interpolate_labels(
    labels: np.ndarray, slices: Sequence[int], spacing: Sequence[float] | None = None
) -> np.ndarray:
    """Labels filled between the reviewed ``slices`` by shape-based interpolation.

    The reviewed slices keep their labels; slices outside the first..last reviewed slice
    are 0. ``labels [Z, Y, X]`` integers; ``spacing`` array order (mm). Same dtype out.
    """
    labels = np.asarray(labels)
    out = interpolate_shapes(labels, slices, spacing).labels(labels.shape, labels.dtype)
    zs = sorted({int(z) for z in slices})
    out[zs] = labels[zs]
    return out


__all__ = [
    "ShapeInterpolation",
    "interpolate_labels",
    "interpolate_shapes",
    "reviewed_slices",
    "signed_distance",
]
