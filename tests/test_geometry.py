"""Geometry: napari transforms agree with ITK's index-to-physical mapping, and back."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from napari_lightm.io.geometry import Geometry, GeometryError, resample

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


NAN = float("nan")
SHEAR = (1.0, 0.5, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"spacing": (1.0, 0.0, 1.0)}, "spacing must be positive"),
        ({"spacing": (1.0, -0.5)}, "spacing must be positive"),
        ({"spacing": (1.0, NAN)}, "spacing must be positive and finite"),
        ({"spacing": (1.0, float("inf"))}, "spacing must be positive and finite"),
        ({"spacing": (1.0, 1.0), "origin": (0.0, 0.0, 0.0)}, "inconsistent"),
        ({"spacing": (1.0, 1.0), "direction": (1.0, 0.0, 0.0)}, "inconsistent"),
        ({"spacing": (1.0, 1.0), "origin": (NAN, 0.0)}, "origin must be finite"),
        ({"spacing": (1.0, 1.0), "origin": (0.0, float("-inf"))}, "origin must be finite"),
        ({"spacing": (1.0, 1.0), "direction": (1.0, NAN, 0.0, 1.0)}, "direction must be fin"),
        ({"spacing": (1.0, 1.0, 1.0), "direction": SHEAR}, "not a rotation or flip"),
        ({"spacing": (1.0, 1.0), "direction": (2.0, 0.0, 0.0, 2.0)}, "not a rotation or flip"),
        ({"spacing": (1.0, 1.0), "direction": (0.0, 0.0, 0.0, 0.0)}, "not a rotation or flip"),
        ({"spacing": ("a", 1.0)}, "not numbers"),
        ({"spacing": None}, "not numbers"),
        ({"spacing": "123"}, "not numbers"),
        ({"spacing": ()}, "without spacing"),
    ],
)
def test_invalid_geometry_is_refused(kwargs, message):
    with pytest.raises(GeometryError, match=message) as err:
        Geometry(**kwargs)
    assert isinstance(err.value, ValueError) and "\n" not in str(err.value)


def test_header_rounding_of_the_direction_is_accepted():
    """Directions stored as float32 (NIfTI) or short decimals (DICOM) are not exactly
    orthonormal; a tolerance far above their rounding keeps them readable."""
    rounded = tuple(round(v, 5) for v in OBLIQUE)
    assert Geometry((1.0, 1.0, 1.0), direction=rounded).direction == rounded
    as_float32 = tuple(float(v) for v in np.float32(OBLIQUE))
    Geometry((1.0, 1.0, 1.0), direction=as_float32)


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda d: d.update(spacing=[1.0, "nan"]), "spacing must be positive and finite"),
        (lambda d: d.update(spacing=[0.0, 1.0]), "spacing must be positive"),
        (lambda d: d.update(origin=[None, 1.0]), "not numbers"),
        (lambda d: d.update(direction=[0.0, 1.0, 1.0, 0.1]), "not a rotation or flip"),
        (lambda d: d.update(direction={"a": 1}), "not numbers"),
        (lambda d: d.pop("spacing"), "without spacing"),
        (lambda d: d.update(modality=5), "modality must be text"),
        (lambda d: d.update(extra=[1, 2]), "extra must be a mapping"),
    ],
    ids=[
        "nan",
        "zero",
        "origin None",
        "sheared",
        "direction dict",
        "no spacing",
        "modality",
        "extra",
    ],
)
def test_tampered_metadata_is_refused_by_from_dict(tamper, message):
    d = json.loads(json.dumps(GEOMETRIES["rotated 2D"].to_dict()))
    tamper(d)
    with pytest.raises(GeometryError, match=message):
        Geometry.from_dict(d)


@pytest.mark.parametrize("bad", [None, [1.0, 1.0], "spacing"])
def test_from_dict_of_something_else_is_refused(bad):
    with pytest.raises(GeometryError, match="mapping"):
        Geometry.from_dict(bad)


def test_validate_catches_fields_reassigned_after_construction():
    geometry = Geometry((1.0, 1.0))
    geometry.origin = (float("nan"), 0.0)
    with pytest.raises(GeometryError, match="origin must be finite"):
        geometry.validate()


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
