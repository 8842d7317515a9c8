"""What a checkpoint's metadata must hold before a model is built from it.

:func:`checked_metadata` validates the JSON in a checkpoint's header (architecture, class
names, patch, spacing, preprocessing, version, history) within ranges that keep a
tampered file from making the model or the sliding-window buffers allocate without bound;
:func:`state_mismatch` compares its weights' names and shapes with the model's.
``Segmenter.load`` runs both before building anything.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

import numpy as np

from napari_lightm.engine.checkpoint import CheckpointError, short_repr
from napari_lightm.engine.preprocessing import MAX_SPACING, MIN_SPACING

# Ranges a checkpoint's metadata must stay in: beyond them a tampered file could make the
# model or the sliding-window buffers allocate without bound before anything else fails.
MAX_INIT_FILTERS = 1024
MAX_STAGES = 6
MAX_BLOCKS = 16
MAX_IN_CHANNELS = 64
MAX_CLASSES = 65536  # labels are uint16 at most
MAX_PATCH_VOXELS = 2**24  # e.g. 256^3
MAX_PATCH_SIDE = 4096


def checked_metadata(meta: Any, file: Any = "checkpoint") -> tuple[dict, list[str], list[int]]:
    """Validate checkpoint metadata; returns the LightMUNet arguments, class names and patch.

    Raises :class:`CheckpointError` naming ``file`` and the first unusable field.
    """

    def fail(what: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {file} has unusable metadata: {what}")


    def integer(value: Any, name: str, lo: int, hi: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise fail(f"{name} must be an integer in {lo}..{hi}, got {short_repr(value)}")
        return value

    def int_list(value: Any, name: str, lo: int, hi: int, length: range) -> list[int]:
        if not isinstance(value, list) or len(value) not in length:
            raise fail(
                f"{name} must be a list of {length.start}..{length.stop - 1} integers, "
                f"got {short_repr(value)}"
            )
        return [integer(v, name, lo, hi) for v in value]

    if not isinstance(meta, dict):
        raise fail(f"expected a JSON object, got {type(meta).__name__}")
    for key in ("architecture", "class_names", "preprocessing", "patch_size"):
        if key not in meta:
            raise fail(f"'{key}' is missing")
    arch = meta["architecture"]
    if not isinstance(arch, dict):
        raise fail(f"'architecture' must be an object, got {type(arch).__name__}")
    for key in ("spatial_dims", "in_channels", "out_channels", "init_filters", "blocks_down",
                "blocks_up"):
        if key not in arch:
            raise fail(f"architecture '{key}' is missing")
    dims = integer(arch["spatial_dims"], "spatial_dims", 2, 3)
    filters = integer(arch["init_filters"], "init_filters", 8, MAX_INIT_FILTERS)
    if filters % 8:
        raise fail(f"init_filters must be a multiple of 8, got {filters}")
    down = int_list(arch["blocks_down"], "blocks_down", 0, MAX_BLOCKS, range(1, MAX_STAGES + 1))
    up = int_list(arch["blocks_up"], "blocks_up", 0, MAX_BLOCKS, range(len(down) - 1, len(down)))
    kwargs = {
        "spatial_dims": dims,
        "in_channels": integer(arch["in_channels"], "in_channels", 1, MAX_IN_CHANNELS),
        "out_channels": integer(arch["out_channels"], "out_channels", 2, MAX_CLASSES),
        "init_filters": filters,
        "blocks_down": down,
        "blocks_up": up,
    }
    names = meta["class_names"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise fail(f"class_names must be a list of names, got {short_repr(names)}")
    if len(names) != kwargs["out_channels"] or len(set(names)) != len(names):
        raise fail(
            f"{len(names)} class names ({len(set(names))} distinct) for a model with "
            f"{kwargs['out_channels']} outputs"
        )
    divisor = max(8, 2 ** (len(down) - 1))
    patch = int_list(meta["patch_size"], "patch_size", 1, MAX_PATCH_SIDE, range(dims, dims + 1))
    if any(p % divisor for p in patch) or int(np.prod(patch)) > MAX_PATCH_VOXELS:
        raise fail(
            f"patch_size {patch} must be multiples of {divisor} with at most "
            f"{MAX_PATCH_VOXELS} voxels"
        )
    pre = meta["preprocessing"]
    if not isinstance(pre, dict):
        raise fail(f"'preprocessing' must be an object, got {type(pre).__name__}")
    for key, value in (("spacing", meta.get("spacing")), ("preprocessing spacing",
                                                          pre.get("spacing"))):
        if value is None:
            continue
        if (
            not isinstance(value, list)
            or len(value) != dims
            or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool)
                and MIN_SPACING <= v <= MAX_SPACING
                for v in value
            )
        ):
            raise fail(
                f"{key} must be {dims} numbers in {MIN_SPACING}..{MAX_SPACING} mm, "
                f"got {short_repr(value)}"
            )
    if pre.get("in_channels", 1) != kwargs["in_channels"]:
        raise fail(
            f"preprocessing has {short_repr(pre.get('in_channels'))} input channels, the model "
            f"{kwargs['in_channels']}"
        )
    version = meta.get("version", 0)
    integer(version, "version", 0, 2**31)
    history = meta.get("history", [])
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise fail("history must be a list of objects")
    return kwargs, list(names), patch


def state_mismatch(expected: dict, got: dict) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, wrong-shape) keys of a state dict against the expected one."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    wrong = [k for k in expected if k in got and tuple(expected[k].shape) != tuple(got[k].shape)]
    return missing, unexpected, wrong


def now() -> str:
    """UTC time to the second, ISO 8601: what checkpoints record as saved or trained."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def checked_weights(state: dict, meta: dict, file: Any = "checkpoint") -> tuple[dict, list, tuple]:
    """:func:`checked_metadata`, then the weights' names and shapes compared with the
    architecture the metadata describes (built on the meta device: nothing allocated), so
    tampered metadata never allocates more than the weights in the file. Raises
    :class:`CheckpointError` naming ``file``."""
    import torch

    from napari_lightm.model import LightMUNet

    kwargs, names, patch = checked_metadata(meta, file)
    try:
        with torch.device("meta"):  # shapes only: nothing allocated
            expected = LightMUNet(**kwargs).state_dict()
    except (TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"checkpoint {file} has unusable metadata: {err}") from err
    missing, unexpected, wrong = state_mismatch(expected, state)
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"weights in {file} do not fit the architecture its metadata describes: "
            f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} of another "
            f"shape (e.g. {(missing + unexpected + wrong)[:2]})"
        )
    return kwargs, names, patch


__all__ = ["checked_metadata", "checked_weights", "now", "state_mismatch"]
