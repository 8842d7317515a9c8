"""DICOM-SEG: labels of a DICOM image saved as a DICOM Segmentation object, and read back.

The object is built by `highdicom <https://highdicom.readthedocs.io>`_ (the IOD is never
written by hand here): a BINARY segmentation with one segment per named class, the
segment number being the class index, so a file reads back to the same label values
without any side information and every file written by one model numbers its classes the
same way. BINARY segmentations must number their segments 1, 2, 3, ... (highdicom
enforces it), so classes absent from the labels keep their segment, with no frames; frames
are stored only where a class is present (``omit_empty_frames``; highdicom keeps every
frame of an all-empty segmentation, the one case where it cannot omit them).

The source series is referenced, not copied: its headers are read again from
``geometry.source`` (the files of ``geometry.extra["series_uid"]``) and sorted along the
slice normal as the reader sorts them, so labels slice ``k`` is the segmentation of the
``k``-th source instance; highdicom then takes the frame of reference, each frame's
position and orientation (oblique series included) and the patient/study attributes
from those instances. Labels of an image that did not come from DICOM cannot reference
anything and are refused.

Algorithm type: ``AUTOMATIC`` for what the model wrote (``lightm predict``),
``SEMIAUTOMATIC`` for labels a person corrected or confirmed in napari (the writer
decides from the layer's annotation), ``MANUAL`` available to callers that know the
labels were drawn by hand. Segment category and type are SNOMED CT codes from pydicom's
code dictionary for a few organ names, else the generic "Tissue"; the class name itself
is the segment label.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_lightm.io._base import (
    SEG_SOP_CLASSES,
    BadWrite,
    ImageReadError,
    LabelWriteError,
    free_bytes,
    one_line,
)
from napari_lightm.io._seg_codes import (
    segment_class_names,
    segment_descriptions,
    segment_names_and_colours,
)
from napari_lightm.io._seg_source import (
    ALGORITHM_TYPES,
    SERIES_NUMBER,
    DicomSegLabels,
    SourceSeries,
    is_dicom_seg,
    quiet_logger,
    seg_pixels,
    source_series,
)
from napari_lightm.io.atomic import atomic_write
from napari_lightm.io.geometry import Geometry, GeometryError


def write_dicom_seg(
    path: str | os.PathLike,
    labels: np.ndarray,
    geometry: Geometry | dict[str, Any] | None,
    class_names: Sequence[str] | None = None,
    colours: Sequence[Any] | Mapping[int, Any] | None = None,
    *,
    algorithm_type: str = "AUTOMATIC",
) -> Path:
    """Write ``labels`` of a DICOM image as a DICOM-SEG file referencing its source.

    Args:
        path: the ``.dcm`` file to write (replaced atomically).
        labels: class indices in the image's array order (what ``read_image`` gave).
        geometry: the image's geometry from :func:`~napari_lightm.io.read_image` of a
            DICOM series folder or file (its ``source`` must still hold the files).
        class_names: the model's class names, index 0 the background; default "class 1",
            "class 2", ... up to the largest label.
        colours: RGB(A) in 0..1 per class index (a sequence like ``class_names`` or a
            mapping); default a fixed palette.
        algorithm_type: ``"AUTOMATIC"`` (model output), ``"SEMIAUTOMATIC"`` (corrected
            by a person) or ``"MANUAL"``.

    Returns:
        the path written.

    Raises:
        LabelWriteError: an image not from DICOM, source files gone or changed, labels
            that do not fit the source, more classes than named, a source highdicom
            cannot reference, or a failed write (the old file is then unchanged).
    """
    import highdicom as hd

    from napari_lightm import __version__

    path = Path(path)
    if algorithm_type not in ALGORITHM_TYPES:
        raise LabelWriteError(
            f"{path}: algorithm type {algorithm_type!r} is not one of {', '.join(ALGORITHM_TYPES)}"
        )
    try:
        if isinstance(geometry, dict):
            geometry = Geometry.from_dict(geometry)
        elif geometry is not None:
            geometry.validate()
    except GeometryError as err:
        raise LabelWriteError(f"{path}: invalid geometry: {err}") from None
    labels = np.asarray(labels)
    from napari_lightm.io._base import label_dtype

    dtype = label_dtype(labels, path)
    source = source_series(geometry, LabelWriteError, path)
    if labels.shape != source.shape:
        raise LabelWriteError(
            f"{path}: labels of shape {labels.shape} do not fit the source DICOM "
            f"{source.where.name} ({'x'.join(map(str, source.shape))})"
        )
    names = segment_class_names(labels, class_names, path)
    try:
        descriptions = segment_descriptions(names, colours, algorithm_type)
    except ValueError as err:
        raise LabelWriteError(f"{path}: {err}") from None
    pixels = labels.astype(dtype, copy=False)
    if source.frames is not None:
        # a multi-frame source: highdicom pairs pixel frame i with source frame i + 1
        pixels = pixels[np.argsort(source.frames)]
    try:
        with quiet_logger("highdicom"):
            seg = hd.seg.Segmentation(
                source_images=source.datasets,
                pixel_array=pixels,
                segmentation_type="BINARY",
                segment_descriptions=descriptions,
                series_instance_uid=hd.UID(),
                series_number=SERIES_NUMBER,
                sop_instance_uid=hd.UID(),
                instance_number=1,
                manufacturer="napari-lightm",
                manufacturer_model_name="LightM-UNet",
                software_versions=__version__,
                device_serial_number="0",
                content_label="LIGHTM",
                content_description="LightM-UNet segmentation",
                omit_empty_frames=True,
            )
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as err:
        raise LabelWriteError(
            f"{path}: cannot reference the source DICOM {source.where} in a DICOM-SEG "
            f"({one_line(err)})"
        ) from None
    existed = path.exists()

    def write(tmp: str) -> None:
        seg.save_as(tmp, enforce_file_format=True)

    def verify(tmp: str) -> None:
        _check_written(Path(tmp), labels, source)

    try:
        atomic_write(path, write, verify=verify, suffix=".dcm")
    except (OSError, BadWrite) as err:
        reason = (err.strerror or str(err)) if isinstance(err, OSError) else str(err)
        free = free_bytes(path)
        if free is not None and free < 1 << 20:
            reason += f"; the disk is full ({free} bytes free)"
        raise LabelWriteError(
            f"{path}: could not write the DICOM-SEG ({reason}); "
            + ("the previous file is unchanged" if existed else "nothing was written")
        ) from None
    return path


def _check_written(tmp: Path, labels: np.ndarray, source: SourceSeries) -> None:
    """Read the written file back with highdicom (its checks included): the source
    series and frame of reference are referenced and the voxels are the labels."""
    import highdicom as hd

    try:
        seg = hd.seg.segread(str(tmp))
        back = seg_pixels(seg, source)
    except Exception as err:  # highdicom raises many types for a damaged file
        raise BadWrite(
            f"the written file does not read back as a DICOM-SEG: {one_line(err)}"
        ) from None
    referenced = {str(item.SeriesInstanceUID) for item in seg.ReferencedSeriesSequence}
    if source.series_uid and source.series_uid not in referenced:
        raise BadWrite("the written file does not reference the source series")
    frame_of_reference = source.datasets[0].get("FrameOfReferenceUID")
    if frame_of_reference and seg.get("FrameOfReferenceUID") != frame_of_reference:
        raise BadWrite("the written file has another frame of reference than its source")
    if not np.array_equal(back, labels):
        raise BadWrite(
            f"the written file reads back with {int(np.sum(back != labels))} voxels that "
            "differ from the labels"
        )


def read_dicom_seg(
    path: str | os.PathLike, reference: Geometry | dict[str, Any] | str | os.PathLike
) -> DicomSegLabels:
    """Read a DICOM-SEG as labels on the grid of the image it references.

    Args:
        path: the DICOM-SEG file.
        reference: the source image: its :class:`Geometry` (from ``read_image``, with
            its ``source`` still on disk), or the DICOM series folder / file itself.

    Returns:
        :class:`DicomSegLabels`: labels whose values are the segment numbers, the
        reference geometry, segment names and colours.

    Raises:
        ImageReadError: not a DICOM-SEG, a SEG highdicom refuses, a reference that is
            not DICOM or not the series the SEG was made on.
    """
    import highdicom as hd

    path = Path(path)
    if not is_dicom_seg(path):
        raise ImageReadError(f"{path}: not a DICOM segmentation (DICOM-SEG) file")
    try:
        seg = hd.seg.segread(str(path))
    except Exception as err:  # highdicom's checks raise many types
        raise ImageReadError(f"{path}: damaged DICOM-SEG ({one_line(err)})") from None
    if isinstance(reference, str | os.PathLike):
        from napari_lightm.io.readers import read_image

        _, geometry = read_image(reference)
    else:
        try:
            geometry = Geometry.from_dict(reference) if isinstance(reference, dict) else reference
        except GeometryError as err:
            raise ImageReadError(f"{path}: invalid reference geometry: {err}") from None
    source = source_series(geometry, ImageReadError, path)
    referenced = referenced_series(seg)
    if source.series_uid and source.series_uid not in referenced:
        raise ImageReadError(
            f"{path}: this DICOM-SEG was made on series {', '.join(sorted(referenced))[:130]}, "
            f"not on {source.where} (series {source.series_uid})"
        )
    warnings: list[str] = []
    try:
        try:
            labels = seg_pixels(seg, source)
        except RuntimeError as err:  # highdicom's refusal to combine overlapping segments
            if "overlap" not in str(err).lower():
                raise
            # highdicom's frame index is left locked by the refusal: read the file again
            labels = seg_pixels(hd.seg.segread(str(path)), source, skip_overlap_checks=True)
            warnings.append(
                f"{path.name}: segments overlap; where they do, the higher segment number is shown"
            )
    except (ValueError, RuntimeError, KeyError, IndexError, AttributeError) as err:
        raise ImageReadError(
            f"{path}: its frames do not fit {source.where} ({one_line(err)})"
        ) from None
    if geometry.ndim == 2 and labels.ndim == 3:
        labels = labels[0]
    names, colours = segment_names_and_colours(seg)
    out = Geometry.from_dict(geometry.to_dict())
    out.extra = {k: v for k, v in out.extra.items() if k != "warnings"}
    for message in warnings:
        out.warn(message)
    return DicomSegLabels(labels, out, names, colours)


def referenced_series(seg: Any) -> set[str]:
    """Series Instance UIDs the segmentation references."""
    return {str(item.SeriesInstanceUID) for item in seg.get("ReferencedSeriesSequence", [])}


def find_referenced_series(path: str | os.PathLike, limit: int = 2_000) -> Path | None:
    """The folder holding the series a DICOM-SEG references: searched in the SEG's own
    folder, then its parent folder (each recursively, ``limit`` files at most); None when
    not found."""
    import pydicom

    from napari_lightm.io._dicom import find_dicom_files

    path = Path(path)
    try:
        wanted = referenced_series(pydicom.dcmread(str(path), stop_before_pixels=True))
    except Exception:  # an unreadable SEG is reported by read_dicom_seg
        return None
    for folder in (path.parent, path.parent.parent):
        hits: list[Path] = []
        for candidate in find_dicom_files(folder, limit=limit):
            if candidate.resolve() == path.resolve():
                continue
            try:
                ds = pydicom.dcmread(
                    str(candidate), stop_before_pixels=True, specific_tags=["SeriesInstanceUID"]
                )
            except Exception:  # damaged files are not the series
                continue
            if str(ds.get("SeriesInstanceUID", "")) in wanted:
                hits.append(candidate)
        if hits:
            return Path(os.path.commonpath([h.parent for h in hits]))
    return None


__all__ = [
    "DicomSegLabels",
    "SEG_SOP_CLASSES",
    "find_referenced_series",
    "is_dicom_seg",
    "read_dicom_seg",
    "segment_names_and_colours",
    "write_dicom_seg",
]
