"""DICOM: single files (CT/MR slices, CR/DX X-rays, multi-frame) and series folders.

Headers are read with pydicom; pixels are decoded by pydicom, or by SimpleITK (GDCM)
for compressed transfer syntaxes pydicom has no decoder for here. Geometry follows the
DICOM patient coordinate system (LPS), which is ITK's physical space, so a series
lines up with the same data read as NIfTI by ITK-based tools.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from napari_lightm.io._base import (
    SEG_SOP_CLASSES,
    ImageReadError,
    is_dicom_file,
    one_line,
)
from napari_lightm.io._dicom_pixels import compact_dtype, decoded_pixels, group_value
from napari_lightm.io.geometry import ORTHONORMAL_ATOL, Geometry, GeometryError

# folders are scanned with a bound so that napari's get_reader stays quick on big trees
MAX_FILES_SCANNED = 20_000
# relative spread of slice gaps above which a series is "non-uniform"
GAP_TOLERANCE = 0.01


def find_dicom_files(folder: Path, limit: int | None = None) -> list[Path]:
    """DICOM files (by preamble or ``.dcm`` suffix) under ``folder``, sorted, recursive.

    Stops after ``limit`` hits or :data:`MAX_FILES_SCANNED` files looked at.
    """
    found: list[Path] = []
    seen = 0
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            seen += 1
            if seen > MAX_FILES_SCANNED:
                return found
            path = Path(root) / name
            if name.upper() == "DICOMDIR":
                continue  # a directory index, not an image
            if path.suffix.lower() == ".dcm" or is_dicom_file(path):
                found.append(path)
                if limit is not None and len(found) >= limit:
                    return found
    return found


# --- pixels ---------------------------------------------------------------------------




# --- header geometry ------------------------------------------------------------------


def _in_plane_spacing(ds: Any) -> tuple[tuple[float, float] | None, str]:
    """Physical-order (x = column, y = row) pixel spacing and the tag it came from."""
    for tag in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"):
        value = group_value(ds, "PixelMeasuresSequence", tag)
        if value is not None and len(value) == 2 and all(float(v) > 0 for v in value):
            row_spacing, col_spacing = (float(v) for v in value)
            return (col_spacing, row_spacing), tag
    return None, ""


def orientation(ds: Any) -> np.ndarray | None:
    """``[3, 3]`` direction with columns row-cosine, column-cosine, slice normal; None
    when the header's orientation is missing or not two perpendicular unit vectors."""
    iop = group_value(ds, "PlaneOrientationSequence", "ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return None
    try:
        row, col = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    except (TypeError, ValueError):
        return None
    if not (
        np.isclose(np.linalg.norm(row), 1, atol=1e-3)
        and np.isclose(np.linalg.norm(col), 1, atol=1e-3)
        and abs(float(row @ col)) < ORTHONORMAL_ATOL  # NaN fails every test
    ):
        return None
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)  # decimal rounding
    normal = np.cross(row, col)
    return np.stack([row, col, normal / np.linalg.norm(normal)], axis=1)


def _first(value: Any) -> Any:
    """First item of a multi-valued DICOM element (several VOI windows), else the value."""
    if isinstance(value, str | bytes) or not hasattr(value, "__len__"):
        return value
    return value[0]


def _modality_fields(ds: Any) -> dict[str, Any]:
    modality = str(ds.get("Modality", "") or "unknown").upper()
    if modality in ("CR", "DX", "RG", "MG", "XA", "RF", "PX", "IO"):
        # projection radiography of any kind is "XR" for the model; keep the DICOM name
        kind = "XR"
    else:
        kind = modality
    unit = "HU" if modality == "CT" else str(ds.get("RescaleType", "") or "")
    if modality == "RTDOSE":
        unit = str(ds.get("DoseUnits", "GY") or "").replace("GY", "Gy")
    if unit.upper() == "US":  # "unspecified"
        unit = ""
    extra: dict[str, Any] = {"dicom_modality": modality}
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None:
        try:
            extra["window"] = [float(_first(center)), float(_first(width))]
        except (TypeError, ValueError):
            pass
    return {"modality": kind, "intensity_unit": unit, "extra": extra}


# --- single files ---------------------------------------------------------------------


