"""npe2 sample data: the generated chest X-ray and abdominal CT phantoms with ground truth."""

from __future__ import annotations

from typing import Any

LayerData = tuple[Any, dict[str, Any], str]


def _layers(
    name: str, image: Any, labels: Any, geometry: Any, classes: list[str]
) -> list[LayerData]:
    """Image and its ground-truth Labels layer, both placed by ``geometry``."""
    image_kwargs = geometry.layer_kwargs()
    image_kwargs["name"] = name
    image_kwargs["metadata"]["class_names"] = list(classes)
    labels_kwargs = geometry.layer_kwargs()
    labels_kwargs["name"] = f"{name} ground truth"
    labels_kwargs["metadata"]["class_names"] = list(classes)
    labels_kwargs["opacity"] = 0.4
    if geometry.intensity_unit == "HU":
        image_kwargs["contrast_limits"] = (-160.0, 240.0)
    return [(image, image_kwargs, "image"), (labels, labels_kwargs, "labels")]


def xray_sample() -> list[LayerData]:
    """Chest X-ray phantom (512 x 512) and its lungs/heart labels."""
    from napari_lightm.io.phantoms import XRAY_CLASSES, xray_phantom

    return _layers("xray phantom", *xray_phantom(seed=0), XRAY_CLASSES)


def ct_sample() -> list[LayerData]:
    """Abdominal CT phantom (48 x 160 x 160, HU) and its liver/spine labels."""
    from napari_lightm.io.phantoms import CT_CLASSES, ct_phantom

    return _layers("ct phantom", *ct_phantom(seed=0), CT_CLASSES)
