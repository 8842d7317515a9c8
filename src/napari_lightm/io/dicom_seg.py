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

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from napari_lightm.io.atomic import atomic_write
from napari_lightm.io.geometry import Geometry, GeometryError
from napari_lightm.io.readers import ImageReadError
from napari_lightm.io.writers import LabelWriteError, _BadWrite, _free_bytes

SEG_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.4"
LABELMAP_SEG_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.7"
SEG_SOP_CLASSES = (SEG_SOP_CLASS_UID, LABELMAP_SEG_SOP_CLASS_UID)
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
# organ names (singular, lower case) that have a SNOMED CT concept in pydicom's code
# dictionary, by the dictionary's keyword; everything else is "Tissue"
ORGAN_CODES = {
    "aorta": "Aorta",
    "bone": "Bone",
    "brain": "Brain",
    "colon": "Colon",
    "esophagus": "Esophagus",
    "gallbladder": "Gallbladder",
    "heart": "Heart",
    "kidney": "Kidney",
    "liver": "Liver",
    "lung": "Lung",
    "pancreas": "Pancreas",
    "prostate": "Prostate",
    "spine": "Spine",
    "spleen": "Spleen",
    "stomach": "Stomach",
    "trachea": "Trachea",
}
# default segment colours (RGB 0..1) for classes 1, 2, ...: distinct hues, cycled
PALETTE = (
    (0.90, 0.30, 0.24),
    (0.20, 0.60, 0.86),
    (0.18, 0.80, 0.44),
    (0.95, 0.77, 0.06),
    (0.61, 0.35, 0.71),
    (0.90, 0.49, 0.13),
    (0.10, 0.74, 0.61),
    (0.91, 0.30, 0.60),
    (0.55, 0.71, 0.20),
    (0.40, 0.40, 0.90),
)


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
class _Source:
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


# --- the source series -------------------------------------------------------------------


def _header(path: Path) -> Any:
    import pydicom

    return pydicom.dcmread(str(path), stop_before_pixels=True)


def _source(geometry: Geometry | None, error: type[ValueError], where: Path) -> _Source:
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
            members = [(source, _header(source))]
        else:
            wanted = geometry.extra.get("series_uid")
            members = []
            for path in find_dicom_files(source):
                try:
                    ds = _header(path)
                except Exception:  # unreadable files were skipped by the reader too
                    continue
                if "Rows" in ds and (wanted is None or str(ds.get("SeriesInstanceUID")) == wanted):
                    members.append((path, ds))
            if not members:
                raise error(
                    f"{where}: {source} no longer holds the DICOM series "
                    f"{wanted or ''} the labels were made on"
                )
        return _sorted_source(source, members, geometry, error, where)
    except HEADER_ERRORS as err:
        raise error(f"{where}: corrupt DICOM header in {source} ({err})") from None


def _sorted_source(
    source: Path,
    members: list[tuple[Path, Any]],
    geometry: Geometry,
    error: type[ValueError],
    where: Path,
) -> _Source:
    from napari_lightm.io._dicom import _frame_positions, _orientation

    headers = [ds for _, ds in members]
    uid = str(headers[0].get("SeriesInstanceUID", ""))
    rows, cols = int(headers[0].Rows), int(headers[0].Columns)
    direction = _orientation(headers[0])
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
        positions = _frame_positions(headers[0], n_frames, normal)
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
    return _Source(source, headers, frames, uid, shape)


# --- segment descriptions ----------------------------------------------------------------


def _codes(name: str) -> tuple[Any, Any]:
    """(category, type) codes of a class: an organ by its last word, else Tissue."""
    from pydicom.sr.codedict import codes

    words = name.lower().replace("_", " ").split()
    last = words[-1] if words else ""
    keyword = ORGAN_CODES.get(last) or ORGAN_CODES.get(last.rstrip("s"))
    if keyword is not None:
        return codes.SCT.AnatomicalStructure, getattr(codes.SCT, keyword)
    return codes.SCT.Tissue, codes.SCT.Tissue


