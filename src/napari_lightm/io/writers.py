"""Write label arrays with the exact geometry of their source image.

:func:`write_labels` picks the format from the suffix: NIfTI (``.nii``, ``.nii.gz``),
NRRD (``.nrrd``), MetaImage (``.mha``, or ``.mhd`` + ``.raw``), PNG (2D only; PNG
has no header for spacing or orientation, so only the values survive) or DICOM-SEG
(``.dcm``, labels of a DICOM image only: :mod:`napari_lightm.io.dicom_seg`). Labels are
stored as ``uint8`` (``uint16`` beyond 255); the header takes spacing, origin and
direction from the source image's :class:`Geometry` unchanged, so the labels open
aligned with the image in 3D Slicer or ITK-SNAP.

Every write is atomic (:mod:`napari_lightm.io.atomic`): ITK writes a temporary file in
the target's folder, the file is read back and compared with the labels (header and
voxels; ITK's NIfTI writer reports a full disk only on stderr, so this check is what
catches it), flushed to disk and renamed over the target. Any failure raises
:class:`LabelWriteError` and leaves the old file as it was, with no temporary file
behind. A ``.mhd`` header and its ``.raw`` data are two files: both are written and
checked under temporary names, then the data and the header are renamed in turn (the
old data is put back if the second rename fails).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_lightm.io._base import (
    NIFTI_SUFFIXES,
    BadWrite,
    ImageReadError,
    LabelWriteError,
    free_bytes,
    itk_reason,
    label_dtype,
    suffix_of,
)
from napari_lightm.io._headers import check_nifti_complete
from napari_lightm.io.atomic import TMP_SUFFIX, atomic_write, fsync_path, keep_mode, temp_path
from napari_lightm.io.geometry import Geometry, GeometryError

LABEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".png", ".dcm")

# tolerances of the read-back check: NIfTI keeps spacing and origin as float32 and the
# direction as a float32 quaternion; anything larger is a damaged header
HEADER_RTOL = 1e-6
HEADER_ATOL = 1e-5


def write_labels(
    path: str | os.PathLike,
    labels: np.ndarray,
    geometry: Geometry | dict[str, Any] | None = None,
    *,
    class_names: Sequence[str] | None = None,
    colours: Sequence[Any] | Mapping[int, Any] | None = None,
    algorithm_type: str = "AUTOMATIC",
) -> Path:
    """Write ``labels`` (array order, ``(z, y, x)`` / ``(y, x)``) to ``path``.

    Args:
        path: target; the suffix picks the format (see the module docstring).
        labels: integer class indices, same shape as the source image.
        geometry: the source image's :class:`Geometry` (or its ``to_dict()``); ``None``
            writes an identity grid with 1 mm voxels.
        class_names, colours, algorithm_type: the segments of a DICOM-SEG (``.dcm``;
            see :func:`~napari_lightm.io.dicom_seg.write_dicom_seg`: class names by
            index, 0 the background; default "class 1", "class 2", ...); other formats
            have no place for them.

    Returns:
        the path written.

    Raises:
        LabelWriteError: unknown suffix, labels whose dimensions do not match the
            geometry, an invalid geometry (NaN, zero spacing, sheared axes), values that
            are not class indices, 3D labels to PNG, or a write that failed (full disk,
            read-only folder, a file that reads back wrong); the old file at ``path`` is
            then unchanged and no temporary file remains.
    """
    import SimpleITK as sitk

    path = Path(path)
    suffix = suffix_of(path)
    if suffix not in LABEL_SUFFIXES:
        raise LabelWriteError(
            f"{path}: cannot write labels as {suffix or '(no suffix)'}; use one of "
            + ", ".join(LABEL_SUFFIXES)
        )
    if suffix == ".dcm":
        from napari_lightm.io.dicom_seg import write_dicom_seg

        return write_dicom_seg(
            path, labels, geometry, class_names, colours, algorithm_type=algorithm_type
        )
    labels = np.asarray(labels)
    try:
        if isinstance(geometry, dict):
            geometry = Geometry.from_dict(geometry)
        elif geometry is not None:
            geometry.validate()  # fields may have been reassigned since construction
    except GeometryError as err:
        raise LabelWriteError(f"{path}: invalid geometry: {err}") from None
    if geometry is None:
        geometry = Geometry.identity(labels.ndim)
    if labels.ndim != geometry.ndim:
        raise LabelWriteError(
            f"{path}: labels of shape {labels.shape} do not match a {geometry.ndim}D source "
            "image geometry"
        )
    if suffix == ".png" and labels.ndim != 2:
        raise LabelWriteError(f"{path}: PNG holds 2D labels only, got shape {labels.shape}")
    data = np.ascontiguousarray(labels.astype(label_dtype(labels, path), copy=False))
    image = sitk.GetImageFromArray(data)
    if suffix != ".png":
        geometry.apply_to_sitk(image)
    header = None if suffix == ".png" else geometry
    existed = path.exists()
    stderr: list[str] = []
    temporaries: list[str] = []

    def write(tmp: str) -> None:
        temporaries.append(tmp)
        with c_stderr_captured(stderr):
            sitk.WriteImage(image, tmp, useCompression=suffix not in (".png", ".mhd"))

    def verify(tmp: str) -> None:
        check_written(Path(tmp), data, header)

    try:
        if suffix == ".mhd":
            _write_mhd_pair(path, write, verify)
        else:
            atomic_write(path, write, verify=verify, suffix=suffix)
    except (RuntimeError, OSError, BadWrite) as err:
        reason = _reason(err, stderr, temporaries)
        free = free_bytes(path)
        if free is not None and free < max(data.nbytes, 1 << 20):
            reason += f"; the disk is full ({free} bytes free)"
        raise LabelWriteError(
            f"{path}: could not write labels ({reason}); "
            + ("the previous file is unchanged" if existed else "nothing was written")
        ) from None
    return path


def _reason(err: Exception, stderr: list[str], temporaries: list[str]) -> str:
    """One line on why a write failed: ITK's reason, the OS error, or the check's, with
    what ITK printed on stderr (its NIfTI writer's only report of a short write), and
    temporary file names (gone by now) replaced by words."""
    if isinstance(err, RuntimeError):
        reason = itk_reason(err)
    elif isinstance(err, OSError):
        reason = err.strerror or str(err)
        if err.filename is not None:
            name = Path(err.filename)
            temporary = name.name.startswith(".") and TMP_SUFFIX in name.name
            reason += f": {name.parent if temporary else name}"
    else:
        reason = str(err)
    printed = [ln.strip() for text in stderr for ln in text.splitlines() if ln.strip()]
    if printed:
        reason += f"; ITK said: {printed[-1].lstrip('*').strip()}"
    for tmp in temporaries:
        reason = reason.replace(tmp, "the temporary file")
    return reason.rstrip(" :")


def check_written(tmp: Path, data: np.ndarray, geometry: Geometry | None) -> None:
    """Read a written label file back: voxels (shape, type, values) equal to ``data`` and,
    unless ``geometry`` is None, the header's grid equal to it. Raises ``BadWrite``."""
    import SimpleITK as sitk

    try:
        if suffix_of(tmp) in NIFTI_SUFFIXES:
            check_nifti_complete(tmp)  # ITK reads a short NIfTI file without complaint
        image = sitk.ReadImage(str(tmp))
    except ImageReadError as err:
        raise BadWrite(f"the written file is damaged: {str(err).split(': ', 1)[-1]}") from None
    except RuntimeError as err:
        raise BadWrite(f"the written file cannot be read back: {itk_reason(err)}") from None
    back = sitk.GetArrayFromImage(image)
    if back.shape != data.shape or back.dtype != data.dtype or not np.array_equal(back, data):
        raise BadWrite(
            f"the written file reads back as {back.dtype} {back.shape} voxels that differ "
            f"from the {data.dtype} {data.shape} labels"
        )
    if geometry is None:
        return
    for name, got, want in (
        ("spacing", image.GetSpacing(), geometry.spacing),
        ("origin", image.GetOrigin(), geometry.origin),
        ("direction", image.GetDirection(), geometry.direction),
    ):
        if not np.allclose(got, want, rtol=HEADER_RTOL, atol=HEADER_ATOL):
            raise BadWrite(f"the written header has {name} {got} instead of {want}")


@contextlib.contextmanager
def c_stderr_captured(into: list[str]) -> Iterator[None]:
    """Collect what C/C++ code prints on file descriptor 2 while the block runs.

    ITK's NIfTI writer reports a short write only there (and returns normally), and its
    MetaImage writer adds a line of its own; the caller puts the text in its one-line
    error instead of letting it reach the terminal. Does nothing when fd 2 cannot be
    redirected.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    try:
        sink = tempfile.TemporaryFile()
    except OSError:
        os.close(saved)
        yield
        return
    with sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            into.append(sink.read(1 << 16).decode("utf-8", "replace"))


def _write_mhd_pair(
    path: Path, write: Callable[[str], None], verify: Callable[[str], None]
) -> None:
    """Replace ``NAME.mhd`` and its ``NAME.raw`` as safely as two files allow.

    ITK writes and the check reads a temporary pair (``.NAME.mhd.XXXX.tmp.mhd`` naming
    its own ``.raw``); the header is then pointed at ``NAME.raw`` and saved under a
    temporary name; the data is renamed first, the header second. A failed header rename
    puts the old data back (kept through a hard link); nothing of the new pair remains
    after any failure.
    """
    raw = path.with_suffix(".raw")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_header = temp_path(path, ".mhd")
    tmp_raw = tmp_header.with_suffix(".raw")  # ITK's name for the header's data file
    final_header: Path | None = None
    backup: Path | None = None
    raw_existed = raw.exists()
    try:
        write(str(tmp_header))
        verify(str(tmp_header))
        text = tmp_header.read_text(encoding="latin-1")
        text, count = re.subn(r"(?m)^ElementDataFile\s*=.*$", f"ElementDataFile = {raw.name}", text)
        if count != 1:
            raise BadWrite("the written .mhd header names no data file")
        final_header = temp_path(path)
        with open(final_header, "w", encoding="latin-1") as f:
            f.write(text)
        if final_header.read_text(encoding="latin-1") != text:
            raise BadWrite("the .mhd header reads back different")
        for tmp, target in ((tmp_raw, raw), (final_header, path)):
            keep_mode(tmp, target)
            fsync_path(tmp)
        if raw_existed:
            backup = _hard_link_beside(raw)
        os.replace(tmp_raw, raw)
        try:
            os.replace(final_header, path)
        except BaseException:
            if backup is not None:
                os.replace(backup, raw)
            elif not raw_existed:
                raw.unlink()
            raise
        fsync_path(path.parent)
    finally:
        for leftover in (tmp_header, tmp_raw, final_header, backup):
            if leftover is not None:
                with contextlib.suppress(OSError):
                    leftover.unlink()


def _hard_link_beside(path: Path) -> Path | None:
    """A hidden hard link to ``path`` in its folder (no data copied); None where the
    file system has no hard links."""
    link = path.with_name(f".{path.name}.{secrets.token_hex(4)}.bak")
    try:
        os.link(path, link)
    except OSError:
        return None
    return link


__all__ = ["LABEL_SUFFIXES", "LabelWriteError", "check_written", "label_dtype", "write_labels"]
