"""Segment descriptions of a DICOM-SEG: names by class index, SNOMED CT codes for a few
organ names (else "Tissue"), display colours; and the same read back from a SEG."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_lightm.io._base import LabelWriteError

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


def segment_codes(name: str) -> tuple[Any, Any]:
    """(category, type) codes of a class: an organ by its last word, else Tissue."""
    from pydicom.sr.codedict import codes

    words = name.lower().replace("_", " ").split()
    last = words[-1] if words else ""
    keyword = ORGAN_CODES.get(last) or ORGAN_CODES.get(last.rstrip("s"))
    if keyword is not None:
        return codes.SCT.AnatomicalStructure, getattr(codes.SCT, keyword)
    return codes.SCT.Tissue, codes.SCT.Tissue


def segment_colour(colours: Any, k: int) -> tuple[float, float, float]:
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


def segment_descriptions(names: list[str], colours: Any, algorithm_type: str) -> list[Any]:
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
        category, kind = segment_codes(name)
        rgb = segment_colour(colours, k)
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


def segment_class_names(
    labels: np.ndarray, class_names: Sequence[str] | None, where: Path
) -> list[str]:
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
