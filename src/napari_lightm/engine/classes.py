"""The classes of a model: add one, rename one, give one a display colour.

What the widget's class list edits, Qt-free, so the API does the same: the names and
colours are part of the model (saved in its checkpoint metadata, hence in sessions too)
and the Labels layers show them.

Adding a class grows the network's last 1x1 convolution by one output whose weights are
zero and whose bias is :data:`NEW_CLASS_BIAS`: until fine-tuning on voxels painted with
it, the new class never wins, so every prediction stays exactly what it was.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

#: logit of a freshly added class everywhere: far below any trained class's
NEW_CLASS_BIAS = -30.0
MAX_NAME = 64
_HEX = re.compile(r"^#[0-9a-fA-F]{6}$")


def check_class_name(name: Any, names: Sequence[str], index: int | None = None) -> str:
    """``name`` stripped, or ValueError: empty, too long, a control character, or the name
    of another class (case-insensitive; ``index`` is the class being renamed)."""
    if not isinstance(name, str):
        raise ValueError(f"a class name must be text, got {type(name).__name__}")
    name = name.strip()
    if not name:
        raise ValueError("a class name cannot be empty")
    if len(name) > MAX_NAME or any(ord(c) < 32 for c in name):
        raise ValueError(f"a class name must be one line of at most {MAX_NAME} characters")
    for k, other in enumerate(names):
        if k != index and other.casefold() == name.casefold():
            raise ValueError(f"class {k} is already called '{other}'")
    return name


def as_hex_colour(value: Any) -> str | None:
    """``"#rrggbb"`` from ``"#RRGGBB"`` or RGB(A) numbers in 0..1 (None stays None), or
    ValueError naming the value."""
    if value is None:
        return None
    if isinstance(value, str):
        if not _HEX.match(value.strip()):
            raise ValueError(f"colour must be '#rrggbb', got {value[:20]!r}")
        return value.strip().lower()
    try:
        rgb = [float(v) for v in list(value)[:3]]
    except (TypeError, ValueError):
        raise ValueError(f"colour must be '#rrggbb' or RGB in 0..1, got {value!r}") from None
    if len(rgb) != 3 or not all(0.0 <= v <= 1.0 for v in rgb):
        raise ValueError(f"colour must be '#rrggbb' or RGB in 0..1, got {value!r}")
    return "#" + "".join(f"{round(v * 255):02x}" for v in rgb)


def checked_colours(value: Any, n_classes: int) -> list[str | None]:
    """A model's ``class_colours`` (one per class, None = the viewer's default), or
    ValueError."""
    if value is None:
        return [None] * n_classes
    if not isinstance(value, list) or len(value) != n_classes:
        raise ValueError(f"class_colours must be a list of {n_classes} colours")
    return [as_hex_colour(v) for v in value]


def rename_class(seg: Any, index: int, name: str) -> None:
    """Call class ``index`` (not the background) ``name``; the labels keep their values."""
    if not 1 <= index < seg.n_classes:
        raise ValueError(f"class {index} does not exist (1..{seg.n_classes - 1} can be renamed)")
    seg.class_names[index] = check_class_name(name, seg.class_names, index)


def set_class_colour(seg: Any, index: int, colour: Any) -> None:
    """Show class ``index`` in ``colour`` (``"#rrggbb"``, RGB in 0..1, or None: default)."""
    if not 0 <= index < seg.n_classes:
        raise ValueError(f"class {index} does not exist (0..{seg.n_classes - 1})")
    seg.class_colours[index] = as_hex_colour(colour)


def add_class(seg: Any, name: str, colour: Any = None) -> int:
    """Add a class to the model (in place; see the module docstring); returns its index.
    Its voxels are learnt at the next fine-tune from what the user paints with it."""
    import torch

    from napari_lightm.model import cuda_fast

    name = check_class_name(name, seg.class_names)
    colour = as_hex_colour(colour)
    if seg.n_classes >= 65536:
        raise ValueError("a model has at most 65536 classes")
    model = seg.model
    pointwise = model.head[-1][-1]  # DWConv's 1x1 convolution: features -> class logits
    grown = type(pointwise)(
        pointwise.in_channels, pointwise.out_channels + 1, 1, bias=pointwise.bias is not None
    ).to(pointwise.weight.device, pointwise.weight.dtype)
    with torch.no_grad():
        grown.weight.zero_()
        grown.weight[: pointwise.out_channels] = pointwise.weight
        if grown.bias is not None:
            grown.bias.fill_(NEW_CLASS_BIAS)
            grown.bias[: pointwise.out_channels] = pointwise.bias
    model.head[-1][-1] = grown
    model.out_channels += 1
    cuda_fast.disable_fast_path(model)
    if grown.weight.device.type == "cuda":
        cuda_fast.enable_fast_path(model)
    seg.class_names.append(name)
    seg.class_colours.append(colour)
    return seg.n_classes - 1


__all__ = [
    "NEW_CLASS_BIAS",
    "add_class",
    "as_hex_colour",
    "check_class_name",
    "checked_colours",
    "rename_class",
    "set_class_colour",
]
