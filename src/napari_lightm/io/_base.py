"""What the io readers and writers share: their errors, file-name suffixes and small
checks (a base every io module may import; it imports none of them)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np

# DICOM Segmentation storage SOP classes (binary / fractional, and label map)
SEG_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.4"
LABELMAP_SEG_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.7"
SEG_SOP_CLASSES = (SEG_SOP_CLASS_UID, LABELMAP_SEG_SOP_CLASS_UID)


class ImageReadError(ValueError):
    """A file or folder that cannot be read as an image; the message names it and why."""


class LabelWriteError(ValueError):
    """Labels that cannot be written as asked; the message names the file and why."""


class BadWrite(Exception):
    """The written temporary file is not what was asked (reason in the message)."""


NIFTI_SUFFIXES = (".nii", ".nii.gz")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
META_SUFFIXES = (".mha", ".mhd")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + NRRD_SUFFIXES + META_SUFFIXES

# plain NumPy arrays (unit spacing): read by the core and the CLI for datasets made by
# scripts; not offered to napari, whose own reader opens .npy
ARRAY_SUFFIXES = (".npy",)
IMAGE_SUFFIXES = VOLUME_SUFFIXES + DICOM_SUFFIXES + PICTURE_SUFFIXES

# ITU-R BT.601 luma weights: how RGB X-ray exports are folded back to one grey channel
_LUMA = np.array([0.299, 0.587, 0.114])


def suffix_of(path: str | os.PathLike) -> str:
    """Lower-case suffix, with ``.nii.gz`` kept whole (``""`` when none)."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True when the file starts with the DICOM preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


# ITK prefixes messages with the object that raised them: "NrrdImageIO(0x55f3f3c497f0): "
_ITK_OBJECT = re.compile(r"\b\w+\(0x[0-9a-fA-F]+\):\s*")


def itk_reason(err: Exception) -> str:
    """The informative line of an ITK exception (they span several lines), without the
    address of the ITK object that raised it."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    reason = lines[-1] if lines else type(err).__name__
    for ln in reversed(lines):
        if "ERROR:" in ln:
            reason = ln.split("ERROR:", 1)[1].strip()
            break
    return _ITK_OBJECT.sub("", reason).strip(" :") or type(err).__name__


def fold_rgb(array: np.ndarray, path: Path | None = None) -> np.ndarray:
    """``[H, W, 3|4]`` colour to ``[H, W]`` grey (alpha dropped). Grey stored as RGB
    (equal channels) is returned exactly, in its own dtype; real colour becomes float32 luma."""
    rgb = array[..., :3]
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return np.ascontiguousarray(rgb[..., 0])
    return (rgb.astype(np.float32) @ _LUMA.astype(np.float32)).astype(np.float32)


def free_bytes(path: Path) -> int | None:
    """Free space in the folder of ``path`` (or the nearest existing parent)."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


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


def one_line(err: Exception) -> str:
    """An exception's message on one line (pydicom's can span several)."""
    text = " ".join(str(err).split())
    return text[:300] or type(err).__name__