def _dcmread(path: Path, **kw: Any) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(str(path), **kw)
    except InvalidDicomError:
        pass
    except Exception as err:  # truncated / corrupt headers raise various errors
        raise ImageReadError(f"{path}: corrupt DICOM file ({type(err).__name__}: {err})") from None
    # no preamble / file meta (old ACR-NEMA style): accept it only if it parses to an image
    try:
        ds = pydicom.dcmread(str(path), force=True, **kw)
        if "Rows" in ds and "Columns" in ds:
            return ds
    except Exception:  # anything else is simply not DICOM
        pass
    raise ImageReadError(f"{path}: not a DICOM file (no DICOM header)")


# what pydicom and the conversions here raise for header values that are not what their
# VR promises (damaged files): reported as a corrupt header, never passed on raw
HEADER_ERRORS = (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError)


def _corrupt_header(where: Path, err: Exception) -> ImageReadError:
    return ImageReadError(f"{where}: corrupt DICOM header ({type(err).__name__}: {one_line(err)})")


def is_segmentation(ds: Any) -> bool:
    """True for a DICOM Segmentation object (labels, not an image)."""
    return str(ds.get("SOPClassUID", "")) in SEG_SOP_CLASSES or ds.get("Modality") == "SEG"


def read_dicom_file(path: Path) -> tuple[np.ndarray, Geometry]:
    """:func:`_read_dicom_file`, with any damaged header value refused as such."""
    try:
        return _read_dicom_file(path)
    except (ImageReadError, GeometryError):
        raise
    except HEADER_ERRORS as err:
        raise _corrupt_header(path, err) from None


def _read_dicom_file(path: Path) -> tuple[np.ndarray, Geometry]:
    """One DICOM file: ``[rows, cols]`` for a slice or X-ray, ``[frames, rows, cols]`` for
    multi-frame; MONOCHROME1 inverted, rescale applied.

    2D geometry: spacing from PixelSpacing, else ImagerPixelSpacing (detector plane,
    noted in ``extra["spacing_from"]``); origin/direction from the patient position for
    axial slices. The full 3D position is kept in ``extra`` for any slice.
    """
    ds = _dcmread(path)
    if is_segmentation(ds):
        raise ImageReadError(
            f"{path}: a DICOM-SEG holds labels, not an image; open it in napari with its "
            "series, or read it with napari_lightm.io.read_dicom_seg"
        )
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        sop = ds.get("SOPClassUID")
        raise ImageReadError(
            f"{path}: DICOM file without an image ({getattr(sop, 'name', sop) or 'no SOP class'})"
        )
    array, mirror = decoded_pixels(ds, path)
    fields = _modality_fields(ds)
    spacing, spacing_from = _in_plane_spacing(ds)
    units = "mm"
    if spacing is None:
        spacing, units = (1.0, 1.0), "pixel"
    extra = {"format": "DICOM", **fields.pop("extra"), "spacing_from": spacing_from or "none"}
    direction3 = orientation(ds)
    position = group_value(ds, "PlanePositionSequence", "ImagePositionPatient")
    if position is not None and len(position) == 3:
        extra["image_position_patient"] = [float(v) for v in position]
    if direction3 is not None:
        extra["image_orientation_patient"] = [float(v) for v in direction3[:, :2].T.ravel()]
    if array.ndim == 3:
        array, geometry = _multiframe(path, ds, array, spacing, direction3, extra, units, fields)
    else:
        origin, direction = (0.0, 0.0), None
        axial = direction3 is not None and np.allclose(direction3[2, :2], 0, atol=1e-6)
        if axial and "image_position_patient" in extra:
            origin = tuple(extra["image_position_patient"][:2])
            direction = tuple(direction3[:2, :2].ravel())
        geometry = Geometry(spacing, origin, direction, units=units, extra=extra, **fields)
    if mirror is not None:
        geometry.extra["inverted"] = "MONOCHROME1"
        if "window" in geometry.extra:  # the header's window is for the stored polarity
            geometry.extra["window"][0] = mirror - geometry.extra["window"][0]
    if units == "pixel":
        geometry.warn(f"{path.name}: no pixel spacing in the DICOM header; using 1 pixel")
    return array, geometry


