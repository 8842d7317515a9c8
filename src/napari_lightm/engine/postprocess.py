"""3D clean-up of predicted labels: connected components and holes.

- :func:`keep_connected`: per class, keep the 3D connected components (26-connected)
  that touch the class's known voxels (seeds, e.g. what a person reviewed), or the
  largest one where the class has no seed. An organ is one piece; stray blobs a model
  finds in other slices are not.
- :func:`fill_holes`: per class, fill the holes of each slice along axis 0 (2D, so an
  organ that is open in 3D still gets its in-plane holes filled).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected component of a bool mask (full connectivity); empty stays empty."""
    from scipy import ndimage

    mask = np.asarray(mask, bool)
    comp, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, bool))
    if n <= 1:
        return mask.copy()
    sizes = np.bincount(comp.ravel())
    sizes[0] = 0
    return comp == int(sizes.argmax())


def keep_connected(
    labels: np.ndarray,
    classes: Sequence[int] | None = None,
    seeds: np.ndarray | None = None,
) -> np.ndarray:
    """Labels with, per class, only the components touching ``seeds`` (the largest one
    where the class has no seed voxel); removed voxels become 0.

    Args:
        labels: integer labels ``[*S]``.
        classes: classes to clean (default: every non-zero value present).
        seeds: labels ``[*S]`` known to be right (0 = background or unknown); a
            component of class ``c`` is kept when it holds a voxel with ``seeds == c``.
    """
    from scipy import ndimage

    labels = np.asarray(labels)
    out = labels.copy()
    if classes is None:
        classes = [int(c) for c in np.unique(labels) if c != 0]
    structure = np.ones((3,) * labels.ndim, bool)
    for c in classes:
        box = _bounding_box(labels == c)
        if box is None:
            continue
        mask = labels[box] == c
        comp, n = ndimage.label(mask, structure=structure)
        if n <= 1:
            continue
        if seeds is not None:
            hit = np.unique(comp[(seeds[box] == c) & mask])
            hit = hit[hit > 0]
        else:
            hit = np.zeros(0, int)
        if hit.size:
            keep = np.isin(comp, hit)
        else:
            sizes = np.bincount(comp.ravel())
            sizes[0] = 0
            keep = comp == int(sizes.argmax())
        out[box][mask & ~keep] = 0
    return out


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box holding every True voxel (None when there is none)."""
    from scipy import ndimage

    found = ndimage.find_objects(mask.view(np.uint8) if mask.dtype == bool else mask)
    return found[0] if found and found[0] is not None else None


def fill_holes(labels: np.ndarray, classes: Sequence[int] | None = None) -> np.ndarray:
    """Labels with the in-plane holes of each class filled, slice by slice along axis 0
    (the whole array for 2D labels). Only background voxels are filled."""
    from scipy import ndimage

    labels = np.asarray(labels)
    out = labels.copy()
    if classes is None:
        classes = [int(c) for c in np.unique(labels) if c != 0]
    planes = out[None] if out.ndim == 2 else out
    for c in classes:
        for z in range(planes.shape[0]):
            box = _bounding_box(planes[z] == c)
            if box is None:
                continue
            plane = planes[z][box]  # a view: filled in place
            holes = ndimage.binary_fill_holes(plane == c) & (plane == 0)
            plane[holes] = c
    return out


__all__ = ["fill_holes", "keep_connected", "largest_component"]
