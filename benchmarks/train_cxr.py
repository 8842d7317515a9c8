"""The shipped chest X-ray model ``cxr-lungs``: train it, measure it, export it.

Data: ``../shared/data/jsrt/jsrt_256.npz`` (JSRT images with the SCR masks; research and
education use; read at run time, never copied). Classes: background, right lung, left
lung, heart (heart pixels outside the lung masks). Pixels are 1.4 mm (2048 px at
0.175 mm, downsampled 8x), so the model records spacing (1.4, 1.4) and a 358.4 mm field
of view, which is how X-rays without a spacing are scaled at prediction time.

Recipe: light 2D LightM-UNet (f = 16), 256^2 patches, batch 16, AdamW with the engine's
default LR and poly schedule, Dice + CE, the strong X-ray augmentation of
:mod:`napari_lightm.engine.augment` (zoom, magnification, rotation, shifts, windowing,
gamma, blur, noise, collimation bands, markers), best checkpoint on a 10 % validation
split.

    python benchmarks/train_cxr.py --protocol fold --json fold.json   # fold 1 -> fold 2
    python benchmarks/train_cxr.py --protocol all --export OUTDIR      # all 247 cases
    python benchmarks/train_cxr.py --card fold.json OUTDIR/meta.json   # model card
    python benchmarks/train_cxr.py --protocol fold --smoke             # CPU check

``fold``: trains on fold 1 (odd case numbers), tests on fold 2 (even): Dice / HD95 per
class, the same with fp16 weights, and a stress table of fold 2 under single
perturbations (what other hospitals' films look like). ``all``: trains on every case
and writes ``cxr-lungs.safetensors`` (fp16 weights) for the package's model folder.
"""

from __future__ import annotations

import argparse
import json
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
NAME = "cxr-lungs"
CLASSES = ["background", "right lung", "left lung", "heart"]
SPACING = (1.4, 1.4)


def case_number(name: str) -> int:
    m = re.search(r"(\d+)$", str(name))
    if not m:
        raise ValueError(f"JSRT case name without a number: {name}")
    return int(m.group(1))


