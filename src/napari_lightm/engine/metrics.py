"""Segmentation metrics per class: Dice, IoU and HD95 (spacing-aware, in mm).

Dice and IoU are counted directly on the label arrays; HD95 is MONAI's
:func:`monai.metrics.compute_hausdorff_distance` (95th percentile, symmetric, Euclidean,
with the voxel spacing). Conventions for empty structures: both empty -> Dice = IoU = 1,
HD95 = 0; one empty -> Dice = IoU = 0 and HD95 = ``nan`` (undefined; means skip it,
JSON writes ``null``). Ground-truth voxels labelled 255 (ignore) are left out.

Nothing is resampled: a prediction must lie on its ground truth's grid (shape, spacing,
origin, direction within :data:`SPACING_RTOL` / :data:`ORIGIN_TOL` /
:data:`DIRECTION_ATOL`; files without physical geometry, such as PNG, are compared by
shape), and every label value must name a class (255 in the ground truth = ignore); else
:class:`EvaluationError` names the case.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

IGNORE = 255
SPACING_RTOL = 1e-4  # relative difference of voxel sizes
ORIGIN_TOL = 1e-3  # origin difference, in voxels (of the smallest spacing)
DIRECTION_ATOL = 1e-4  # direction cosines


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
    with warnings.catch_warnings():
        # MONAI >= 1.5 warns about an argument its own helper passes to itself
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"monai\.")
        d = compute_hausdorff_distance(
            p_t, g_t, include_background=True, percentile=95, spacing=sp
        )
    return float(d.reshape(-1)[0])


def class_volumes_ml(
    labels: np.ndarray,
    n_classes: int,
    spacing: Sequence[float] | None,
    where: np.ndarray | None = None,
) -> np.ndarray:
    """float64 ``[n_classes]``: the volume (ml) of each label value ``0..n_classes-1`` in
    3D ``labels`` of voxel size ``spacing`` (mm), counting only ``where`` when given;
    NaN without a spacing or for 2D labels (no volume). Other values are not counted."""
    if spacing is None or labels.ndim != 3:
        return np.full(n_classes, np.nan)
    values = labels[where] if where is not None else labels.reshape(-1)
    values = values[(values >= 0) & (values < n_classes)].astype(np.int64)
    counts = np.bincount(values, minlength=n_classes)[:n_classes].astype(np.float64)
    return counts * (math.prod(float(s) for s in spacing) / 1000.0)


#: per class, in the order of the CSV's columns
METRICS = ("dice", "iou", "hd95", "volume_ml", "true_volume_ml")


def segmentation_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    class_names: Sequence[str],
    spacing: Sequence[float] | None = None,
    with_hd95: bool = True,
) -> dict[str, dict[str, float]]:
    """``{class name: {"dice", "iou", "hd95", "volume_ml", "true_volume_ml"}}`` for every
    foreground class.

    Args:
        pred, gt: integer label arrays of one shape (gt 255 = ignore for Dice/IoU).
        class_names: index 0 = background (not reported).
        spacing: array-order voxel size (mm) for HD95 and the volumes (None = 1 per voxel
            for HD95). The volumes are NaN without a spacing and for 2D labels.
    """
    if pred.shape != gt.shape:
        raise EvaluationError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    check_labels(pred, gt, class_names)
    valid = gt != IGNORE
    pred_ml = class_volumes_ml(pred, len(class_names), spacing)
    gt_ml = class_volumes_ml(gt, len(class_names), spacing, where=valid)
    out = {}
    for k, name in enumerate(class_names):
        if k == 0:
            continue
        d, j = dice_iou(pred, gt, k, valid)
        row = {"dice": d, "iou": j}
        if with_hd95:
            row["hd95"] = hd95(pred, np.where(valid, gt, 0), k, spacing)
        row["volume_ml"] = float(pred_ml[k])
        row["true_volume_ml"] = float(gt_ml[k])
        out[name] = row
    return out


def check_labels(
    pred: np.ndarray, gt: np.ndarray, class_names: Sequence[str], case: str = ""
) -> None:
    """Raise :class:`EvaluationError` when a label value names no class (ground truth 255 =
    ignore is allowed), instead of leaving that structure out of the scores."""
    where = f"case {case}: " if case else ""
    n = len(class_names)
    for what, labels in (("prediction", pred), ("ground truth", gt)):
        values = labels[labels != IGNORE] if what == "ground truth" else labels
        if values.size == 0:
            continue
        low, top = int(values.min()), int(values.max())
        if low < 0 or top >= n:
            bad = low if low < 0 else top
            raise EvaluationError(
                f"{where}{what} has label {bad} but only {n} classes are named "
                f"({', '.join(class_names)})"
            )


def check_same_grid(case: str, pred: np.ndarray, pred_geo: Any, gt: np.ndarray, gt_geo: Any,
                    pred_path: Any = "prediction", gt_path: Any = "ground truth") -> None:
    """Raise :class:`EvaluationError` when a prediction is not on its ground truth's grid
    (shape; and spacing, origin, direction when both files carry a physical geometry)."""
    def fail(what: str, a: Any, b: Any) -> EvaluationError:
        return EvaluationError(
            f"case {case}: {Path(str(pred_path)).name} and {Path(str(gt_path)).name} are on "
            f"different grids ({what} {a} vs {b}); nothing is resampled"
        )

    if pred.shape != gt.shape:
        raise fail("shape", pred.shape, gt.shape)
    physical = [getattr(g, "units", "mm") != "pixel" for g in (pred_geo, gt_geo)]
    if not all(physical):
        return
    sp_p, sp_g = np.asarray(pred_geo.spacing, float), np.asarray(gt_geo.spacing, float)
    if sp_p.shape != sp_g.shape or not np.allclose(sp_p, sp_g, rtol=SPACING_RTOL, atol=0):
        raise fail("spacing", tuple(pred_geo.spacing), tuple(gt_geo.spacing))
    tol = ORIGIN_TOL * float(sp_g.min())
    if not np.allclose(pred_geo.origin, gt_geo.origin, rtol=0, atol=tol):
        raise fail("origin", tuple(pred_geo.origin), tuple(gt_geo.origin))
    if not np.allclose(pred_geo.direction, gt_geo.direction, rtol=0, atol=DIRECTION_ATOL):
        raise fail("direction", tuple(pred_geo.direction), tuple(gt_geo.direction))


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
        for metric in METRICS:
            v = [
                r["metrics"][name][metric]
                for r in rows
                if name in r["metrics"] and metric in r["metrics"][name]
            ]
            v = [x for x in v if not math.isnan(x)]
            out[name][metric] = float(np.mean(v)) if v else math.nan
    return out


def label_pairs(pred: str | Path, gt: str | Path) -> list[tuple[str, Path, Path]]:
    """``[(case, prediction file, ground-truth file)]`` for two folders (matched by file
    name, suffixes may differ) or two files; raises :class:`EvaluationError`."""
    from napari_lightm.engine.data import data_files, file_stem

    pred, gt = Path(pred), Path(gt)
    for p in (pred, gt):
        if not p.exists():
            raise EvaluationError(f"not found: {p}")
    if pred.is_file() and gt.is_file():
        return [(file_stem(gt), pred, gt)]
    if not (pred.is_dir() and gt.is_dir()):
        kind = {True: "a folder", False: "a file"}
        raise EvaluationError(
            f"give two folders or two files: {pred} is {kind[pred.is_dir()]}, "
            f"{gt} is {kind[gt.is_dir()]}"
        )
    by_case = []
    for folder in (pred, gt):
        cases: dict[str, Path] = {}
        for f in data_files(folder):
            if file_stem(f) in cases:
                raise EvaluationError(
                    f"{folder} holds two files for case {file_stem(f)}: "
                    f"{cases[file_stem(f)].name} and {f.name}"
                )
            cases[file_stem(f)] = f
        by_case.append(cases)
    common = sorted(set(by_case[0]) & set(by_case[1]))
    if not common:
        raise EvaluationError(f"no file names in common between {pred} and {gt}")
    return [(c, by_case[0][c], by_case[1][c]) for c in common]


def evaluate_folders(
    pred_dir: str | Path,
    gt_dir: str | Path,
    class_names: Sequence[str] | None = None,
    out_csv: str | Path | None = None,
    out_json: str | Path | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Compare label files: two folders (matched by file name, suffixes may differ) or a
    prediction file and its ground-truth file.

    Returns ``{"cases": [{"case", "metrics": {class: {dice, iou, hd95}}}], "mean": ...,
    "class_names": [...], "unmatched": {"pred": [...], "gt": [...]}}``; writes CSV (one
    row per case and class) and JSON atomically when asked. Spacing for HD95 comes from
    the ground truth file's geometry. Every pair is read and checked (same grid, labels
    within the classes) before anything is scored or written.
    """
    from napari_lightm.engine.data import data_files, file_stem, read_label_image

    pairs = []
    for case, pred_path, gt_path in label_pairs(pred_dir, gt_dir):
        pred, pred_geo = read_label_image(pred_path)
        gt, gt_geo = read_label_image(gt_path)
        check_same_grid(case, pred, pred_geo, gt, gt_geo, pred_path, gt_path)
        pairs.append((case, pred, gt, gt_geo))
    if class_names is None:
        top = max(max(int(p.max()), int(g[g != IGNORE].max(initial=0))) for _, p, g, _ in pairs)
        class_names = ["background", *[f"class {k}" for k in range(1, max(top, 1) + 1)]]
    class_names = list(class_names)
    for case, pred, gt, _ in pairs:
        check_labels(pred, gt, class_names, case)
    rows = []
    for i, (case, pred, gt, geometry) in enumerate(pairs):
        m = segmentation_metrics(pred, gt, class_names, spacing=geometry.scale)
        rows.append({"case": case, "metrics": m})
        if progress is not None:
            progress(i + 1, len(pairs))
    unmatched: dict[str, list[str]] = {"pred": [], "gt": []}
    if Path(pred_dir).is_dir():
        cases = {c for c, *_ in pairs}
        for key, folder in (("pred", pred_dir), ("gt", gt_dir)):
            unmatched[key] = sorted({file_stem(f) for f in data_files(Path(folder))} - cases)
    result = {
        "class_names": class_names,
        "cases": rows,
        "mean": summarize(rows, class_names),
        "unmatched": unmatched,
    }
    if out_json is not None:
        from napari_lightm.io.atomic import atomic_write_text

        atomic_write_text(out_json, json.dumps(_nan_to_none(result), indent=1))
    if out_csv is not None:
        from napari_lightm.io.atomic import atomic_write_text

        text = io.StringIO(newline="")
        w = csv.writer(text)
        w.writerow(["case", "class", *METRICS])
        for r in [*rows, {"case": "mean", "metrics": result["mean"]}]:
            for name, v in r["metrics"].items():
                w.writerow([r["case"], name, *(f"{v.get(k, math.nan):.6g}" for k in METRICS)])
        atomic_write_text(out_csv, text.getvalue())
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
    "check_labels",
    "check_same_grid",
    "dice_iou",
    "evaluate",
    "evaluate_folders",
    "hd95",
    "label_pairs",
    "mean_dice",
    "segmentation_metrics",
    "summarize",
]