def _colour(colours: Any, k: int) -> tuple[float, float, float]:
    """Colour of class ``k``: from ``colours`` (a sequence indexed by class, or a
    mapping), else the palette. RGB or RGBA, 0..1."""
    value = None
    if isinstance(colours, Mapping):
        value = colours.get(k)
    elif colours is not None and k < len(colours):
        value = colours[k]
    if value is None:
        return PALETTE[(k - 1) % len(PALETTE)]
    rgb = np.asarray(value, float).ravel()[:3]
    if rgb.size != 3 or not np.all(np.isfinite(rgb)):
        raise ValueError(f"colour of class {k} is not RGB: {value!r}")
    return tuple(float(v) for v in np.clip(rgb, 0, 1))  # type: ignore[return-value]


def _descriptions(names: list[str], colours: Any, algorithm_type: str) -> list[Any]:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from napari_lightm import __version__

    algorithm = None
    if algorithm_type != "MANUAL":
        algorithm = hd.AlgorithmIdentificationSequence(
            name="LightM-UNet",
            family=codes.cid7162.ArtificialIntelligence,
            version=__version__,
            source="napari-lightm",
        )
    out = []
    for k, name in enumerate(names[1:], start=1):
        category, kind = _codes(name)
        rgb = _colour(colours, k)
        out.append(
            hd.seg.SegmentDescription(
                segment_number=k,
                segment_label=name[:64],
                segmented_property_category=category,
                segmented_property_type=kind,
                algorithm_type=algorithm_type,
                algorithm_identification=algorithm,
                display_color=hd.color.CIELabColor.from_rgb(*(round(255 * c) for c in rgb)),
            )
        )
    return out


def _class_names(labels: np.ndarray, class_names: Sequence[str] | None, where: Path) -> list[str]:
    """Names by class index (index 0 background): the given ones, else "class k" up to
    the largest label. More classes present than named is refused."""
    top = int(labels.max()) if labels.size else 0
    if class_names is None:
        return ["background"] + [f"class {k}" for k in range(1, max(top, 1) + 1)]
    names = [str(n) for n in class_names]
    if len(names) < 2:
        raise LabelWriteError(
            f"{where}: DICOM-SEG needs at least one class besides the background, got "
            f"class names {names}"
        )
    if top > len(names) - 1:
        present = np.unique(labels)
        extra = [int(v) for v in present if v > len(names) - 1][:5]
        raise LabelWriteError(
            f"{where}: labels hold class{'es' if len(extra) > 1 else ''} "
            f"{', '.join(map(str, extra))} but only {len(names) - 1} classes are named "
            f"({', '.join(names[1:])[:200]})"
        )
    return names


# --- writing -----------------------------------------------------------------------------


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
    from napari_lightm.io.writers import label_dtype

    dtype = label_dtype(labels, path)
    source = _source(geometry, LabelWriteError, path)
    if labels.shape != source.shape:
        raise LabelWriteError(
            f"{path}: labels of shape {labels.shape} do not fit the source DICOM "
            f"{source.where.name} ({'x'.join(map(str, source.shape))})"
        )
    names = _class_names(labels, class_names, path)
    try:
        descriptions = _descriptions(names, colours, algorithm_type)
    except ValueError as err:
        raise LabelWriteError(f"{path}: {err}") from None
    pixels = labels.astype(dtype, copy=False)
    if source.frames is not None:
        # a multi-frame source: highdicom pairs pixel frame i with source frame i + 1
        pixels = pixels[np.argsort(source.frames)]
    try:
        with _quiet("highdicom"):
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
            f"({_one_line(err)})"
        ) from None
    existed = path.exists()

    def write(tmp: str) -> None:
        seg.save_as(tmp, enforce_file_format=True)

    def verify(tmp: str) -> None:
        _check_written(Path(tmp), labels, source)

    try:
        atomic_write(path, write, verify=verify, suffix=".dcm")
    except (OSError, _BadWrite) as err:
        reason = (err.strerror or str(err)) if isinstance(err, OSError) else str(err)
        free = _free_bytes(path)
        if free is not None and free < 1 << 20:
            reason += f"; the disk is full ({free} bytes free)"
        raise LabelWriteError(
            f"{path}: could not write the DICOM-SEG ({reason}); "
            + ("the previous file is unchanged" if existed else "nothing was written")
        ) from None
    return path


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Hold back a library's log messages below ERROR (highdicom logs what it decided,
    e.g. keeping the frames of an empty segmentation, which is no news to the user)."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:300] or type(err).__name__


