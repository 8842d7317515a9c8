"""``lightm evaluate``: per-class Dice, IoU, HD95 of predicted against true labels."""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_lightm.cli._common import CLIError, check_writable


def cmd_evaluate(args: argparse.Namespace) -> int:
    from napari_lightm.engine.metrics import evaluate_folders

    names = None
    if args.model:
        from napari_lightm.engine.checkpoint import load_checkpoint
        from napari_lightm.engine.metadata import checked_metadata
        from napari_lightm.engine.zoo import resolve_model

        _, meta, file = load_checkpoint(resolve_model(args.model))
        names = checked_metadata(meta, file)[1]
    elif args.classes:
        names = [n.strip() for n in args.classes.split(",")]
        if len(names) < 2 or not all(names) or len(set(names)) != len(names):
            raise CLIError(
                f"--classes needs at least two distinct, non-empty names (background first), "
                f"got {args.classes!r}"
            )
    out = Path(args.out)
    csv_path, json_path = out.with_suffix(".csv"), out.with_suffix(".json")
    check_writable(out.parent)
    try:
        result = evaluate_folders(args.pred, args.gt, names, out_csv=csv_path, out_json=json_path)
    except OSError as err:
        raise CLIError(f"cannot write {csv_path} / {json_path}: {err.strerror or err}") from None
    print(f"{len(result['cases'])} cases; mean per class:")
    for name, m in result["mean"].items():
        print(f"  {name}: Dice {m['dice']:.4f}  IoU {m['iou']:.4f}  HD95 {m['hd95']:.2f}")
    for key, what in (("gt", "ground-truth files without a prediction"),
                      ("pred", "predictions without a ground truth")):
        if result["unmatched"][key]:
            print(f"not evaluated, {what}: {', '.join(result['unmatched'][key])}")
    print(f"written {csv_path} and {json_path}")
    return 0


def add_parser(sub, common) -> None:
    p = sub.add_parser(
        "evaluate",
        help="per-class Dice, IoU, HD95 of predicted vs true labels",
        description="Score predictions against ground truth (two files, or two folders "
        "paired by case name). Each prediction must lie on its truth's grid; nothing is "
        "resampled. Writes STEM.csv and STEM.json.",
    )
    p.add_argument("pred", help="folder of predicted labels (or one labels file)")
    p.add_argument("gt", help="folder of ground-truth labels, same names (or one labels file)")
    p.add_argument("--out", default="metrics", help="output stem: writes STEM.csv and STEM.json")
    p.add_argument("--classes", default=None,
                   help="comma-separated class names, background first; default: class 1, 2, "
                   "... up to the highest label")
    p.add_argument("--model", default=None,
                   help="take the class names from this checkpoint or pretrained model")
    p.set_defaults(func=cmd_evaluate)
