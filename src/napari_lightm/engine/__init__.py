"""Preprocessing, sliding-window inference, training, fine-tuning, checkpoints (no Qt).

Public API (imported lazily, so ``import napari_lightm.engine`` does not load torch)::

    from napari_lightm.engine import (Segmenter, FinetuneSample, finetune, iter_finetune,
        FinetuneRecipe, DEFAULT_RECIPE, new_segmenter, predict_unreviewed,
        iter_predict_unreviewed, interpolate_labels, train, iter_train, evaluate,
        Preprocessing, pick_device, CancelToken, Cancelled, Progress, CheckpointError,
        add_class, rename_class, set_class_colour)
"""

from __future__ import annotations

import importlib
from typing import Any

from napari_lightm.engine.callbacks import Cancelled, CancelToken, Progress, ProgressCallback

_LAZY = {
    "Segmenter": "segmenter",
    "normalize_roi": "inference",
    "FinetuneSample": "finetuning",
    "finetune": "finetuning",
    "iter_finetune": "finetuning",
    "FinetuneRecipe": "recipe",
    "DEFAULT_RECIPE": "recipe",
    "new_segmenter": "recipe",
    "predict_unreviewed": "unreviewed",
    "iter_predict_unreviewed": "unreviewed",
    "interpolate_labels": "interpolation",
    "train": "training",
    "iter_train": "training",
    "TrainConfig": "training",
    "evaluate": "metrics",
    "evaluate_folders": "metrics",
    "segmentation_metrics": "metrics",
    "Preprocessing": "preprocessing",
    "pick_device": "device",
    "CheckpointError": "checkpoint",
    "dice_ce_loss": "losses",
    "add_class": "classes",
    "rename_class": "classes",
    "set_class_colour": "classes",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f"napari_lightm.engine.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'napari_lightm.engine' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["CancelToken", "Cancelled", "Progress", "ProgressCallback", *_LAZY]