def _pixels(seg: Any, source: _Source, *, skip_overlap_checks: bool = False) -> np.ndarray:
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


def _check_written(tmp: Path, labels: np.ndarray, source: _Source) -> None:
    """Read the written file back with highdicom (its checks included): the source
    series and frame of reference are referenced and the voxels are the labels."""
    import highdicom as hd

    try:
        seg = hd.seg.segread(str(tmp))
        back = _pixels(seg, source)
    except Exception as err:  # highdicom raises many types for a damaged file
        raise _BadWrite(
            f"the written file does not read back as a DICOM-SEG: {_one_line(err)}"
        ) from None
    referenced = {str(item.SeriesInstanceUID) for item in seg.ReferencedSeriesSequence}
    if source.series_uid and source.series_uid not in referenced:
        raise _BadWrite("the written file does not reference the source series")
    frame_of_reference = source.datasets[0].get("FrameOfReferenceUID")
    if frame_of_reference and seg.get("FrameOfReferenceUID") != frame_of_reference:
        raise _BadWrite("the written file has another frame of reference than its source")
    if not np.array_equal(back, labels):
        raise _BadWrite(
            f"the written file reads back with {int(np.sum(back != labels))} voxels that "
            "differ from the labels"
        )


# --- reading -----------------------------------------------------------------------------


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
        raise ImageReadError(f"{path}: damaged DICOM-SEG ({_one_line(err)})") from None
    if isinstance(reference, str | os.PathLike):
        from napari_lightm.io.readers import read_image

        _, geometry = read_image(reference)
    else:
        try:
            geometry = Geometry.from_dict(reference) if isinstance(reference, dict) else reference
        except GeometryError as err:
            raise ImageReadError(f"{path}: invalid reference geometry: {err}") from None
    source = _source(geometry, ImageReadError, path)
    referenced = referenced_series(seg)
    if source.series_uid and source.series_uid not in referenced:
        raise ImageReadError(
            f"{path}: this DICOM-SEG was made on series {', '.join(sorted(referenced))[:130]}, "
            f"not on {source.where} (series {source.series_uid})"
        )
    warnings: list[str] = []
    try:
        try:
            labels = _pixels(seg, source)
        except RuntimeError as err:  # highdicom's refusal to combine overlapping segments
            if "overlap" not in str(err).lower():
                raise
            # highdicom's frame index is left locked by the refusal: read the file again
            labels = _pixels(hd.seg.segread(str(path)), source, skip_overlap_checks=True)
            warnings.append(
                f"{path.name}: segments overlap; where they do, the higher segment number is shown"
            )
    except (ValueError, RuntimeError, KeyError, IndexError, AttributeError) as err:
        raise ImageReadError(
            f"{path}: its frames do not fit {source.where} ({_one_line(err)})"
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


def segment_names_and_colours(
    seg: Any,
) -> tuple[list[str], list[tuple[float, float, float] | None]]:
    """Segment labels and display colours (RGB 0..1) indexed by segment number."""
    numbers = list(seg.get_segment_numbers())
    top = max(numbers) if numbers else 0
    names = ["background"] + [f"class {k}" for k in range(1, top + 1)]
    colours: list[tuple[float, float, float] | None] = [None] * (top + 1)
    for k in numbers:
        description = seg.get_segment_description(k)
        names[k] = str(description.segment_label)
        if "RecommendedDisplayCIELabValue" in description:
            import highdicom as hd

            lab = hd.color.CIELabColor.from_dicom_value(description.RecommendedDisplayCIELabValue)
            colours[k] = tuple(c / 255 for c in lab.to_rgb())  # type: ignore[assignment]
    return names, colours


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