def frame_positions(ds: Any, frames: int, normal: np.ndarray) -> np.ndarray | None:
    """``[frames, 3]`` patient positions of each frame: enhanced files' per-frame plane
    positions, or an RT dose grid's offsets along the normal; None when not given."""
    positions = [
        group_value(ds, "PlanePositionSequence", "ImagePositionPatient", k) for k in range(frames)
    ]
    if "PerFrameFunctionalGroupsSequence" in ds and all(
        p is not None and len(p) == 3 for p in positions
    ):
        return np.array([[float(v) for v in p] for p in positions])
    offsets = ds.get("GridFrameOffsetVector")
    first = ds.get("ImagePositionPatient")
    if offsets is not None and len(offsets) == frames and first is not None:
        return np.asarray(first, float) + np.outer(np.asarray(offsets, float), normal)
    return None


def _sorted_gaps(along: np.ndarray, where: Path) -> tuple[np.ndarray, np.ndarray]:
    """Order of slices along the normal and the gaps between them; refuses slices that
    share a position (several echoes, phases or time points mixed in one stack)."""
    order = np.argsort(along, kind="stable")
    gaps = np.diff(along[order])
    if np.any(gaps < 1e-3):
        raise ImageReadError(
            f"{where}: mixed DICOM series, {int(np.sum(gaps < 1e-3)) + 1} slices share a "
            "position (several echoes, phases or time points?)"
        )
    return order, gaps


def _warn_uneven(geometry: Geometry, gaps: np.ndarray, where: Path) -> None:
    gap = float(gaps.mean())
    if float(gaps.max() - gaps.min()) > max(GAP_TOLERANCE * gap, 1e-3):
        geometry.warn(
            f"{where.name}: non-uniform slice spacing (gaps {gaps.min():.3g} to "
            f"{gaps.max():.3g} mm; missing slices?); using the mean gap {gap:.4g} mm"
        )


def _multiframe(
    path: Path,
    ds: Any,
    array: np.ndarray,
    spacing: tuple[float, float],
    direction3: np.ndarray | None,
    extra: dict[str, Any],
    units: str,
    fields: dict[str, Any],
) -> tuple[np.ndarray, Geometry]:
    """Frames sorted along the slice normal with their geometry: per-frame positions
    (enhanced CT/MR, RT dose grids) when given, else the shared header's
    SpacingBetweenSlices / SliceThickness."""
    normal = np.array([0.0, 0.0, 1.0]) if direction3 is None else direction3[:, 2]
    positions = frame_positions(ds, array.shape[0], normal)
    gaps = None
    if positions is not None and array.shape[0] > 1:
        order, gaps = _sorted_gaps(positions @ normal, path)
        array, positions = array[order], positions[order]
        gap: float | None = float(gaps.mean())
        origin = tuple(positions[0])
    else:
        value = group_value(ds, "PixelMeasuresSequence", "SpacingBetweenSlices")
        value = value or group_value(ds, "PixelMeasuresSequence", "SliceThickness")
        gap = float(value) if value else None
        origin = tuple(extra.get("image_position_patient", (0.0, 0.0, 0.0)))
    geometry = Geometry(
        (*spacing, gap or 1.0),
        origin,
        None if direction3 is None else tuple(direction3.ravel()),
        units=units,
        extra=extra,
        **fields,
    )
    if gaps is not None:
        _warn_uneven(geometry, gaps, path)
    if not gap:
        geometry.warn(f"{path.name}: multi-frame DICOM without a frame spacing; using 1")
    return array, geometry


# --- series folders -------------------------------------------------------------------


def _series_label(uid: str, headers: list[Any]) -> str:
    desc = str(headers[0].get("SeriesDescription", "") or "").strip()
    number = headers[0].get("SeriesNumber")
    name = f"series {number}" if number is not None else f"series {uid}"
    return f"{name} '{desc}'" if desc else name


def read_dicom_series(folder: Path) -> tuple[np.ndarray, Geometry]:
    """:func:`_read_dicom_series`, with any damaged header value refused as such."""
    try:
        return _read_dicom_series(folder)
    except (ImageReadError, GeometryError):
        raise
    except HEADER_ERRORS as err:
        raise _corrupt_header(folder, err) from None


