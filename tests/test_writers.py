"""write_labels: read -> write labels -> re-read keeps the grid exactly; bad labels refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from napari_lightm.io import Geometry, LabelWriteError, read_image, write_labels

OBLIQUE = tuple(Rotation.from_euler("xyz", [-30, 10, 65], degrees=True).as_matrix().ravel())
FLIPPED = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
DIRECTIONS = {"identity": None, "oblique": OBLIQUE, "LPS/RAS flipped": FLIPPED}
FORMATS = [".nii", ".nii.gz", ".nrrd", ".mha", ".mhd"]


def source_image(tmp_path: Path, suffix: str, direction: tuple | None) -> Path:
    """An image file as another tool would have written it."""
    import SimpleITK as sitk

    array = np.random.default_rng(0).integers(-1000, 1000, size=(7, 10, 12)).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    Geometry((0.77, 0.81, 2.5), (-120.3, 87.6, -33.25), direction).apply_to_sitk(image)
    path = tmp_path / f"image{suffix}"
    sitk.WriteImage(image, str(path))
    return path


def some_labels(shape: tuple[int, ...], top: int = 3) -> np.ndarray:
    return np.random.default_rng(1).integers(0, top + 1, size=shape).astype(np.uint8)


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_round_trip_keeps_grid_exactly(tmp_path, suffix, direction):
    image, geometry = read_image(source_image(tmp_path, suffix, DIRECTIONS[direction]))
    labels = some_labels(image.shape)
    out = write_labels(tmp_path / f"labels{suffix}", labels, geometry)
    again, back = read_image(out)
    assert again.shape == image.shape
    np.testing.assert_array_equal(again, labels)
    assert again.dtype == np.uint8
    # the header written is the header read, to double precision (NRRD stores spacing
    # times direction, so only rounding in the last bit), except NIfTI's direction,
    # kept as a float32 quaternion
    np.testing.assert_allclose(back.spacing, geometry.spacing, rtol=1e-14, atol=0)
    np.testing.assert_allclose(back.origin, geometry.origin, rtol=1e-14, atol=0)
    atol = 1e-7 if suffix in (".nii", ".nii.gz") else 1e-14
    np.testing.assert_allclose(back.direction, geometry.direction, rtol=0, atol=atol)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_labels_of_a_dicom_series_keep_its_geometry(tmp_path, suffix):
    from test_readers import write_dicom_series

    write_dicom_series(tmp_path / "ct", np.zeros((4, 8, 10), np.int16), direction=OBLIQUE)
    image, geometry = read_image(tmp_path / "ct")
    out = write_labels(tmp_path / f"seg{suffix}", some_labels(image.shape), geometry)
    _, back = read_image(out)
    assert back.allclose(geometry, atol=1e-6)


def test_dict_geometry_and_uint16(tmp_path):
    geometry = Geometry((0.5, 0.5, 1.0), (1.0, 2.0, 3.0), FLIPPED)
    labels = some_labels((3, 4, 5))
    labels = labels.astype(np.uint16) * 100  # values up to 300 need 16 bits
    out = write_labels(tmp_path / "big.nrrd", labels, geometry.to_dict())
    again, back = read_image(out)
    assert again.dtype == np.uint16
    np.testing.assert_array_equal(again, labels)
    assert back.allclose(geometry, atol=0)


@pytest.mark.parametrize("dtype", [bool, np.int64, np.float32])
def test_label_dtypes_become_uint8(tmp_path, dtype):
    labels = some_labels((6, 7), top=1).astype(dtype)
    again, _ = read_image(write_labels(tmp_path / "m.mha", labels, Geometry((1.0, 1.0))))
    assert again.dtype == np.uint8
    np.testing.assert_array_equal(again, labels.astype(np.uint8))


def test_png_keeps_values_of_2d_labels(tmp_path):
    labels = some_labels((32, 40))
    again, _ = read_image(write_labels(tmp_path / "xray_labels.png", labels, Geometry((0.7, 0.7))))
    np.testing.assert_array_equal(again, labels)


def test_no_geometry_writes_identity(tmp_path):
    _, back = read_image(write_labels(tmp_path / "l.nii.gz", some_labels((3, 4, 5))))
    assert back.allclose(Geometry.identity(3), atol=0)


@pytest.mark.parametrize(
    ("name", "labels", "geometry", "message"),
    [
        ("l.tiff", some_labels((4, 4)), Geometry((1.0, 1.0)), "cannot write labels as .tiff"),
        ("l.nii.gz", some_labels((3, 4, 4)), Geometry((1.0, 1.0)), "do not match a 2D"),
        ("l.png", some_labels((3, 4, 4)), Geometry((1.0, 1.0, 1.0)), "PNG holds 2D"),
        ("l.mha", np.full((4, 4), -1), Geometry((1.0, 1.0)), "outside 0..65535"),
        ("l.mha", np.full((4, 4), 70000), Geometry((1.0, 1.0)), "outside 0..65535"),
        ("l.mha", np.full((4, 4), 0.5), Geometry((1.0, 1.0)), "fractional"),
        ("l.mha", np.full((4, 4), "a"), Geometry((1.0, 1.0)), "not class indices"),
    ],
    ids=["suffix", "ndim", "3d png", "negative", "too large", "fractional", "strings"],
)
def test_bad_labels_are_refused_and_old_file_kept(tmp_path, name, labels, geometry, message):
    path = tmp_path / name
    path.write_bytes(b"previous labels")
    with pytest.raises(LabelWriteError, match=message) as err:
        write_labels(path, labels, geometry)
    assert str(path) in str(err.value)
    assert path.read_bytes() == b"previous labels"


def test_failed_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "labels.nii.gz"
    target.mkdir()  # a folder in the way: the final rename fails
    with pytest.raises(LabelWriteError, match="could not write"):
        write_labels(target, some_labels((3, 4, 5)), Geometry.identity(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.nii.gz"]
