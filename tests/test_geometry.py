"""Geometry: napari transforms agree with ITK's index-to-physical mapping, and back."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from napari_lightm.io.geometry import Geometry, resample

OBLIQUE = tuple(Rotation.from_euler("xyz", [20, -35, 50], degrees=True).as_matrix().ravel())
FLIPPED = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # RAS-stored data seen in LPS
ROT2D = (0.0, -1.0, 1.0, 0.0)

GEOMETRIES = {
    "axis-aligned 3D": Geometry((0.8, 0.7, 2.5), (-100.0, 20.0, 35.5)),
    "oblique 3D": Geometry((0.8, 0.7, 2.5), (-100.0, 20.0, 35.5), OBLIQUE),
    "flipped 3D": Geometry((1.5, 1.0, 3.0), (90.0, 120.0, -40.0), FLIPPED),
    "axis-aligned 2D": Geometry((0.14, 0.2), (3.0, -4.0)),
    "rotated 2D": Geometry((0.14, 0.2), (3.0, -4.0), ROT2D),
}


def itk_physical(geometry: Geometry, index_xyz: tuple[int, ...]) -> np.ndarray:
    """Physical point (ITK order) of a voxel index (ITK order), computed by SimpleITK."""
    import SimpleITK as sitk

    image = sitk.Image([4] * geometry.ndim, sitk.sitkUInt8)
    geometry.apply_to_sitk(image)
    return np.array(image.TransformIndexToPhysicalPoint([int(i) for i in index_xyz]))


@pytest.mark.parametrize("name", GEOMETRIES)
def test_napari_layer_places_voxels_where_itk_does(name):
    from napari.layers import Image

    geometry = GEOMETRIES[name]
    layer = Image(np.zeros((5,) * geometry.ndim, np.float32), **geometry.layer_kwargs())
    assert ("affine" in geometry.layer_kwargs()) == (not geometry.is_axis_aligned)
    rng = np.random.default_rng(0)
    for index in rng.integers(0, 5, size=(6, geometry.ndim)):
        world = np.asarray(layer.data_to_world(index))  # array order
        expected = itk_physical(geometry, tuple(index[::-1]))[::-1]
        np.testing.assert_allclose(world, expected, atol=1e-9)


@pytest.mark.parametrize("name", GEOMETRIES)
def test_from_layer_inverts_layer_kwargs(name):
    from napari.layers import Labels

    geometry = GEOMETRIES[name]
    layer = Labels(np.zeros((3,) * geometry.ndim, np.uint8), **geometry.layer_kwargs())
    back = Geometry.from_layer(layer.scale, layer.translate, layer.affine.affine_matrix)
    assert back.allclose(geometry, atol=1e-9)


def test_from_layer_refuses_shear():
    affine = np.eye(4)
    affine[0, 1] = 0.5
    with pytest.raises(ValueError, match="shear"):
        Geometry.from_layer((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), affine)


@pytest.mark.parametrize("name", GEOMETRIES)
def test_dict_round_trip_is_json(name):
    geometry = GEOMETRIES[name]
    geometry.extra["warnings"] = ["something"]
    again = Geometry.from_dict(json.loads(json.dumps(geometry.to_dict())))
    assert again == geometry


@pytest.mark.parametrize(
    "kwargs",
    [
        {"spacing": (1.0, 0.0, 1.0)},
        {"spacing": (1.0, float("nan"))},
        {"spacing": (1.0, 1.0), "origin": (0.0, 0.0, 0.0)},
        {"spacing": (1.0, 1.0), "direction": (1.0, 0.0, 0.0)},
    ],
)
def test_inconsistent_geometry_is_refused(kwargs):
    with pytest.raises(ValueError):
        Geometry(**kwargs)


def test_warn_records_and_logs(caplog):
    geometry = Geometry((1.0, 1.0))
    with caplog.at_level("WARNING", logger="napari_lightm.io"):
        geometry.warn("uneven slices")
    assert geometry.extra["warnings"] == ["uneven slices"]
    assert "uneven slices" in caplog.text


@pytest.mark.parametrize("order", [0, 1])
def test_resample_to_spacing_and_back(order):
    labels = np.zeros((10, 32, 32), np.uint8)
    labels[3:7, 8:24, 10:20] = 2
    image = labels if order == 0 else labels.astype(np.float32)
    down = resample(image, (2.5, 0.8, 0.8), (2.5, 1.6, 1.6), order=order)
    assert down.shape == (10, 16, 16)
    back = resample(down, (2.5, 1.6, 1.6), shape=(10, 32, 32), order=order)
    assert back.shape == labels.shape
    if order == 0:
        assert back.dtype == np.uint8 and set(np.unique(back)) == {0, 2}
        assert np.mean(back == labels) > 0.97
    assert resample(image, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0)) is image
