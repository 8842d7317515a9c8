"""``lightm``: the command line of napari-lightm (predict, train, finetune, evaluate, bench).

Every sub-command calls the same core functions as the napari widget. Bad input (a
``ValueError``: unreadable file, wrong checkpoint, missing folder, unknown device) and a
failed write (``OSError``: read-only folder, full disk) print one line
``lightm: error: ...`` on stderr and exit with status 2, without a traceback.

No command overwrites its input: ``predict`` checks every output path before the first
inference (none may be an input file, its data file or another output), ``finetune``
refuses to write over the model it starts from, ``train`` refuses the dataset's own
folders and, without ``--resume``, a folder that already holds a training run. Output
folders are checked for writing before the work starts.

Runs under ``torchrun`` (``python -m napari_lightm.cli train ...``) for multi-GPU training.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from napari_lightm import __version__

EXIT_BAD_INPUT = 2
EXIT_CANCELLED = 130


class CLIError(ValueError):
    """Bad command-line input (one-line message)."""


# --- progress bars ------------------------------------------------------------------------


def progress_bar(enabled: bool = True) -> Callable[[Any], None]:
    """A progress callback drawing one tqdm bar per stage (stderr); no-op when disabled."""
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def callback(p: Any) -> None:
        if not enabled:
            return
        if p.stage == "validate":
            tqdm.write(f"step {p.done}: {p.message}", file=sys.stderr)
            return
        bar = bars.get(p.stage)
        if bar is None or (p.total and bar.total != p.total) or p.done < bar.n:
            if bar is not None:
                bar.close()
            bar = bars[p.stage] = tqdm(
                total=p.total or None,
                desc=p.stage,
                file=sys.stderr,
                leave=False,
                dynamic_ncols=True,
            )
        bar.update(p.done - bar.n)
        if p.loss is not None:
            bar.set_postfix(loss=f"{p.loss:.4f}")
        if p.total and p.done >= p.total:
            bar.close()
            del bars[p.stage]

    return callback


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def ints(text: str) -> tuple[int, ...]:
    """Positive sizes like ``64,128,128`` or ``256x256``."""
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected integers like 64,128,128, got {text!r}"
        ) from err
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive sizes like 64,128,128, got {text!r}")
    return values


def _number(kind: type, low: float, text: str, what: str, high: float | None = None) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not (value >= low and (high is None or value < high)):  # NaN fails too
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _number(int, 1, text, "a positive integer")


def nonnegative_int(text: str) -> int:
    return _number(int, 0, text, "an integer >= 0")


def class_count(text: str) -> int:
    return _number(int, 2, text, "at least 2 classes (background and one structure)")


def filters(text: str) -> int:
    value = _number(int, 8, text, "a multiple of 8 (8, 16, 32, ...)", 1025)
    if value % 8:
        raise argparse.ArgumentTypeError(f"expected a multiple of 8 (8, 16, 32, ...), got {text!r}")
    return value


def positive_float(text: str) -> float:
    return _number(float, 1e-300, text, "a positive number", float("inf"))


def overlap_fraction(text: str) -> float:
    return _number(float, 0.0, text, "a fraction in [0, 1)", 1.0)


# --- output safety --------------------------------------------------------------------------


def _key(path: Path) -> str:
    """Comparable form of a path: absolute, links resolved, case folded (a refusal on a
    case-sensitive disk costs less than an overwrite on a case-insensitive one)."""
    return os.path.normcase(str(path.resolve())).casefold()


def _same_file(a: Path, b: Path) -> bool:
    if _key(a) == _key(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links, bind mounts
    except OSError:
        return False


class _FileSet:
    """Files to protect, found by path (resolved, case folded) or by identity (hard links)."""

    def __init__(self, paths: list[Path]):
        self.by_key = {_key(p): p for p in paths}
        self.by_inode = {}
        for p in paths:
            try:
                st = os.stat(p)
            except OSError:
                continue
            self.by_inode[(st.st_dev, st.st_ino)] = p

    def find(self, path: Path) -> Path | None:
        hit = self.by_key.get(_key(path))
        if hit is None:
            try:
                st = os.stat(path)
            except OSError:
                return None
            hit = self.by_inode.get((st.st_dev, st.st_ino))
        return hit


def _data_files(path: Path) -> list[Path]:
    """The detached data file a header names (MetaImage ``ElementDataFile``, NRRD
    ``data file``), which a write of that header's name would replace too."""
    from napari_lightm.io.readers import suffix_of

    suffix = suffix_of(path)
    if suffix not in (".mhd", ".nhdr") or not path.is_file():
        return []
    key = "elementdatafile" if suffix == ".mhd" else "data file"
    try:
        with open(path, "rb") as f:
            head = f.read(65536).decode("latin-1")
    except OSError:
        return []
    out = []
    for line in head.splitlines():
        name, sep, value = line.partition("=" if suffix == ".mhd" else ":")
        value = value.strip()
        if sep and name.strip().lower() == key and value and value.upper() not in ("LOCAL",
                                                                                    "LIST"):
            out.append(path.parent / value.split()[0])
    return out