def load_cases(path: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(id, image float32 [256, 256], labels uint8)`` of every case (classes above)."""
    if not path.is_file():
        raise SystemExit(f"JSRT data not found at {path} (see --data)")
    d = np.load(path)
    out = []
    for i, name in enumerate(d["ids"]):
        lung, heart = d["lung"][i], d["heart"][i]
        labels = np.where(lung > 0, lung, np.where(heart > 0, 3, 0)).astype(np.uint8)
        out.append((str(name), d["image"][i].astype(np.float32), labels))
    return out


# --- perturbations of the stress table (numpy, one image and its labels) -------------------


def _affine(image, labels, zoom_y=1.0, zoom_x=1.0, angle_deg=0.0):
    from scipy import ndimage

    h, w = image.shape
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    matrix = rot @ np.diag([1 / zoom_y, 1 / zoom_x])  # output -> input
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    offset = centre - matrix @ centre
    dark = float(image.min())
    img = ndimage.affine_transform(image, matrix, offset, order=1, cval=dark)
    lab = ndimage.affine_transform(labels, matrix, offset, order=0, cval=0)
    return img.astype(np.float32), lab.astype(np.uint8)


def _gamma(image, g):
    lo, hi = image.min(), image.max()
    return (((image - lo) / max(hi - lo, 1e-6)) ** g * (hi - lo) + lo).astype(np.float32)


def _window(image, q_lo, q_hi):
    lo, hi = np.percentile(image, [q_lo, q_hi])
    return np.clip(image, lo, hi).astype(np.float32)


def _blur(image, sigma):
    from scipy import ndimage

    return ndimage.gaussian_filter(image, sigma).astype(np.float32)


def _noise(image, rel, seed):
    rng = np.random.default_rng(seed)
    return (image + rng.normal(0, rel * image.std(), image.shape)).astype(np.float32)


def _border(image, frac):
    out = image.copy()
    h, w = out.shape
    bh, bw = int(frac * h), int(frac * w)
    out[:bh], out[:, :bw], out[:, w - bw :] = image.min(), image.min(), image.min()
    return out


def _markers(image):
    out = image.copy()
    h, w = out.shape
    hi = image.max()
    out[int(0.05 * h) : int(0.09 * h), int(0.05 * w) : int(0.25 * w)] = hi  # burnt-in text
    out[int(0.05 * h) : int(0.11 * h), int(0.85 * w) : int(0.92 * w)] = hi  # side marker
    out[int(0.90 * h) : int(0.94 * h), int(0.60 * w) : int(0.90 * w)] = hi
    return out


STRESS = {
    "none": lambda im, lab, i: (im, lab),
    "zoom 0.75": lambda im, lab, i: _affine(im, lab, 0.75, 0.75),
    "zoom 1.25": lambda im, lab, i: _affine(im, lab, 1.25, 1.25),
    "AP-like (x1.1 wide, x1.15 tall)": lambda im, lab, i: _affine(im, lab, 1.15, 1.1),
    "rotation 10 deg": lambda im, lab, i: _affine(im, lab, angle_deg=10.0),
    "gamma 0.6": lambda im, lab, i: (_gamma(im, 0.6), lab),
    "gamma 1.6": lambda im, lab, i: (_gamma(im, 1.6), lab),
    "window 5-95 %": lambda im, lab, i: (_window(im, 5, 95), lab),
    "blur sigma 1.5 px": lambda im, lab, i: (_blur(im, 1.5), lab),
    "noise 10 % of std": lambda im, lab, i: (_noise(im, 0.1, i), lab),
    "collimation bands 8 %": lambda im, lab, i: (_border(im, 0.08), lab),
    "markers and text": lambda im, lab, i: (_markers(im), lab),
}


# --- training and evaluation ---------------------------------------------------------------


def train_model(cases, steps, batch, lr, seed, device, out_dir, progress_every):
    from napari_lightm.engine.augment import XRayAugmentation
    from napari_lightm.engine.data import Case, Dataset
    from napari_lightm.engine.training import train

    data = Dataset([Case(n, img[None], lab, SPACING) for n, img, lab in cases], CLASSES, "XR")
    t0 = time.time()

    def progress(p) -> None:
        if p.stage == "validate" or (p.loss is not None and p.done % progress_every == 0):
            print(f"  step {p.done}/{p.total} {p.stage} loss={p.loss} {p.message} "
                  f"({time.time() - t0:.0f} s)", flush=True)

    result = train(
        data, out_dir, spatial_dims=2, config="light", max_steps=steps, batch_size=batch,
        lr=lr, seed=seed, device=device, spacing=SPACING, patch_size=(256, 256),
        val_fraction=0.1, val_every=max(1, steps // 8), augment=XRayAugmentation(),
        progress=progress,
    )
    return result, time.time() - t0


def evaluate_cases(seg, cases, perturb=None):
    """Mean Dice / HD95 per class over ``cases`` (optionally perturbed)."""
    from napari_lightm.engine.metrics import segmentation_metrics
    from napari_lightm.io import Geometry

    geometry = Geometry(spacing=SPACING, modality="XR")
    per_case = []
    for i, (_, img, lab) in enumerate(cases):
        if perturb is not None:
            img, lab = perturb(img, lab, i)
        pred = seg.predict(img, geometry)
        per_case.append(segmentation_metrics(pred, lab, CLASSES, spacing=SPACING))
    out = {}
    for cls in CLASSES[1:]:
        for metric in ("dice", "hd95"):
            v = [m[cls][metric] for m in per_case if not math.isnan(m[cls][metric])]
            out[f"{cls} {metric}"] = float(np.mean(v)) if v else math.nan
    out["mean lung dice"] = (out["right lung dice"] + out["left lung dice"]) / 2
    return out


def half_weights(seg):
    """A copy whose weights went through float16 and back (what the package ships)."""
    import torch

    half = seg.copy()
    with torch.no_grad():
        for p in half.model.parameters():
            p.copy_(p.half().float())
    return half


def export(seg, folder: Path, meta: dict) -> Path:
    """``folder/cxr-lungs.safetensors`` with float16 weights, plus ``meta.json`` for the card."""
    from napari_lightm.engine.checkpoint import save_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in
             seg.model.state_dict().items()}
    metadata = seg.metadata()
    metadata["name"] = NAME
    metadata["card"] = f"{NAME}.md"
    path = save_checkpoint(folder / f"{NAME}.safetensors", state, metadata)
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))
    return path


def write_card(fold: dict, meta: dict, out: Path) -> None:
    """The model card (markdown) from a fold run's JSON and the export's meta.json."""
    rows = "\n".join(
        f"| {cls} | {fold['fp32'][cls + ' dice']:.4f} | {fold['fp16'][cls + ' dice']:.4f} | "
        f"{fold['fp32'][cls + ' hd95']:.2f} |" for cls in CLASSES[1:]
    )
    stress = "\n".join(
        f"| {name} | {v['mean lung dice']:.4f} | {v['heart dice']:.4f} |"
        for name, v in fold["stress"].items()
    )
    text = f"""# Model card: `{NAME}`

Chest X-ray (PA) segmentation of the **right lung, left lung and heart** (patient sides:
the right lung is on the image's left). A light 2D LightM-UNet (f = 16,
{meta['parameters']:,} parameters), weights stored as float16.

## Training data and its terms
JSRT database (Japanese Society of Radiological Technology; 247 PA chest films, 154 with
a lung nodule, 2048 x 2048 at 0.175 mm) with the SCR reference masks (van Ginneken,
Stegmann, Loog, Medical Image Analysis 2006), downsampled to 256 x 256 (1.4 mm). The
data are for **research and education only**; so are these weights. Not for clinical
use. Cite both sources when you publish results made with this model.

## Recipe
`benchmarks/train_cxr.py` (this repository), commit {meta['commit']}: all 247 cases,
{meta['steps']} steps x batch {meta['batch']}, AdamW lr {meta['lr']} with poly decay,
Dice + CE, strong X-ray augmentation (`napari_lightm.engine.augment.XRayAugmentation`),
best of 8 validations on a 10 % split. Trained on {meta['device']} in
{meta['seconds']:.0f} s. Model spacing 1.4 mm, field of view 358.4 mm.

## Metrics (the benchmark protocol: train on JSRT fold 1, test on fold 2)
Same recipe trained on fold 1 (124 cases, odd numbers), tested on fold 2 (123 cases),
{fold['device']}, commit {fold['commit']}:

| class | Dice (fp32) | Dice (fp16 weights) | HD95 (mm) |
|---|---|---|---|
{rows}

Mean lung Dice {fold['fp32']['mean lung dice']:.4f}. Stress test: fold 2 with one
perturbation each (fp32 weights):

| perturbation | mean lung Dice | heart Dice |
|---|---|---|
{stress}

## Intended use
Research: lung and heart masks of adult PA chest X-rays as a starting point to correct
and fine-tune in napari (`lightm predict --model {NAME}`; widget: model panel,
Pretrained). Images with a pixel spacing in their header (DICOM, NIfTI, NRRD, MHA) are
resampled by it; PNG/JPEG/TIFF files carry none, so their spacing is estimated by
fitting the image's shorter side to the 358.4 mm field of view (shown, editable).

## Limits
Trained on one Japanese archive of digitised films from the 1990s: adult PA views,
no devices, few diseases of the lung fields. Expect lower accuracy on AP and bedside
films, children, lateral views, heavy consolidation or effusion (the lung masks follow
the air-filled lung), and images cropped far from the training field of view (set the
spacing by hand then). The heart mask is the cardiac silhouette of the SCR annotation.
"""
    out.write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--protocol", choices=("fold", "all"), default="fold",
                   help="fold: fold 1 -> fold 2 benchmark (default); all: train the shipped model")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="jsrt_256.npz")
    p.add_argument("--steps", type=int, default=None, help="training steps (GPU 3000, smoke 4)")
    p.add_argument("--batch-size", type=int, default=None, help="GPU 16, smoke 2")
    p.add_argument("--lr", type=float, default=None, help="default: the engine's DEFAULT_LR")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--smoke", action="store_true", help="CPU smoke run: a few steps and cases")
    p.add_argument("--json", type=Path, default=None, help="fold: write the results here")
    p.add_argument("--export", type=Path, default=None, help="all: folder for the weights")
    p.add_argument("--card", nargs=2, type=Path, metavar=("FOLD_JSON", "META_JSON"),
                   help="write the model card next to META_JSON and stop")
    p.add_argument("--no-record", action="store_true", help="do not record the table")
    args = p.parse_args(argv)

    if args.card:
        fold = json.loads(args.card[0].read_text())
        meta = json.loads(args.card[1].read_text())
        out = args.card[1].parent / f"{NAME}.md"
        write_card(fold, meta, out)
        print(f"written {out}")
        return 0

    from benchmarks._results import commit, machine
    from napari_lightm.engine import Segmenter, pick_device
    from napari_lightm.engine.training import DEFAULT_LR

    device = pick_device(args.device)
    steps = args.steps or (4 if args.smoke else 3000)
    batch = args.batch_size or (2 if args.smoke else 16)
    lr = args.lr or DEFAULT_LR
    cases = load_cases(args.data)
    fold1 = [c for c in cases if case_number(c[0]) % 2 == 1]
    fold2 = [c for c in cases if case_number(c[0]) % 2 == 0]
    train_cases = fold1 if args.protocol == "fold" else cases
    if args.smoke:
        train_cases, fold2 = train_cases[:6], fold2[:3]
    print(f"{NAME}: {args.protocol}, {len(train_cases)} training cases, {steps} steps x batch "
          f"{batch}, lr {lr}, {device}", flush=True)
    out = Path(tempfile.mkdtemp(prefix="cxr_"))
    result, seconds = train_model(train_cases, steps, batch, lr, args.seed, device, out,
                                  max(1, steps // 20))
    seg = Segmenter.load(result.best_path or result.last_path, device=device)

    if args.protocol == "all":
        meta = {"steps": steps, "batch": batch, "lr": lr, "device": machine(),
                "commit": commit(), "seconds": seconds, "cases": len(train_cases),
                "best_val_dice": result.best_dice,
                "parameters": sum(p.numel() for p in seg.model.parameters())}
        path = export(seg, args.export or out / "export", meta)
        print(f"exported {path} (best validation Dice {result.best_dice:.4f})")
        return 0

    t0 = time.time()
    fp32 = evaluate_cases(seg, fold2)
    fp16 = evaluate_cases(half_weights(seg), fold2)
    stress = {name: evaluate_cases(seg, fold2, f) for name, f in STRESS.items() if name != "none"}
    stress = {"none": fp32, **stress}
    print(f"evaluation {time.time() - t0:.0f} s")
    summary = {"fp32": fp32, "fp16": fp16, "stress": stress, "device": machine(),
               "commit": commit(), "steps": steps, "batch": batch, "lr": lr,
               "train_seconds": seconds, "smoke": args.smoke}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    rows = [[cls, fp32[f"{cls} dice"], fp16[f"{cls} dice"], fp32[f"{cls} hd95"]]
            for cls in CLASSES[1:]]
    rows.append(["mean lung", fp32["mean lung dice"], fp16["mean lung dice"], math.nan])
    rows += [[f"stress: {k}", v["mean lung dice"], math.nan, v["heart dice"]]
             for k, v in stress.items()]
    notes = (f"Train on JSRT fold 1 ({len(train_cases)} cases, 10 % for validation), test on "
             f"fold 2 ({len(fold2)} cases); light 2D, {steps} steps x batch {batch}, lr {lr}, "
             f"XRayAugmentation, seed {args.seed}; training {seconds:.0f} s. Stress rows: "
             "mean lung Dice (col 2) and heart Dice (col 4) under one perturbation each."
             + (" SMOKE RUN (not a result)." if args.smoke else ""))
    print(rows)
    if not args.no_record:
        from benchmarks._results import record

        record(f"cxr-lungs: JSRT fold 1 -> fold 2{' (smoke)' if args.smoke else ''}",
               ["class", "Dice fp32", "Dice fp16", "HD95 mm / heart Dice"], rows, notes)
    print(f"mean lung Dice {fp32['mean lung dice']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
