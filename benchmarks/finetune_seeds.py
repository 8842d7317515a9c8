"""How reliably does "Fine-tune" teach a never-trained model from a few reviewed slices?

The widget's first loop on the CT phantom (generated data only): a new tiny 2D model,
3 reviewed slices of a (16, 64, 64) volume, a short fine-tuning run through
:func:`napari_lightm.engine.finetune`, then the liver Dice of the *unreviewed* slices.
One training run says little (a few steps of a small model swing with the float rounding
of the machine), so this repeats it over seeds (model init and patch sampling) and
learning rates and reports each run, the mean and the worst.

    python benchmarks/finetune_seeds.py                       # 8 seeds at 3e-3, ~2 min on 2 cores
    python benchmarks/finetune_seeds.py --lrs 3e-4,1e-3,3e-3,1e-2 --seeds 8
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REVIEWED = (3, 8, 13)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--lrs", default="3e-3", help="comma-separated learning rates")
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args(argv)

    import torch

    from napari_lightm.engine import FinetuneSample, Segmenter, finetune
    from napari_lightm.engine.metrics import dice_iou
    from napari_lightm.io.phantoms import CT_CLASSES, ct_phantom

    image, truth, geometry = ct_phantom(seed=0, shape=(16, 64, 64))
    reviewed = np.zeros(image.shape, bool)
    reviewed[list(REVIEWED)] = True
    sample = FinetuneSample(image, truth, reviewed, geometry)
    rows = []
    t0 = time.time()
    for lr in (float(v) for v in args.lrs.split(",")):
        scores = []
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            seg = Segmenter.new(
                2, list(CT_CLASSES), "CT", device="cpu", init_filters=8, patch_size=(64, 64)
            )
            tuned = finetune(seg, [sample], max_steps=args.steps, lr=lr, seed=seed)
            pred = tuned.predict(image, geometry)
            scores.append(dice_iou(pred, truth, 1, valid=~reviewed)[0])  # liver, unreviewed
            print(f"lr {lr:g} seed {seed}: {scores[-1]:.3f} ({time.time() - t0:.0f} s)",
                  flush=True)
        rows.append([lr, " ".join(f"{s:.2f}" for s in scores), float(np.mean(scores)),
                     float(np.min(scores))])
    notes = (
        f"CT phantom (16, 64, 64), new 2D model (init_filters 8, patch 64^2), "
        f"{len(REVIEWED)} reviewed slices {list(REVIEWED)}, {args.steps} steps of "
        f"engine.finetune (batch 2, augmentation on); liver Dice of the 13 unreviewed "
        f"slices; seed = model init and patch sampling. {time.time() - t0:.0f} s."
    )
    if args.no_record:
        print(rows, notes)
    else:
        from benchmarks._results import load_note, record

        record(
            "Fine-tuning a new model on 3 reviewed slices, over seeds (CT phantom)",
            ["lr", "liver Dice per seed", "mean", "worst"],
            rows,
            notes + " " + load_note(),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
