"""Write label arrays with the exact geometry of their source image.

:func:`write_labels` picks the format from the suffix: NIfTI (``.nii``, ``.nii.gz``),
NRRD (``.nrrd``), MetaImage (``.mha``, or ``.mhd`` + ``.raw``) or PNG (2D only; PNG
has no header for spacing or orientation, so only the values survive). Labels are
stored as ``uint8`` (``uint16`` beyond 255); the header takes spacing, origin and
direction from the source image's :class:`Geometry` unchanged, so the labels open
aligned with the image in 3D Slicer or ITK-SNAP.

Single-file formats are written to a temporary file next to the target and renamed
over it at the end, so a failed write never leaves half a file (or destroys an older
one).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from napari_lightm.io.geometry import Geometry
from napari_lightm.io.readers import itk_reason, suffix_of

LABEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".png")


class LabelWriteError(ValueError):
    """Labels that cannot be written as asked; the message names the file and why."""


def label_dtype(labels: np.ndarray, path: str | os.PathLike = "labels") -> np.dtype:
    """``uint8`` when every value fits, else ``uint16``; refuses negative, fractional or
    too large values (they are not class indices)."""
    labels = np.asarray(labels)
    if labels.dtype == bool:
        return np.dtype(np.uint8)
    if labels.dtype.kind not in "iuf":
        raise LabelWriteError(f"{path}: labels of dtype {labels.dtype} are not class indices")
    if labels.size == 0:
        return np.dtype(np.uint8)
    if labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels)):
        raise LabelWriteError(f"{path}: labels hold fractional values, not class indices")
    lo, hi = labels.min(), labels.max()
    if lo < 0 or hi > np.iinfo(np.uint16).max:
        raise LabelWriteError(f"{path}: label values {lo}..{hi} outside 0..65535")
    return np.dtype(np.uint8 if hi <= 255 else np.uint16)


def write_labels(
    path: str | os.PathLike,
    labels: np.ndarray,
    geometry: Geometry | dict[str, Any] | None = None,
) -> Path:
    """Write ``labels`` (array order, ``(z, y, x)`` / ``(y, x)``) to ``path``.

    Args:
        path: target; the suffix picks the format (see the module docstring).
        labels: integer class indices, same shape as the source image.
        geometry: the source image's :class:`Geometry` (or its ``to_dict()``); ``None``
            writes an identity grid with 1 mm voxels.

    Returns:
        the path written.

    Raises:
        LabelWriteError: unknown suffix, labels whose dimensions do not match the
            geometry, values that are not class indices, 3D labels to PNG, or a write
            that failed (the message gives ITK's reason).
    """
    import SimpleITK as sitk

    path = Path(path)
    suffix = suffix_of(path)
    if suffix not in LABEL_SUFFIXES:
        raise LabelWriteError(
            f"{path}: cannot write labels as {suffix or '(no suffix)'}; use one of "
            + ", ".join(LABEL_SUFFIXES)
        )
    labels = np.asarray(labels)
    if isinstance(geometry, dict):
        geometry = Geometry.from_dict(geometry)
    if geometry is None:
        geometry = Geometry.identity(labels.ndim)
    if labels.ndim != geometry.ndim:
        raise LabelWriteError(
            f"{path}: labels of shape {labels.shape} do not match a {geometry.ndim}D source "
            "image geometry"
        )
    if suffix == ".png" and labels.ndim != 2:
        raise LabelWriteError(f"{path}: PNG holds 2D labels only, got shape {labels.shape}")
    dtype = label_dtype(labels, path)
    image = sitk.GetImageFromArray(np.ascontiguousarray(labels.astype(dtype, copy=False)))
    if suffix != ".png":
        geometry.apply_to_sitk(image)
    path.parent.mkdir(parents=True, exist_ok=True)
    # .mhd writes a second (.raw) file, which a rename of one file cannot cover
    target = path if suffix == ".mhd" else path.with_name(f".{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        sitk.WriteImage(image, str(target), useCompression=suffix not in (".png", ".mhd"))
        if target != path:
            os.replace(target, path)
    except (RuntimeError, OSError) as err:
        reason = itk_reason(err) if isinstance(err, RuntimeError) else str(err)
        raise LabelWriteError(f"{path}: could not write labels ({reason})") from None
    finally:
        if target != path and target.exists():
            target.unlink()
    return path


__all__ = ["LABEL_SUFFIXES", "LabelWriteError", "label_dtype", "write_labels"]
