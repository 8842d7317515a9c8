"""Metrics: Dice, IoU, spacing-aware HD95, folder evaluation to CSV and JSON."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from napari_lightm.engine.metrics import (
    METRICS,
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
    assert m["square"]["dice"] == 1.0 and set(m["square"]) == set(METRICS)
    with pytest.raises(EvaluationError, match="shape"):
        segmentation_metrics(pred[:5], gt, ["background", "square"])


def test_volumes_in_ml_of_the_prediction_and_the_truth():
    gt = np.zeros((4, 10, 10), np.uint8)
    gt[1:3, 2:7, 2:7] = 1  # 50 voxels
    pred = gt.copy()
    pred[0, 0, 0] = 1  # 51
    gt[0, 0, 0] = 255  # ignored voxels count in no volume of the truth
    gt[3, 9, 9] = 255
    m = segmentation_metrics(pred, gt, ["background", "liver"], spacing=(2.0, 0.5, 0.5))
    assert m["liver"]["volume_ml"] == pytest.approx(51 * 0.5 / 1000)  # 0.5 mm^3 voxels
    assert m["liver"]["true_volume_ml"] == pytest.approx(50 * 0.5 / 1000)
    assert math.isnan(segmentation_metrics(pred, gt, ["background", "liver"])["liver"]["volume_ml"])


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
    assert list(rows[0]) == ["case", "class", *METRICS]
    assert json.loads((tmp_path / "m.json").read_text())["class_names"] == ["background", "sq"]
    with pytest.raises(EvaluationError, match="no file names in common"):
        evaluate_folders(tmp_path / "pred", tmp_path)


def _pair(tmp_path, pred_geometry, gt_geometry=None, pred=None, gt=None):
    from napari_lightm.io import Geometry, write_labels

    p0, g0 = squares()
    gt_geometry = gt_geometry or Geometry(spacing=(0.5, 0.5), origin=(10.0, 20.0))
    (tmp_path / "pred").mkdir(exist_ok=True)
    (tmp_path / "gt").mkdir(exist_ok=True)
    write_labels(tmp_path / "pred" / "c0.nii.gz", p0 if pred is None else pred, pred_geometry)
    write_labels(tmp_path / "gt" / "c0.nrrd", g0 if gt is None else gt, gt_geometry)
    return tmp_path / "pred", tmp_path / "gt"


@pytest.mark.parametrize(
    "geometry, what",
    [
        ({"spacing": (1.0, 1.0), "origin": (10.0, 20.0)}, "spacing"),  # 2x spacing
        ({"spacing": (0.5, 0.5), "origin": (12.0, 20.0)}, "origin"),  # shifted 4 voxels
        ({"spacing": (0.5, 0.5), "origin": (10.0, 20.0), "direction": (-1.0, 0, 0, 1.0)},
         "direction"),  # flipped
    ],
)
def test_a_prediction_on_another_grid_is_refused(tmp_path, geometry, what):
    """The same voxels on another grid used to score Dice 1.0; nothing is resampled."""
    from napari_lightm.io import Geometry

    pred, gt = _pair(tmp_path, Geometry(**geometry))
    with pytest.raises(EvaluationError, match=f"case c0: .*different grids \\({what} ") as info:
        evaluate_folders(pred, gt, ["background", "sq"])
    assert len(str(info.value).splitlines()) == 1


def test_the_same_grid_within_file_precision_is_accepted(tmp_path):
    from napari_lightm.io import Geometry

    pred, gt = _pair(tmp_path, Geometry(spacing=(0.5 + 1e-7, 0.5), origin=(10.0 + 1e-6, 20.0)))
    result = evaluate_folders(pred, gt, ["background", "sq"])
    assert result["mean"]["sq"]["dice"] == 1.0


@pytest.mark.parametrize("side", ["pred", "gt"])
def test_labels_beyond_the_named_classes_are_an_error_not_dropped(tmp_path, side):
    from napari_lightm.io import Geometry

    p0, g0 = squares()
    extra = g0.copy()
    extra[0:2, 0:2] = 2
    geo = Geometry(spacing=(0.5, 0.5), origin=(10.0, 20.0))
    arrays = {"pred": extra, "gt": g0} if side == "pred" else {"pred": p0, "gt": extra}
    pred, gt = _pair(tmp_path, geo, geo, **arrays)
    what = "prediction" if side == "pred" else "ground truth"
    with pytest.raises(EvaluationError, match=f"case c0: {what} has label 2 but only 2 classes"):
        evaluate_folders(pred, gt, ["background", "sq"])
    assert set(evaluate_folders(pred, gt)["mean"]) == {"class 1", "class 2"}  # names default
    with pytest.raises(EvaluationError, match="has label 2"):
        segmentation_metrics(arrays["pred"], arrays["gt"], ["background", "sq"])


def test_single_files_and_bad_paths(tmp_path):
    from napari_lightm.io import Geometry

    geo = Geometry(spacing=(0.5, 0.5), origin=(10.0, 20.0))
    pred, gt = _pair(tmp_path, geo, geo)
    result = evaluate_folders(pred / "c0.nii.gz", gt / "c0.nrrd", ["background", "sq"])
    assert [r["case"] for r in result["cases"]] == ["c0"]
    assert result["cases"][0]["metrics"]["sq"]["dice"] == 1.0
    with pytest.raises(EvaluationError, match="give two folders or two files"):
        evaluate_folders(pred / "c0.nii.gz", gt)
    with pytest.raises(EvaluationError, match="not found: .*missing"):
        evaluate_folders(tmp_path / "missing", gt)
    from napari_lightm.io import write_labels

    write_labels(pred / "c0.png", squares()[0])
    with pytest.raises(EvaluationError, match="two files for case c0"):
        evaluate_folders(pred, gt)


def test_pictures_without_geometry_are_compared_by_shape(tmp_path):
    from napari_lightm.io import write_labels

    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    pred, gt = squares(shift=5)
    write_labels(tmp_path / "pred" / "c0.png", pred)
    write_labels(tmp_path / "gt" / "c0.png", gt)
    result = evaluate_folders(tmp_path / "pred", tmp_path / "gt", ["background", "sq"])
    assert result["mean"]["sq"]["dice"] == pytest.approx(0.5)
    write_labels(tmp_path / "gt" / "c0.png", gt[:, :15])
    with pytest.raises(EvaluationError, match="shape"):
        evaluate_folders(tmp_path / "pred", tmp_path / "gt", ["background", "sq"])


def test_hd95_prints_no_library_warnings():
    import warnings

    from napari_lightm.engine.metrics import hd95

    gt = np.zeros((20, 20), np.uint8)
    gt[5:15, 5:15] = 1
    pred = np.roll(gt, 2, axis=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert hd95(pred, gt, 1, spacing=(1.0, 1.0)) == pytest.approx(2.0)
    assert not caught, [str(w.message) for w in caught]
