"""Accuracy benchmark: LightM-UNet (light config) on JSRT lungs, fold 1 -> fold 2.

Data: ``../shared/data/jsrt/jsrt_256.npz`` (see its README; read at run time, never
copied). Fold 1 = odd case numbers (training; 10 % of it held out for checkpoint
selection), fold 2 = even case numbers (test, never used for tuning). Classes:
background, right lung, left lung (the heart mask is not a target). Pixel spacing
1.4 mm (2048 px at 0.175 mm, downsampled 8x), used for HD95.

    python benchmarks/jsrt.py                 # GPU defaults (fits ~6-7 min on an H100)
    python benchmarks/jsrt.py --smoke         # CPU smoke run: a few steps, 8 test cases
    python benchmarks/jsrt.py --steps 2000 --batch-size 16 --device cuda

GPU default: 1200 steps x batch 16 (the light config trains at ~5 steps/s at batch 16
on an H200 with the triton scan; 1200 steps leave room for data loading and the
evaluation on an H100 within ~6-7 minutes).

Prints per-lung Dice / HD95 and the mean lung Dice on fold 2, and records them through
``benchmarks/_results.py:record`` (a JSON line in the ignored ``benchmarks/results/``; the
current table is in ``docs/benchmarks.md``).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # benchmarks._results when run as a script
DEFAULT_DATA = REPO.parent / "shared" / "data" / "jsrt" / "jsrt_256.npz"
CLASSES = ["background", "right lung", "left lung"]
SPACING = (1.4, 1.4)


def case_number(name: str) -> int:
    m = re.search(r"(\d+)$", str(name))
    if not m:
        raise ValueError(f"JSRT case name without a number: {name}")
    return int(m.group(1))


def load_folds(path: Path) -> tuple[list, list]:
    """``(fold1, fold2)`` lists of ``(id, image float32 [256, 256], lung uint8)``."""
    if not path.is_file():
        raise SystemExit(f"JSRT data not found at {path} (see --data)")
    d = np.load(path)
    folds: tuple[list, list] = ([], [])
    for i, name in enumerate(d["ids"]):
        item = (str(name), d["image"][i].astype(np.float32), d["lung"][i].astype(np.uint8))
        folds[case_number(name) % 2 == 0].append(item)
    return folds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--steps", type=int, default=None, help="training steps (GPU 1200, smoke 10)")
    p.add_argument("--batch-size", type=int, default=None, help="GPU 16, smoke 2")
    p.add_argument("--lr", type=float, default=None, help="default: the engine's DEFAULT_LR")
    p.add_argument("--config", default="light", choices=("light", "repo"))
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="CPU smoke run (few steps, 8 test cases)")
    p.add_argument("--test-cases", type=int, default=None, help="limit fold 2 (default: all)")
    p.add_argument("--out", type=Path, default=None, help="checkpoint folder (default: temp)")
    p.add_argument("--no-record", action="store_true", help="print only, do not record the result")
    args = p.parse_args(argv)

    from napari_lightm.engine import pick_device
    from napari_lightm.engine.data import Case, Dataset
    from napari_lightm.engine.metrics import segmentation_metrics
    from napari_lightm.engine.training import DEFAULT_LR, train
    from napari_lightm.io import Geometry

    steps = args.steps or (10 if args.smoke else 1200)
    batch = args.batch_size or (2 if args.smoke else 16)
    lr = args.lr or DEFAULT_LR
    device = pick_device(args.device)
    t_start = time.time()
    fold1, fold2 = load_folds(args.data)
    if args.smoke or args.test_cases:
        fold2 = fold2[: args.test_cases or 8]
    cases = [Case(n, img[None], lab, SPACING) for n, img, lab in fold1]
    dataset = Dataset(cases, CLASSES, "XR")
    out = args.out or Path(tempfile.mkdtemp(prefix="jsrt_"))
    print(
        f"JSRT: {len(fold1)} training cases (fold 1), {len(fold2)} test cases (fold 2); "
        f"{steps} steps x batch {batch}, lr {lr}, {args.config}, {device}"
    )

    t0 = time.time()
    last = [0.0]

    def progress(pr) -> None:
        if pr.stage == "validate" or (
            pr.done % max(1, steps // 20) == 0 and pr.loss is not None and time.time() - last[0] > 1
        ):
            last[0] = time.time()
            print(
                f"  step {pr.done}/{pr.total} {pr.stage} loss={pr.loss} {pr.message} "
                f"({time.time() - t0:.0f} s)",
                flush=True,
            )

    result = train(
        dataset,
        out,
        spatial_dims=2,
        config=args.config,
        max_steps=steps,
        batch_size=batch,
        lr=lr,
        seed=args.seed,
        device=device,
        spacing=None,
        patch_size=(256, 256),
        val_fraction=0.1,
        val_every=max(1, steps // 5),
        progress=progress,
    )
    train_s = time.time() - t0
    from napari_lightm.engine import Segmenter

    seg = Segmenter.load(result.best_path or result.last_path, device=device)
    t1 = time.time()
    geometry = Geometry(spacing=SPACING, modality="XR")
    per_case = []
    for _, img, lab in fold2:
        pred = seg.predict(img, geometry, overlap=0.5)
        per_case.append(segmentation_metrics(pred, lab, CLASSES, spacing=SPACING))
    infer_s = time.time() - t1

    def mean(cls: str, metric: str) -> float:
        v = [m[cls][metric] for m in per_case if not math.isnan(m[cls][metric])]
        return float(np.mean(v)) if v else math.nan

    rows = [[cls, mean(cls, "dice"), mean(cls, "iou"), mean(cls, "hd95")] for cls in CLASSES[1:]]
    lung_dice = float(np.mean([r[1] for r in rows]))
    rows.append(
        [
            "mean lung",
            lung_dice,
            float(np.mean([r[2] for r in rows])),
            float(np.mean([r[3] for r in rows])),
        ]
    )
    notes = (
        f"Fold 1 ({len(fold1)} cases, 10 % held out for validation) -> fold 2 "
        f"({len(fold2)} cases). {args.config} config, {steps} steps x batch {batch}, lr {lr}, "
        f"seed {args.seed}, device {device}, scan backend {seg.backend}; best validation Dice "
        f"{result.best_dice:.4f}; training {train_s:.0f} s, inference {infer_s:.1f} s, total "
        f"{time.time() - t_start:.0f} s. HD95 in mm (1.4 mm pixels)."
        + (" SMOKE RUN (not a result)." if args.smoke else "")
        + " Goal: mean lung Dice >= 0.975."
    )
    if args.no_record:
        print(rows, notes)
    else:
        from benchmarks._results import record

        record(
            f"JSRT lungs, fold 1 -> fold 2 ({'smoke' if args.smoke else args.config})",
            ["class", "Dice", "IoU", "HD95 (mm)"],
            rows,
            notes,
        )
    print(f"mean lung Dice {lung_dice:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