def _written_files(out: Path) -> list[Path]:
    """Files a labels write to ``out`` creates: MetaImage ``.mhd`` adds ``.raw`` / ``.zraw``."""
    from napari_lightm.io.readers import suffix_of

    if suffix_of(out) == ".mhd":
        return [out, out.with_suffix(".raw"), out.with_suffix(".zraw")]
    return [out]


def check_outputs(jobs: list[tuple[Path, Path]], inputs: list[Path]) -> None:
    """Refuse (before any work) outputs that are an input (same path, link or hard link,
    or an input's data file), that two inputs share, or that cannot be labels files."""
    from napari_lightm.io import LABEL_SUFFIXES
    from napari_lightm.io.readers import suffix_of

    protected = _FileSet([*inputs, *(d for p in inputs for d in _data_files(p))])
    seen: dict[str, Path] = {}
    for src, out in jobs:
        if suffix_of(out) not in LABEL_SUFFIXES:
            raise CLIError(
                f"cannot write labels to {out}: use a file ending in "
                f"{', '.join(LABEL_SUFFIXES)} or an existing folder"
            )
        if out.is_dir():
            raise CLIError(f"output {out} is a folder; name a file or use --suffix")
        for written in _written_files(out):
            hit = protected.find(written)
            if hit is not None:
                raise CLIError(
                    f"{written} would overwrite the input {hit}; write the labels elsewhere "
                    "or pick another --suffix"
                )
            key = _key(written)
            if key in seen and seen[key] != src:
                raise CLIError(
                    f"{seen[key].name} and {src.name} would both be written to {written}; "
                    "use separate folders or another --suffix"
                )
            seen[key] = src


