"""Metrics: Dice, IoU, spacing-aware HD95, folder evaluation to CSV and JSON."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from napari_lightm.engine.metrics import (
    EvaluationError,
    dice_iou,
    evaluate_folders,
    hd95,
    segmentation_metrics,
)


def squares(shift: int = 0) -> tuple[np.ndarray, np.ndarray]:
    gt = np.zeros((20, 20), np.uint8)
    gt[5:15, 5:15] = 1
    pred = np.zeros_like(gt)
    pred[5:15, 5 + shift : 15 + shift] = 1
    return pred, gt


def test_dice_and_iou_known_values():
    pred, gt = squares(shift=5)  # half of each square overlaps
    assert dice_iou(pred, gt, 1) == pytest.approx((0.5, 1 / 3))
    assert dice_iou(gt, gt, 1) == (1.0, 1.0)
    assert dice_iou(gt * 0, gt * 0, 1) == (1.0, 1.0)  # both empty


def test_hd95_is_in_millimetres():
    pred, gt = squares(shift=2)
    assert hd95(pred, gt, 1) == pytest.approx(2.0)
    assert hd95(pred, gt, 1, spacing=(1.0, 0.5)) == pytest.approx(1.0)  # x spacing 0.5 mm
    assert hd95(gt, gt, 1) == 0.0
    assert math.isnan(hd95(gt * 0, gt, 1))


def test_ignore_label_and_per_class_rows():
    pred, gt = squares()
    gt2 = gt.copy()
    gt2[0:3, 0:3] = 255  # ignored: a wrong prediction there does not count
    pred[0:3, 0:3] = 1
    m = segmentation_metrics(pred, gt2, ["background", "square"])
    assert m["square"]["dice"] == 1.0 and set(m["square"]) == {"dice", "iou", "hd95"}
    with pytest.raises(EvaluationError, match="shape"):
        segmentation_metrics(pred[:5], gt, ["background", "square"])


def test_evaluate_folders_writes_csv_and_json(tmp_path):
    from napari_lightm.io import Geometry, write_labels

    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    for i, shift in enumerate((0, 2)):
        pred, gt = squares(shift)
        write_labels(tmp_path / "pred" / f"c{i}.nii.gz", pred, Geometry(spacing=(0.5, 0.5)))
        write_labels(tmp_path / "gt" / f"c{i}.nrrd", gt, Geometry(spacing=(0.5, 0.5)))
    result = evaluate_folders(
        tmp_path / "pred",
        tmp_path / "gt",
        ["background", "sq"],
        out_csv=tmp_path / "m.csv",
        out_json=tmp_path / "m.json",
    )
    assert [r["case"] for r in result["cases"]] == ["c0", "c1"]
    assert result["cases"][1]["metrics"]["sq"]["hd95"] == pytest.approx(1.0)  # 2 px x 0.5 mm
    assert result["mean"]["sq"]["dice"] == pytest.approx((1.0 + 0.8) / 2)
    rows = list(csv.DictReader(open(tmp_path / "m.csv")))
    assert [r["case"] for r in rows] == ["c0", "c1", "mean"]
    assert json.loads((tmp_path / "m.json").read_text())["class_names"] == ["background", "sq"]
    with pytest.raises(EvaluationError, match="no file names in common"):
        evaluate_folders(tmp_path / "pred", tmp_path)
