"""Peak memory and time of segmenting big CT volumes on this machine (issue 22's goal:
a 512 x 512 x 600 CT within 4 GiB of RSS on 2 CPU cores).

What ``lightm predict ct.nii.gz`` does, per size in fresh processes: one process writes a
CT phantom of ``(N, 512, 512)`` at 0.8 x 0.8 mm in-plane and 2.5 mm slices as an int16
NIfTI (and its true labels) in a temporary folder, so the phantom generator's own memory
is not measured; a second reads it with ``read_image`` (int16 HU, as stored), segments it
with the few-slice recipe's new model (``Segmenter.predict``; the weights do not change
time or memory) and writes the labels with ``write_labels``; then, when napari is
installed, it writes the phantom's true labels (what a trained model would predict) into
an empty napari Labels layer as one undo step: what the widget's main thread does with a
Segment result. Reported: that process's peak RSS after reading and at the end, the
predict time, and the voxels changed and seconds of the napari write.

    python benchmarks/big_volume.py                  # 128, 300, 600 slices on the CPU
    python benchmarks/big_volume.py --slices 128 --no-record
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make(n: int, path: str) -> None:
    """Write the phantom of ``n`` slices to ``path`` (int16 NIfTI, as scanners store HU)."""
    import numpy as np
    import SimpleITK as sitk

    from napari_lightm.io.phantoms import ct_phantom

    image, labels, geometry = ct_phantom(seed=0, shape=(n, 512, 512))
    for array, target in ((np.rint(image).astype(np.int16), path),
                          (labels.astype(np.uint8), truth_path(path))):
        itk = sitk.GetImageFromArray(array)
        itk.SetSpacing(tuple(float(v) for v in geometry.spacing))
        sitk.WriteImage(itk, target)


def truth_path(path: str) -> str:
    return str(Path(path).with_name("truth.nii.gz"))


def child(path: str, device: str) -> dict:
    """Run in the child: read, predict, write; report peak RSS (MiB) and seconds."""
    from napari_lightm.engine.recipe import new_segmenter
    from napari_lightm.io import read_image, write_labels

    def peak_mib() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    image, geometry = read_image(path)
    after_image = peak_mib()
    seg = new_segmenter(["background", "liver", "kidney"], geometry.scale, device=device)
    t0 = time.perf_counter()
    labels = seg.predict(image, geometry)
    seconds = time.perf_counter() - t0
    write_labels(str(Path(path).with_name("labels.nii.gz")), labels, geometry)
    out = {"slices": image.shape[0], "image_mib": image.nbytes / 2**20,
           "peak_after_image_mib": after_image, "peak_mib": peak_mib(),
           "predict_s": seconds, "labels_dtype": str(labels.dtype)}
    del labels
    truth, _ = read_image(truth_path(path))  # what a trained model's Segment would write
    out.update(napari_write(truth))
    return out


def napari_write(labels) -> dict:
    """What the widget's main thread does with the result: write it into an empty Labels
    layer as one undo step (``ReviewTracker.write``); seconds and voxels changed."""
    try:
        import numpy as np
        from napari.layers import Labels

        from napari_lightm._napari._review import REVIEWED_KEY, ReviewTracker
    except ImportError:  # no napari: the engine's numbers only
        return {}
    layer = Labels(np.zeros_like(labels), metadata={REVIEWED_KEY: np.zeros(len(labels), bool)})
    tracker = ReviewTracker()
    tracker.track(layer)
    t0 = time.perf_counter()
    changed = tracker.write(layer, labels)
    return {"write_s": time.perf_counter() - t0, "changed": changed}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slices", default="128,300,600", help="comma-separated slice counts")
    p.add_argument("--device", default="cpu")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--make", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args(argv)
    if args.make:
        make(int(args.make[0]), args.make[1])
        return 0
    if args.child:
        print(json.dumps(child(args.child, args.device)), flush=True)
        return 0

    rows = []
    t0 = time.time()
    for n in (int(v) for v in args.slices.split(",")):
        with tempfile.TemporaryDirectory(prefix="lightm_big_") as tmp:
            ct = str(Path(tmp) / "ct.nii.gz")
            subprocess.run([sys.executable, __file__, "--make", str(n), ct], check=True)
            out = subprocess.run(
                [sys.executable, __file__, "--child", ct, "--device", args.device],
                capture_output=True, text=True,
            )
        if out.returncode != 0:
            rows.append([n, "", "", "", f"failed (exit {out.returncode})", ""])
            print(out.stderr[-2000:], file=sys.stderr)
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append([n, round(r["image_mib"]), round(r["peak_after_image_mib"]),
                     round(r["peak_mib"]), round(r["predict_s"], 1),
                     f"{r['changed'] / 1e6:.1f} M in {r['write_s']:.2f} s" if "changed" in r
                     else ""])
        print(rows[-1], f"({time.time() - t0:.0f} s)", flush=True)
    headers = ["slices (512 x 512)", "image MiB", "peak RSS after reading, MiB",
               "peak RSS at the end, MiB", "predict s", "napari write (main thread)"]
    notes = (f"CT phantom (N, 512, 512), 2.5 x 0.8 x 0.8 mm, int16 NIfTI; read_image (int16 as "
             f"stored), Segmenter.predict of engine.recipe.new_segmenter (2D, 8 filters, "
             f"1.5 mm, untrained) on {args.device}, write_labels; then the phantom's true "
             f"labels written into an empty napari Labels layer as one undo step (the "
             f"widget's main-thread part); each size in its own process (peak = ru_maxrss). "
             f"Goal: <= 4096 MiB at 600 slices. {time.time() - t0:.0f} s.")
    from benchmarks._results import load_note, record, table

    if args.no_record:
        print(table(headers, rows), "\n", notes)
    else:
        record("Big CT volumes: peak memory and time of Segment", headers, rows,
               notes + " " + load_note())
    return 0


if __name__ == "__main__":
    sys.exit(main())