def check_writable(folder: Path) -> None:
    """Refuse a folder that cannot take new files (read-only, full, not a folder), checked
    on the folder itself or, when it does not exist yet, on its nearest existing parent."""
    import tempfile

    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise CLIError(f"cannot write into {folder}: {probe} is not a folder")
    try:
        fd, name = tempfile.mkstemp(prefix=".lightm-write-check-", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as err:
        raise CLIError(f"cannot write into {probe}: {err.strerror or err}") from None


# --- sub-commands -------------------------------------------------------------------------


def _image_files(folder: Path) -> list[Path]:
    from napari_lightm.io import IMAGE_SUFFIXES

    return sorted(
        p
        for p in folder.iterdir()
        if not p.name.startswith(".")
        and p.is_file()
        and any(p.name.lower().endswith(s) for s in IMAGE_SUFFIXES)
    )


def _labels_name(src: Path, suffix: str | None) -> str:
    from napari_lightm.engine.data import _stem
    from napari_lightm.io import LABEL_SUFFIXES

    if suffix is None:
        name = src.name.lower()
        suffix = next((s for s in LABEL_SUFFIXES if name.endswith(s)), ".nii.gz")
    return _stem(src) + suffix


def plan_predict(
    src: Path, dst: Path, suffix: str | None
) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """``([(image, labels path)], input files)`` for ``lightm predict``; every output path
    is checked (:func:`check_outputs`) before anything runs."""
    if not src.exists():
        raise CLIError(f"input not found: {src}")
    if suffix is not None and not suffix.startswith("."):
        suffix = "." + suffix
    images = _image_files(src) if src.is_dir() else []
    if images:  # a folder of images
        if dst.exists() and not dst.is_dir():
            raise CLIError(f"output {dst} must be a folder for a folder of images")
        jobs = [(f, dst / _labels_name(f, suffix)) for f in images]
        inputs = images
    else:  # one image file, or one DICOM series folder (every file in it is input)
        jobs = [(src, dst / _labels_name(src, suffix) if dst.is_dir() else dst)]
        inputs = [p for p in src.rglob("*") if p.is_file()] if src.is_dir() else [src]
    check_outputs(jobs, inputs)
    return jobs, inputs


def cmd_predict(args: argparse.Namespace) -> int:
    """Labels for an image file or every image of a folder, written with the source geometry."""
    from napari_lightm.engine import Segmenter
    from napari_lightm.io import read_image, write_labels

    seg = Segmenter.load(args.model, device=args.device)
    seg.precision = args.precision
    jobs, _ = plan_predict(Path(args.input), Path(args.output), args.suffix)
    for folder in {out.parent for _, out in jobs}:
        check_writable(folder)
    bar = progress_bar(not args.quiet)
    for i, (image_path, out_path) in enumerate(jobs):
        image, geometry = read_image(image_path)
        t0 = time.perf_counter()
        labels = seg.predict(image, geometry, overlap=args.overlap, tta=args.tta, progress=bar)
        try:
            write_labels(out_path, labels, geometry)
        except OSError as err:
            raise CLIError(f"cannot write {out_path}: {err.strerror or err}") from None
        print(
            f"[{i + 1}/{len(jobs)}] {image_path.name} -> {out_path} "
            f"({time.perf_counter() - t0:.1f} s)"
        )
    return 0


def check_train_output(dataset: Path, out_dir: Path, resume: bool) -> None:
    """Refuse an output folder that is the dataset or one of its image/label folders, and,
    without ``--resume``, one that already holds a training run (it would be replaced)."""
    from napari_lightm.engine.training import RUN_FILES

    if out_dir.exists() and not out_dir.is_dir():
        raise CLIError(f"output folder {out_dir} is a file")
    if dataset.is_dir():
        own = [dataset, *(dataset / n for n in ("imagesTr", "labelsTr", "images", "labels"))]
        hit = next((d for d in own if d.exists() and _same_file(out_dir, d)), None)
        if hit is not None:
            raise CLIError(f"output folder {out_dir} is the dataset's {hit}; choose another")
    existing = [n for n in RUN_FILES if (out_dir / n).is_file()]
    if existing and not resume:
        raise CLIError(
            f"{out_dir} already holds a training run ({', '.join(existing)}); pass --resume "
            "to continue it or choose another folder"
        )
    check_writable(out_dir)


def cmd_train(args: argparse.Namespace) -> int:
    from napari_lightm.engine.training import train

    out_dir = Path(args.out_dir)
    check_train_output(Path(args.dataset), out_dir, args.resume)
    kwargs: dict[str, Any] = {}
    if args.init_filters:
        kwargs["model_kwargs"] = {"init_filters": args.init_filters}
    if args.lr is not None:
        kwargs["lr"] = args.lr
    try:
        result = train(
            args.dataset,
            out_dir,
            spatial_dims=args.dims,
            config=args.config,
            modality=args.modality,
            max_steps=args.steps,
            epochs=args.epochs,
            patch_size=args.patch_size,
            batch_size=args.batch_size,
            seed=args.seed,
            resume=args.resume,
            val_every=args.val_every,
            device=args.device,
            augment=not args.no_augment,
            progress=progress_bar(is_main_process() and not args.quiet),
            **kwargs,
        )
    except OSError as err:
        raise CLIError(
            f"cannot write the training run to {out_dir}: {err.strerror or err}"
        ) from None
    if is_main_process():
        print(
            f"trained {result.steps} steps; best validation Dice {result.best_dice:.4f}; "
            f"checkpoints: {result.best_path}, {result.last_path}"
        )
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    import numpy as np

    from napari_lightm.engine import FinetuneSample, Segmenter, finetune
    from napari_lightm.engine.data import _stem, read_label_image
    from napari_lightm.engine.metrics import check_same_grid
    from napari_lightm.io import read_image

    seg = Segmenter.load(args.model, device=args.device)
    target = check_finetune_output(Path(args.model), Path(args.output))
    images = {_stem(p): p for p in _image_files(_folder(args.images))}
    labels = {_stem(p): p for p in _image_files(_folder(args.labels))}
    reviewed = {_stem(p): p for p in _image_files(_folder(args.reviewed))} if args.reviewed else {}
    common = sorted(set(images) & set(labels))
    if not common:
        raise CLIError(f"no file names in common between {args.images} and {args.labels}")
    samples = []
    for name in common:
        image, geometry = read_image(images[name])
        lab, lab_geometry = read_label_image(labels[name])
        check_same_grid(name, lab, lab_geometry, image, geometry, labels[name], images[name])
        if args.reviewed:
            if name not in reviewed:
                raise CLIError(f"no reviewed mask for {name} in {args.reviewed}")
            mask, mask_geometry = read_label_image(reviewed[name])
            check_same_grid(name, mask, mask_geometry, image, geometry, reviewed[name],
                            images[name])
            mask = mask > 0
        else:  # no masks: every voxel counts, except the ignore label 255
            mask = lab != 255
        samples.append(FinetuneSample(image, np.where(mask, lab, 0), mask, geometry))
    new = finetune(
        seg,
        samples,
        max_steps=args.steps,
        max_seconds=args.seconds,
        lr=args.lr,
        progress=progress_bar(not args.quiet),
    )
    try:
        path = new.save(target)
    except OSError as err:
        raise CLIError(
            f"cannot write the fine-tuned model to {target}: {err.strerror or err}"
        ) from None
    h = new.history[-1]
    print(
        f"fine-tuned {h['steps']} steps on {len(samples)} image(s): loss {h['first_loss']:.4f} "
        f"-> {h['last_loss']:.4f}; version {new.version} saved to {path}"
    )
    return 0


def check_finetune_output(model: Path, output: Path) -> Path:
    """The ``.safetensors`` file ``finetune`` writes; refuses the input model's own file,
    an existing file of another kind, and a folder that cannot take new files."""
    from napari_lightm.engine.checkpoint import checkpoint_file

    if output.is_file() and output.suffix != ".safetensors":
        raise CLIError(f"output {output} is an existing file that is not a .safetensors checkpoint")
    target = checkpoint_file(output, for_writing=True)
    source = checkpoint_file(model)
    if _same_file(target, source):
        raise CLIError(
            f"{target} is the model being fine-tuned; write the new version to another file"
        )
    check_writable(target.parent)
    return target


def cmd_evaluate(args: argparse.Namespace) -> int:
    from napari_lightm.engine.metrics import evaluate_folders

    names = None
    if args.model:
        from napari_lightm.engine.checkpoint import load_checkpoint
        from napari_lightm.engine.segmenter import checked_metadata

        _, meta, file = load_checkpoint(args.model)
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


def cmd_bench(args: argparse.Namespace) -> int:
    """Time model inference (forward of one batch, or a whole sliding-window predict)."""
    import numpy as np
    import torch

    from napari_lightm.engine import Segmenter, pick_device

    shape = tuple(args.shape)
    dims = len(shape)
    if dims not in (2, 3):
        raise CLIError(f"--shape needs 2 or 3 sizes, got {shape}")
    device = pick_device(args.device)
    backend = None if args.backend == "auto" else args.backend
    seg = Segmenter.new(
        dims,
        ["background", *[f"class {k}" for k in range(1, args.classes)]],
        modality="CT",
        config=args.config,
        device=device,
        scan_backend=backend,
        patch_size=tuple(min(s, p) for s, p in zip(shape, args.patch or shape)),
    )
    backend_name = seg.backend  # raises for an unusable backend
    if args.mode == "forward":
        if any(s % 8 for s in shape):
            raise CLIError(f"--shape {shape} must be multiples of 8 for --mode forward")
        x = torch.randn(args.batch, 1, *shape, device=device)

        def run() -> None:
            with torch.no_grad():
                seg.model(x)
    else:
        image = np.random.default_rng(0).normal(0, 300, shape).astype(np.float32)

        def run() -> None:
            seg.predict(image, tile_batch=args.batch)

    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(args.warmup + args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    row = {
        "mode": args.mode,
        "shape": list(shape),
        "batch": args.batch,
        "config": args.config,
        "backend": backend_name,
        "device": str(device),
        "median_ms": 1000 * float(np.median(times)),
        "min_ms": 1000 * float(np.min(times)),
        "repeats": len(times),
        "parameters": seg.info()["parameters"],
    }
    if device.type == "cuda":
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    print(json.dumps(row) if args.json else "  ".join(f"{k}={v}" for k, v in row.items()))
    return 0


def _folder(path: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise CLIError(f"folder not found: {p}")
    return p


# --- parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightm",
        description="LightM-UNet segmentation of CT/MRI volumes and chest X-rays.",
    )
    parser.add_argument("--version", action="version", version=f"lightm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--device", default="auto", help="auto (CUDA > MPS > CPU), cpu, cuda, cuda:N, mps"
        )
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("predict", help="segment an image file or a folder of images")
    p.add_argument("model", help="checkpoint (.safetensors or folder)")
    p.add_argument("input", help="image file, DICOM folder, or folder of images")
    p.add_argument("output", help="labels file (single input) or folder")
    p.add_argument(
        "--suffix",
        default=None,
        help="output suffix (.nii.gz, .nrrd, .mha, .png); default: the input's where possible",
    )
    p.add_argument(
        "--overlap", type=overlap_fraction, default=0.5, help="sliding-window overlap (0.5)"
    )
    p.add_argument("--tta", action="store_true", help="mirroring test-time augmentation")
    p.add_argument(
        "--precision",
        choices=("tf32", "bf16", "fp32"),
        default="tf32",
        help="CUDA matmul precision: tf32 (default; float32 tensors, TF32 tensor cores), "
        "bf16 (autocast) or fp32 (full precision); ignored on the CPU",
    )
    common(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "train", help="train on a dataset folder (imagesTr/labelsTr or images/labels)"
    )
    p.add_argument("dataset")
    p.add_argument("out_dir")
    p.add_argument("--dims", type=int, choices=(2, 3), default=None)
    p.add_argument("--config", default="light", choices=("light", "repo"))
    p.add_argument(
        "--init-filters", type=filters, default=None, help="override the config's width"
    )
    p.add_argument("--modality", default=None, help="CT, MR or XR (default: from dataset.json)")
    p.add_argument(
        "--steps", type=positive_int, default=None, help="training steps (default 1000)"
    )
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs of 250 steps")
    p.add_argument("--patch-size", type=ints, default=None, help="e.g. 256,256 or 64,128,128")
    p.add_argument("--batch-size", type=positive_int, default=2)
    p.add_argument("--lr", type=positive_float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-every", type=positive_int, default=None)
    p.add_argument(
        "--resume", action="store_true", help="continue from OUT_DIR/train_state.safetensors"
    )
    p.add_argument("--no-augment", action="store_true")
    common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "finetune", help="fine-tune a checkpoint on images + labels (+ reviewed masks)"
    )
    p.add_argument("model")
    p.add_argument("images", help="folder of images")
    p.add_argument("labels", help="folder of label files (same names)")
    p.add_argument("output", help="new checkpoint (.safetensors or folder)")
    p.add_argument(
        "--reviewed", default=None, help="folder of reviewed masks (non-zero = reviewed)"
    )
    p.add_argument("--steps", type=positive_int, default=None)
    p.add_argument("--seconds", type=positive_float, default=None)
    p.add_argument("--lr", type=positive_float, default=None)
    common(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("evaluate", help="per-class Dice, IoU, HD95 of predicted vs true labels")
    p.add_argument("pred", help="folder of predicted labels (or one labels file)")
    p.add_argument("gt", help="folder of ground-truth labels, same names (or one labels file)")
    p.add_argument("--out", default="metrics", help="output stem: writes STEM.csv and STEM.json")
    p.add_argument("--classes", default=None, help="comma-separated class names (0 = background)")
    p.add_argument("--model", default=None, help="take the class names from this checkpoint")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("bench", help="time inference on a synthetic input")
    p.add_argument("--shape", type=ints, default=(256, 256), help="e.g. 256,256 or 128,128,128")
    p.add_argument("--config", default="light", choices=("light", "repo"))
    p.add_argument("--backend", default="auto", help="scan backend (auto, cpu, torch, triton, ...)")
    p.add_argument(
        "--mode",
        default="forward",
        choices=("forward", "predict"),
        help="one forward pass, or a sliding-window predict of an image of --shape",
    )
    p.add_argument("--patch", type=ints, default=None, help="window for --mode predict")
    p.add_argument("--batch", type=positive_int, default=1)
    p.add_argument("--classes", type=class_count, default=3)
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--warmup", type=nonnegative_int, default=1)
    p.add_argument("--json", action="store_true")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from napari_lightm.engine.callbacks import Cancelled

    try:
        return args.func(args)
    except (ValueError, OSError) as err:  # bad input, or a write the disk refused
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"lightm: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (Cancelled, KeyboardInterrupt):
        print("lightm: cancelled", file=sys.stderr)
        return EXIT_CANCELLED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
