"""Which fine-tuning recipe? A small experiment on the CT phantom (generated data only).

A 2D light model is first trained on one phantom (all slices, stands in for a trained
model). A user then reviews 4 slices of phantom A and fine-tunes, then 4 slices of
phantom B and fine-tunes again, either replaying all reviewed samples (A and B) or only
the newest (B). Reported: mean foreground Dice on the *unreviewed* slices of A and B and
on an unseen phantom, for several learning rates.

    python benchmarks/finetune_recipe.py --device cuda          # ~2 min on a GPU
    python benchmarks/finetune_recipe.py --device cpu --small   # CPU, tiny shapes
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=60, help="steps per fine-tuning round")
    p.add_argument("--pretrain", type=int, default=300)
    p.add_argument("--lrs", default="1e-4,3e-4,1e-3")
    p.add_argument("--small", action="store_true", help="tiny shapes for a CPU check")
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args(argv)

    import torch

    from napari_lightm.engine import FinetuneSample, Segmenter, finetune
    from napari_lightm.engine.metrics import mean_dice
    from napari_lightm.io.phantoms import CT_CLASSES, ct_phantom

    shape = (16, 64, 64) if args.small else (48, 160, 160)
    spacing = (2.5, 2.0, 2.0) if args.small else (2.5, 0.8, 0.8)
    base_img, base_lab, base_geo = ct_phantom(seed=1, shape=shape, spacing=spacing)
    phantoms = {
        k: ct_phantom(seed=s, shape=shape, spacing=spacing)
        for k, s in (("A", 2), ("B", 3), ("unseen", 4))
    }
    reviewed = {}
    for k in ("A", "B"):
        mask = np.zeros(shape, bool)
        mask[np.linspace(shape[0] // 5, 4 * shape[0] // 5, 4).astype(int)] = True
        reviewed[k] = mask

    def sample(k: str) -> FinetuneSample:
        img, lab, geo = phantoms[k]
        return FinetuneSample(img, lab, reviewed[k], geo)

    def score(seg: Segmenter) -> list[float]:
        out = []
        for k in ("A", "B", "unseen"):
            img, lab, geo = phantoms[k]
            pred = seg.predict(img, geo)
            keep = ~reviewed[k] if k in reviewed else np.ones(shape, bool)
            out.append(mean_dice(pred[keep], lab[keep], len(CT_CLASSES)))
        return out

    torch.manual_seed(0)
    t0 = time.time()
    seg = Segmenter.new(
        2,
        CT_CLASSES,
        "CT",
        device=args.device,
        **({"init_filters": 8, "patch_size": (64, 64)} if args.small else {}),
    )
    base = finetune(
        seg,
        [FinetuneSample(base_img, base_lab, np.ones(shape, bool), base_geo)],
        max_steps=args.pretrain,
        lr=1e-3,
    )
    rows = [["pretrained only", "-", *score(base)]]
    for lr in (float(v) for v in args.lrs.split(",")):
        after_a = finetune(base, [sample("A")], max_steps=args.steps, lr=lr)
        for recipe, samples in (
            ("replay all", [sample("A"), sample("B")]),
            ("newest only", [sample("B")]),
        ):
            if recipe == "newest only" and lr != 3e-4:
                continue  # the replay question is asked at one LR
            after_b = finetune(after_a, samples, max_steps=args.steps, lr=lr)
            rows.append([recipe, lr, *score(after_b)])
            print(rows[-1], f"({time.time() - t0:.0f} s)", flush=True)
    notes = (
        f"CT phantom {shape}, 2D {'tiny' if args.small else 'light'} model pretrained "
        f"{args.pretrain} steps on another phantom; 2 rounds x {args.steps} steps, batch 2, "
        "4 reviewed slices per image; Dice = mean foreground Dice on unreviewed slices "
        f"(A, B) and on an unseen phantom. {time.time() - t0:.0f} s."
    )
    if args.no_record:
        print(rows, notes)
    else:
        from benchmarks._results import record

        record(
            "Fine-tuning recipe (CT phantom)",
            ["recipe", "lr", "Dice A (older)", "Dice B (newest)", "Dice unseen"],
            rows,
            notes,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