def _read_dicom_series(folder: Path) -> tuple[np.ndarray, Geometry]:
    """The largest DICOM series under ``folder`` as ``[z, y, x]``, slices sorted along
    the slice normal. Several series: the largest is read and a warning names the
    others; a tie is refused. Mixed sizes/orientations or duplicate slice positions
    within a series are refused; uneven slice gaps give a warning (mean gap used)."""
    files = find_dicom_files(folder)
    if not files:
        raise ImageReadError(f"{folder}: no DICOM files in this folder")
    series: dict[str, list[tuple[Path, Any]]] = defaultdict(list)
    unreadable = 0
    for path in files:
        try:
            # pixel data is read later, and only for the chosen series
            ds = _dcmread(path, defer_size="16 KB")
        except ImageReadError:
            unreadable += 1
            continue
        if "Rows" not in ds or is_segmentation(ds):  # reports, RT plans, labels (SEG)
            continue
        series[str(ds.get("SeriesInstanceUID", "no series UID"))].append((path, ds))
    if not series:
        raise ImageReadError(f"{folder}: {len(files)} DICOM files but no image series")
    ranked = sorted(series.items(), key=lambda kv: -len(kv[1]))
    uid, members = ranked[0]
    labels = {u: _series_label(u, [h for _, h in m]) for u, m in ranked}
    if len(ranked) > 1 and len(ranked[1][1]) == len(members):
        tied = [f"{labels[u]} ({len(m)} images)" for u, m in ranked if len(m) == len(members)]
        raise ImageReadError(
            f"{folder}: {len(ranked)} DICOM series, the largest tie ({'; '.join(tied)}); "
            "open the folder of one series"
        )
    if len(members) == 1:
        array, geometry = read_dicom_file(members[0][0])
    else:
        array, geometry = _stack_series(folder, members)
    geometry.extra.update(series_uid=uid, series=labels[uid], n_files=len(members))
    if len(ranked) > 1:
        others = ", ".join(f"{labels[u]} ({len(m)} images)" for u, m in ranked[1:])
        geometry.warn(
            f"{folder.name}: {len(ranked)} DICOM series; read the largest, {labels[uid]} "
            f"({len(members)} images); not read: {others}"
        )
    if unreadable:
        geometry.warn(f"{folder.name}: {unreadable} unreadable DICOM files skipped")
    return array, geometry


def _stack_series(folder: Path, members: list[tuple[Path, Any]]) -> tuple[np.ndarray, Geometry]:
    """Check one series' slices fit together, sort them, stack pixels, build geometry."""
    headers = [h for _, h in members]
    sizes = {(int(h.Rows), int(h.Columns)) for h in headers}
    if len(sizes) > 1:
        raise ImageReadError(f"{folder}: mixed DICOM series, slices of sizes {sorted(sizes)}")
    directions = [orientation(h) for h in headers]
    if any(d is None for d in directions) or any(
        not np.allclose(d, directions[0], atol=1e-4) for d in directions
    ):
        raise ImageReadError(
            f"{folder}: mixed DICOM series, slices without or with different orientations"
        )
    direction = directions[0]
    try:
        positions = np.array([[float(v) for v in h.ImagePositionPatient] for h in headers])
    except (AttributeError, TypeError, ValueError):
        raise ImageReadError(f"{folder}: DICOM series without slice positions") from None
    order, gaps = _sorted_gaps(positions @ direction[:, 2], folder)
    gap = float(gaps.mean())
    spacing, spacing_from = _in_plane_spacing(headers[0])
    if spacing is None:
        raise ImageReadError(f"{folder}: DICOM series without PixelSpacing")
    array = compact_dtype(np.stack([decoded_pixels(headers[k], members[k][0])[0] for k in order]))
    fields = _modality_fields(headers[0])
    extra = {"format": "DICOM series", **fields.pop("extra"), "spacing_from": spacing_from}
    geometry = Geometry(
        (*spacing, gap),
        tuple(positions[order[0]]),
        tuple(direction.ravel()),
        extra=extra,
        **fields,
    )
    _warn_uneven(geometry, gaps, folder)
    return array, geometry
