"""Segmentation metrics per class: Dice, IoU and HD95 (spacing-aware, in mm).

Dice and IoU are counted directly on the label arrays; HD95 is MONAI's
:func:`monai.metrics.compute_hausdorff_distance` (95th percentile, symmetric, Euclidean,
with the voxel spacing). Conventions for empty structures: both empty -> Dice = IoU = 1,
HD95 = 0; one empty -> Dice = IoU = 0 and HD95 = ``nan`` (undefined; means skip it,
JSON writes ``null``). Ground-truth voxels labelled 255 (ignore) are left out.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

IGNORE = 255


class EvaluationError(ValueError):
    """Predictions and ground truth that cannot be compared (one-line reason)."""


def dice_iou(
    pred: np.ndarray, gt: np.ndarray, k: int, valid: np.ndarray | None = None
) -> tuple[float, float]:
    """Dice and IoU of class ``k``; voxels outside ``valid`` are skipped."""
    p, g = pred == k, gt == k
    if valid is not None:
        p, g = p & valid, g & valid
    inter = int(np.count_nonzero(p & g))
    total = int(np.count_nonzero(p)) + int(np.count_nonzero(g))
    if total == 0:
        return 1.0, 1.0
    return 2 * inter / total, inter / (total - inter)


def hd95(pred: np.ndarray, gt: np.ndarray, k: int, spacing: Sequence[float] | None = None) -> float:
    """95th-percentile symmetric Hausdorff distance of class ``k`` (mm with ``spacing``).

    0 when both are empty; nan when only one is.
    """
    import torch
    from monai.metrics import compute_hausdorff_distance

    p, g = pred == k, gt == k
    if not p.any() and not g.any():
        return 0.0
    if not p.any() or not g.any():
        return math.nan
    p_t = torch.from_numpy(p)[None, None]
    g_t = torch.from_numpy(g)[None, None]
    sp = None if spacing is None else [float(s) for s in spacing]
    d = compute_hausdorff_distance(p_t, g_t, include_background=True, percentile=95, spacing=sp)
    return float(d.reshape(-1)[0])


def segmentation_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    class_names: Sequence[str],
    spacing: Sequence[float] | None = None,
    with_hd95: bool = True,
) -> dict[str, dict[str, float]]:
    """``{class name: {"dice", "iou", "hd95"}}`` for every foreground class.

    Args:
        pred, gt: integer label arrays of one shape (gt 255 = ignore for Dice/IoU).
        class_names: index 0 = background (not reported).
        spacing: array-order voxel size for HD95 (None = 1 per voxel).
    """
    if pred.shape != gt.shape:
        raise EvaluationError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    valid = gt != IGNORE
    out = {}
    for k, name in enumerate(class_names):
        if k == 0:
            continue
        d, j = dice_iou(pred, gt, k, valid)
        row = {"dice": d, "iou": j}
        if with_hd95:
            row["hd95"] = hd95(pred, np.where(valid, gt, 0), k, spacing)
        out[name] = row
    return out


def mean_dice(pred: np.ndarray, gt: np.ndarray, n_classes: int) -> float:
    """Mean foreground Dice (fast, no HD95): validation during training."""
    valid = gt != IGNORE
    return float(np.mean([dice_iou(pred, gt, k, valid)[0] for k in range(1, n_classes)]))


def evaluate(
    pred: np.ndarray,
    gt: np.ndarray,
    class_names: Sequence[str],
    spacing: Sequence[float] | None = None,
) -> dict[str, dict[str, float]]:
    """Per-class Dice, IoU and HD95 of one prediction (alias of :func:`segmentation_metrics`)."""
    return segmentation_metrics(pred, gt, class_names, spacing)


def summarize(
    rows: list[dict[str, Any]], class_names: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Mean of each metric per class over cases (nan skipped)."""
    out = {}
    for name in class_names[1:]:
        out[name] = {}
        for metric in ("dice", "iou", "hd95"):
            v = [
                r["metrics"][name][metric]
                for r in rows
                if name in r["metrics"] and metric in r["metrics"][name]
            ]
            v = [x for x in v if not math.isnan(x)]
            out[name][metric] = float(np.mean(v)) if v else math.nan
    return out


def evaluate_folders(
    pred_dir: str | Path,
    gt_dir: str | Path,
    class_names: Sequence[str] | None = None,
    out_csv: str | Path | None = None,
    out_json: str | Path | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Compare label files of two folders, matched by file name (suffixes may differ).

    Returns ``{"cases": [{"case", "metrics": {class: {dice, iou, hd95}}}], "mean": ...,
    "class_names": [...]}``; writes CSV (one row per case and class) and JSON when asked.
    Spacing for HD95 comes from the ground truth file's geometry.
    """
    from napari_lightm.engine.data import _files, _stem, read_labels
    from napari_lightm.io import read_image

    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for d in (pred_dir, gt_dir):
        if not d.is_dir():
            raise EvaluationError(f"folder not found: {d}")
    preds = {_stem(p): p for p in _files(pred_dir)}
    gts = {_stem(p): p for p in _files(gt_dir)}
    common = sorted(set(preds) & set(gts))
    if not common:
        raise EvaluationError(f"no file names in common between {pred_dir} and {gt_dir}")
    pairs = [(c, read_labels(preds[c]), read_labels(gts[c]), gts[c]) for c in common]
    if class_names is None:
        top = max(max(int(p.max()), int(g[g != IGNORE].max(initial=0))) for _, p, g, _ in pairs)
        class_names = ["background", *[f"class {k}" for k in range(1, max(top, 1) + 1)]]
    rows = []
    for i, (case, pred, gt, gt_path) in enumerate(pairs):
        _, geometry = read_image(gt_path)
        m = segmentation_metrics(pred, gt, class_names, spacing=geometry.scale)
        rows.append({"case": case, "metrics": m})
        if progress is not None:
            progress(i + 1, len(pairs))
    result = {"class_names": list(class_names), "cases": rows, "mean": summarize(rows, class_names)}
    if out_json is not None:
        Path(out_json).write_text(json.dumps(_nan_to_none(result), indent=1))
    if out_csv is not None:
        with open(out_csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["case", "class", "dice", "iou", "hd95"])
            for r in [*rows, {"case": "mean", "metrics": result["mean"]}]:
                for name, v in r["metrics"].items():
                    w.writerow([r["case"], name, *(f"{v[k]:.6g}" for k in ("dice", "iou", "hd95"))])
    return result


def _nan_to_none(value: Any) -> Any:
    """JSON has no NaN: nested nan -> None."""
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


__all__ = [
    "EvaluationError",
    "dice_iou",
    "evaluate",
    "evaluate_folders",
    "hd95",
    "mean_dice",
    "segmentation_metrics",
    "summarize",
]
