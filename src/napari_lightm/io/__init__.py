"""Medical image IO with exact geometry (no Qt).

``read_image(path) -> (array, Geometry)`` and ``write_labels(path, labels, geometry)``;
DICOM-SEG of labels made on DICOM images: ``write_labels`` to ``.dcm`` and
``read_dicom_seg``; generated sample images live in :mod:`napari_lightm.io.phantoms`.
"""

from napari_lightm.io.dicom_seg import (
    DicomSegLabels,
    is_dicom_seg,
    read_dicom_seg,
    write_dicom_seg,
)
from napari_lightm.io.geometry import Geometry, GeometryError, resample
from napari_lightm.io.readers import IMAGE_SUFFIXES, ImageReadError, can_read, read_image
from napari_lightm.io.writers import LABEL_SUFFIXES, LabelWriteError, write_labels

__all__ = [
    "IMAGE_SUFFIXES",
    "DicomSegLabels",
    "LABEL_SUFFIXES",
    "Geometry",
    "GeometryError",
    "ImageReadError",
    "LabelWriteError",
    "can_read",
    "is_dicom_seg",
    "read_dicom_seg",
    "read_image",
    "resample",
    "write_dicom_seg",
    "write_labels",
]
