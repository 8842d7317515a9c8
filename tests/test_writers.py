"""write_labels: read -> write labels -> re-read keeps the grid exactly; bad labels refused."""

from __future__ import annotations

import os
import stat
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


# --- atomic writes: what was written is read back before it replaces anything --------------


def write_other_labels(monkeypatch, change):
    """Make SimpleITK write something else than asked (``change`` maps the image)."""
    import SimpleITK as sitk

    real = sitk.WriteImage

    def write(image, path, *args, **kwargs):
        real(change(image), path, *args, **kwargs)

    monkeypatch.setattr(sitk, "WriteImage", write)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha", ".mhd", ".png"])
def test_labels_that_read_back_different_are_refused_and_old_file_kept(
    tmp_path, monkeypatch, suffix
):
    shape = (20, 24) if suffix == ".png" else (3, 20, 24)
    path = write_labels(tmp_path / f"l{suffix}", some_labels(shape), Geometry.identity(len(shape)))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    write_other_labels(monkeypatch, lambda image: image + 1)
    with pytest.raises(LabelWriteError, match="reads back as .* voxels that differ") as err:
        write_labels(path, some_labels(shape), Geometry.identity(len(shape)))
    assert "the previous file is unchanged" in str(err.value)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_header_that_reads_back_different_is_refused(tmp_path, monkeypatch):
    def shifted(image):
        image.SetOrigin([o + 1.0 for o in image.GetOrigin()])
        return image

    write_other_labels(monkeypatch, shifted)
    with pytest.raises(LabelWriteError, match="written header has origin") as err:
        write_labels(tmp_path / "l.nrrd", some_labels((3, 4, 5)), Geometry.identity(3))
    assert "nothing was written" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_mhd_pair_is_replaced_together(tmp_path):
    old = some_labels((3, 4, 5), top=1)
    write_labels(tmp_path / "l.mhd", old, Geometry.identity(3))
    new = some_labels((3, 4, 5), top=3)
    write_labels(tmp_path / "l.mhd", new, Geometry((0.5, 0.6, 0.7)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.mhd", "l.raw"]
    assert "ElementDataFile = l.raw" in (tmp_path / "l.mhd").read_text()
    again, geometry = read_image(tmp_path / "l.mhd")
    np.testing.assert_array_equal(again, new)
    assert geometry.spacing == pytest.approx((0.5, 0.6, 0.7))


def test_failed_mhd_header_rename_puts_the_old_data_back(tmp_path, monkeypatch):
    write_labels(tmp_path / "l.mhd", some_labels((3, 4, 5), top=1), Geometry.identity(3))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real = os.replace

    def replace(src, dst):
        if str(dst).endswith("l.mhd"):
            raise OSError(28, "No space left on device", str(dst))
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(LabelWriteError, match="No space left on device"):
        write_labels(tmp_path / "l.mhd", some_labels((3, 4, 5), top=3), Geometry.identity(3))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_replacing_keeps_the_file_mode_and_new_files_follow_the_umask(tmp_path):
    path = write_labels(tmp_path / "l.nii.gz", some_labels((3, 4, 5)))
    path.chmod(0o640)
    write_labels(path, some_labels((3, 4, 5), top=2))
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    umask = os.umask(0)
    os.umask(umask)
    fresh = write_labels(tmp_path / "new.nrrd", some_labels((3, 4, 5)))
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize(
    "tamper",
    [
        lambda d: d.update(spacing=[1.0, float("nan"), 1.0]),
        lambda d: d.update(direction=[1.0, 0.5, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]),
        lambda d: d.pop("spacing"),
        lambda d: d.update(origin="here"),
    ],
    ids=["nan spacing", "sheared", "no spacing", "text origin"],
)
def test_tampered_geometry_metadata_is_refused_and_old_file_kept(tmp_path, tamper):
    path = tmp_path / "l.nii.gz"
    path.write_bytes(b"previous labels")
    d = Geometry.identity(3).to_dict()
    tamper(d)
    with pytest.raises(LabelWriteError, match="invalid geometry") as err:
        write_labels(path, some_labels((3, 4, 5)), d)
    assert str(path) in str(err.value)
    assert path.read_bytes() == b"previous labels"
