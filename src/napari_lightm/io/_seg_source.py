"""The source series of a DICOM-SEG: its instances sorted as the reader sorts them (so
labels slice ``k`` is the ``k``-th source instance), the segmentation's pixels on them,
and what the DICOM-SEG writer and reader share (:mod:`napari_lightm.io.dicom_seg` has
the rules)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from napari_lightm.io._base import SEG_SOP_CLASSES
from napari_lightm.io.geometry import Geometry

ALGORITHM_TYPES = ("AUTOMATIC", "SEMIAUTOMATIC", "MANUAL")

NOT_DICOM = (
    "labels of an image that did not come from a DICOM series: save as .nii.gz / .nrrd / "
    ".mha instead"
)

# series number of the segmentation series (any number is valid; one that sorts after
# the scanner's series in a PACS list)
SERIES_NUMBER = 900
# slice positions of the source files and of the image the labels were made on agree to
# this (mm); a larger difference means the folder now holds other files
POSITION_ATOL = 1e-3


class DicomSegLabels(NamedTuple):
    """A DICOM-SEG read onto its source image's grid.

    Attributes:
        labels: class indices (segment numbers), the source image's array shape.
        geometry: the source image's geometry (the labels' header).
        class_names: ``class_names[k]`` is segment ``k``'s label; index 0 "background".
        colours: RGB in 0..1 per class index (index 0 None); None where not given.
    """

    labels: np.ndarray
    geometry: Geometry
    class_names: list[str]
    colours: list[tuple[float, float, float] | None]


@dataclass
class SourceSeries:
    """The source instances, in the order of the labels' slices."""

    where: Path
    datasets: list[Any]
    # a single multi-frame source: its frame number (1-based) for each labels slice
    frames: list[int] | None = None
    series_uid: str = ""
    shape: tuple[int, ...] = field(default=())


def is_dicom_seg(path: str | os.PathLike) -> bool:
    """True when ``path`` is a DICOM file of a Segmentation SOP class (header only)."""
    import pydicom

    p = Path(path)
    if not p.is_file():
        return False
    try:
        ds = pydicom.dcmread(str(p), stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception:  # not DICOM, or damaged: not a segmentation either way
        return False
    return str(ds.get("SOPClassUID", "")) in SEG_SOP_CLASSES


def header(path: Path) -> Any:
    import pydicom

    return pydicom.dcmread(str(path), stop_before_pixels=True)


def source_series(geometry: Geometry | None, error: type[ValueError], where: Path) -> SourceSeries:
    """The source DICOM instances of an image read from ``geometry.source``, sorted as
    the reader sorted them. Raises ``error`` naming ``where`` when there are none."""
    from napari_lightm.io._dicom import HEADER_ERRORS, find_dicom_files

    if (
        geometry is None
        or not geometry.source
        or not str(geometry.extra.get("format", "")).startswith("DICOM")
    ):
        raise error(f"{where}: {NOT_DICOM}")
    source = Path(geometry.source)
    if not source.exists():
        raise error(
            f"{where}: the source DICOM {source} is gone (moved or deleted); DICOM-SEG "
            "references its files: open the series again, or save as .nii.gz / .nrrd / "
            ".mha instead"
        )
    try:
        if source.is_file():
            members = [(source, header(source))]
        else:
            wanted = geometry.extra.get("series_uid")
            members = []
            for path in find_dicom_files(source):
                try:
                    ds = header(path)
                except Exception:  # unreadable files were skipped by the reader too
                    continue
                if "Rows" in ds and (wanted is None or str(ds.get("SeriesInstanceUID")) == wanted):
                    members.append((path, ds))
            if not members:
                raise error(
                    f"{where}: {source} no longer holds the DICOM series "
                    f"{wanted or ''} the labels were made on"
                )
        return sorted_source(source, members, geometry, error, where)
    except HEADER_ERRORS as err:
        raise error(f"{where}: corrupt DICOM header in {source} ({err})") from None


def sorted_source(
    source: Path,
    members: list[tuple[Path, Any]],
    geometry: Geometry,
    error: type[ValueError],
    where: Path,
) -> SourceSeries:
    from napari_lightm.io._dicom import frame_positions, orientation

    headers = [ds for _, ds in members]
    uid = str(headers[0].get("SeriesInstanceUID", ""))
    rows, cols = int(headers[0].Rows), int(headers[0].Columns)
    direction = orientation(headers[0])
    normal = np.array([0.0, 0.0, 1.0]) if direction is None else direction[:, 2]
    frames = None
    n_frames = int(headers[0].get("NumberOfFrames", 1) or 1)
    if len(headers) > 1:
        positions = np.array([[float(v) for v in h.ImagePositionPatient] for h in headers])
        order = np.argsort(positions @ normal, kind="stable")
        headers = [headers[k] for k in order]
        first = positions[order[0]]
        shape: tuple[int, ...] = (len(headers), rows, cols)
    elif n_frames > 1:
        positions = frame_positions(headers[0], n_frames, normal)
        order = (
            np.arange(n_frames)
            if positions is None
            else np.argsort(positions @ normal, kind="stable")
        )
        frames = [int(k) + 1 for k in order]
        first = None if positions is None else positions[order[0]]
        shape = (n_frames, rows, cols)
    else:
        first = None
        shape = (rows, cols) if geometry.ndim == 2 else (1, rows, cols)
    if first is not None and geometry.ndim == 3:
        if not np.allclose(first, geometry.origin, atol=POSITION_ATOL):
            raise error(
                f"{where}: the DICOM files in {source} no longer match the image the labels "
                f"were made on (first slice at {tuple(np.round(first, 3))}, image origin "
                f"{tuple(np.round(geometry.origin, 3))})"
            )
    return SourceSeries(source, headers, frames, uid, shape)


@contextlib.contextmanager
def quiet_logger(logger_name: str) -> Iterator[None]:
    """Hold back a library's log messages below ERROR (highdicom logs what it decided,
    e.g. keeping the frames of an empty segmentation, which is no news to the user)."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def seg_pixels(seg: Any, source: SourceSeries, *, skip_overlap_checks: bool = False) -> np.ndarray:
    """The segmentation's label values on the source's slices, ``source.shape``."""
    numbers = seg.get_segment_numbers()
    top = max(numbers) if numbers else 0
    dtype = np.uint8 if top <= 255 else np.uint16
    options = dict(
        combine_segments=True,
        assert_missing_frames_are_empty=True,
        skip_overlap_checks=skip_overlap_checks,
        dtype=dtype,
    )
    if source.frames is not None:
        out = seg.get_pixels_by_source_frame(
            source.datasets[0].SOPInstanceUID, source.frames, **options
        )
    else:
        out = seg.get_pixels_by_source_instance(
            [str(ds.SOPInstanceUID) for ds in source.datasets], **options
        )
    return out.reshape(source.shape)
