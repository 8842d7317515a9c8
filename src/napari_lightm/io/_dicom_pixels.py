"""DICOM pixel data to an array: decoded by pydicom, or by SimpleITK (GDCM) for
compressed transfer syntaxes pydicom has no decoder for here; rescaled to HU / stored
units (refusing absurd slopes), MONOCHROME1 inverted, kept in the smallest exact dtype."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_lightm.io._base import ImageReadError, fold_rgb, itk_reason, one_line

INT32 = np.iinfo(np.int32)


def _pixels(ds: Any, path: Path) -> tuple[np.ndarray, bool]:
    """Decoded pixels and whether the modality rescale is already applied.

    pydicom decodes uncompressed (and what its installed plugins know); other compressed
    transfer syntaxes go through SimpleITK/GDCM, which applies the rescale itself. An
    unknown transfer syntax UID is refused by name.
    """
    try:
        return ds.pixel_array, False
    except Exception as err:  # pydicom raises several types for undecodable data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        try:
            compressed = syntax is not None and syntax.is_compressed
        except (ValueError, AttributeError):  # a UID that is no transfer syntax
            raise ImageReadError(
                f"{path}: unknown DICOM transfer syntax {str(syntax)[:64]!r}; cannot decode "
                "its pixel data"
            ) from None
        if not compressed:
            raise ImageReadError(
                f"{path}: cannot decode DICOM pixel data ({one_line(err)})"
            ) from None
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise ImageReadError(
            f"{path}: cannot decode DICOM pixel data ({syntax.name}: {itk_reason(err)})"
        ) from None
    array = sitk.GetArrayFromImage(image)
    if array.ndim == 3 and array.shape[0] == 1 and image.GetNumberOfComponentsPerPixel() == 1:
        array = array[0]
    return array, True


def group_value(ds: Any, sequence: str, keyword: str, frame: int = 0) -> Any:
    """``keyword`` from frame ``frame``'s functional group ``sequence`` (enhanced
    multi-frame files), else from the shared functional groups, else the top level."""
    for groups, index in (
        ("PerFrameFunctionalGroupsSequence", frame),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        items = ds.get(groups)
        if items and len(items) > index:
            inner = items[index].get(sequence)
            if inner and keyword in inner[0]:
                return inner[0].get(keyword)
    return ds.get(keyword)


# largest |RescaleSlope| / |RescaleIntercept| taken: no scanner writes more, and beyond
# it stored values (up to 2**32) times the slope overflow float32
RESCALE_LIMIT = 1e25

def _rescale(array: np.ndarray, ds: Any, path: Path) -> np.ndarray:
    """Modality LUT (RescaleSlope / RescaleIntercept, per frame in enhanced files; RT dose
    grid scaling): stored values to real units (HU for CT, Gy for dose). A non-finite or
    absurd slope or intercept is refused (it would turn the image into NaN or garbage)."""
    frames = array.shape[0] if array.ndim == 3 else 1
    group = "PixelValueTransformationSequence"
    slopes = [float(group_value(ds, group, "RescaleSlope", k) or 1) for k in range(frames)]
    intercepts = [float(group_value(ds, group, "RescaleIntercept", k) or 0) for k in range(frames)]
    scale = float(ds.get("DoseGridScaling", 1) or 1)
    slope = np.asarray(slopes) * scale
    intercept = np.asarray(intercepts)
    if not (np.all(np.abs(slope) < RESCALE_LIMIT) and np.all(np.abs(intercept) < RESCALE_LIMIT)):
        raise ImageReadError(
            f"{path}: implausible DICOM rescale (slope {slopes[0]:g} x {scale:g}, "
            f"intercept {intercepts[0]:g})"
        )
    if np.all(slope == 1) and np.all(intercept == 0):
        return array
    whole = array.dtype.kind in "iu" and array.size > 0
    whole = whole and np.all(slope == np.round(slope)) and np.all(intercept == np.round(intercept))
    if whole:
        lo, hi = int(array.min()), int(array.max())
        ends = [int(s) * v + int(i) for s, i in zip(slope, intercept) for v in (lo, hi)]
        whole = all(INT32.min <= e <= INT32.max for e in ends)
    if array.ndim == 3:
        slope, intercept = slope[:, None, None], intercept[:, None, None]
    else:
        slope, intercept = slope[0], intercept[0]
    if whole:
        # integer CT rescale (slope 1, intercept -1024): exact in integers, no float pass
        return compact_dtype(
            array.astype(np.int32) * slope.astype(np.int32) + intercept.astype(np.int32)
        )
    return array.astype(np.float32) * slope.astype(np.float32) + intercept.astype(np.float32)


def compact_dtype(array: np.ndarray) -> np.ndarray:
    """Integer data that fits int16 (CT in HU) is stored as int16, else as is."""
    if array.dtype.kind not in "iu" or array.size == 0 or array.dtype.itemsize <= 2:
        return array
    if array.min() >= -32768 and array.max() <= 32767:
        return array.astype(np.int16)
    return array


def _invert_monochrome1(array: np.ndarray, ds: Any) -> tuple[np.ndarray, float | None]:
    """MONOCHROME1 shows low values white; flip within the data range so bone is bright.

    Returns the array and the mirror value ``lo + hi`` (``x -> mirror - x``), or None
    when nothing was flipped.
    """
    if str(ds.get("PhotometricInterpretation", "")).upper() != "MONOCHROME1":
        return array, None
    lo, hi = array.min(), array.max()
    # the result lies in [lo, hi]; integer wrap-around in between cancels out
    return (hi - array) + lo, float(lo) + float(hi)


def decoded_pixels(ds: Any, path: Path) -> tuple[np.ndarray, float | None]:
    """Grey, rescaled, MONOCHROME1-corrected pixels ``[rows, cols]`` or ``[frames, rows,
    cols]``, and the inversion's mirror value (None when not inverted)."""
    array, rescaled = _pixels(ds, path)
    if int(ds.get("SamplesPerPixel", 1)) > 1:
        array = fold_rgb(array, path)
    if not rescaled:
        array = _rescale(array, ds, path)
    return _invert_monochrome1(array, ds)
