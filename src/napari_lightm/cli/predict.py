"""``lightm predict``: labels for an image file or every image of a folder."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from napari_lightm.cli._common import (
    CLIError,
    check_outputs,
    check_writable,
    image_files,
    overlap_fraction,
    progress_bar,
)


def _labels_name(src: Path, suffix: str | None) -> str:
    """Output name of ``src``'s labels: its stem with ``suffix``, else the input's own
    suffix where labels can have it, else ``.nii.gz``. A DICOM input gets DICOM-SEG only
    when asked (``--suffix .dcm`` or an output file ending in ``.dcm``)."""
    from napari_lightm.engine.data import file_stem
    from napari_lightm.io import LABEL_SUFFIXES

    if suffix is None:
        name = src.name.lower()
        suffix = next(
            (s for s in LABEL_SUFFIXES if s != ".dcm" and name.endswith(s)), ".nii.gz"
        )
    return file_stem(src) + suffix


def _is_series_folder(images: list[Path]) -> bool:
    """True when ``images`` (a folder's image files) are DICOM slices of which at least
    two share a series: the folder is then read as one series, not image by image."""
    import pydicom

    from napari_lightm.io.readers import DICOM_SUFFIXES, suffix_of

    if not images or any(suffix_of(p) not in DICOM_SUFFIXES for p in images):
        return False
    seen: set[str] = set()
    for p in images:
        try:
            ds = pydicom.dcmread(
                str(p), stop_before_pixels=True, specific_tags=["SeriesInstanceUID"]
            )
        except Exception:  # damaged files are reported when read
            continue
        uid = str(ds.get("SeriesInstanceUID", ""))
        if uid and uid in seen:
            return True
        seen.add(uid)
    return False


def _is_dicom(src: Path) -> bool:
    from napari_lightm.io.readers import DICOM_SUFFIXES, is_dicom_file, suffix_of

    if src.is_dir():
        from napari_lightm.io._dicom import find_dicom_files

        return bool(find_dicom_files(src, limit=1))
    return suffix_of(src) in DICOM_SUFFIXES or is_dicom_file(src)


def _check_dicom_seg_inputs(jobs: list[tuple[Path, Path]]) -> None:
    """DICOM-SEG references the DICOM instances it segments: refuse (before any work)
    a ``.dcm`` output for an input that is not DICOM."""
    from napari_lightm.io.readers import suffix_of

    for src, out in jobs:
        if suffix_of(out) == ".dcm" and not _is_dicom(src):
            raise CLIError(
                f"cannot write {out.name} as DICOM-SEG: {src} is not a DICOM image or "
                "series; use .nii.gz, .nrrd or .mha instead"
            )


def plan_predict(
    src: Path, dst: Path, suffix: str | None
) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """``([(image, labels path)], input files)`` for ``lightm predict``; every output path
    is checked (:func:`check_outputs`) before anything runs."""
    if not src.exists():
        raise CLIError(f"input not found: {src}")
    if suffix is not None and not suffix.startswith("."):
        suffix = "." + suffix
    images = image_files(src) if src.is_dir() else []
    if images and not _is_series_folder(images):  # a folder of images
        if dst.exists() and not dst.is_dir():
            raise CLIError(f"output {dst} must be a folder for a folder of images")
        jobs = [(f, dst / _labels_name(f, suffix)) for f in images]
        inputs = images
    else:  # one image file, or one DICOM series folder (every file in it is input)
        jobs = [(src, dst / _labels_name(src, suffix) if dst.is_dir() else dst)]
        inputs = [p for p in src.rglob("*") if p.is_file()] if src.is_dir() else [src]
    check_outputs(jobs, inputs)
    _check_dicom_seg_inputs(jobs)
    return jobs, inputs


def model_and_paths(args: argparse.Namespace) -> tuple[str, Path, Path]:
    """``(model, input, output)`` from ``[MODEL] INPUT OUTPUT`` and ``--model``."""
    paths = list(args.paths)
    if args.model is not None:
        if len(paths) != 2:
            raise CLIError(f"with --model give INPUT and OUTPUT, got {len(paths)} path(s)")
        return args.model, Path(paths[0]), Path(paths[1])
    if len(paths) != 3:
        raise CLIError(
            "give MODEL INPUT OUTPUT, or --model NAME INPUT OUTPUT "
            "(`lightm models` lists the pretrained models)"
        )
    return paths[0], Path(paths[1]), Path(paths[2])


def cmd_predict(args: argparse.Namespace) -> int:
    """Labels for an image file or every image of a folder, written with the source geometry."""
    from napari_lightm.engine.zoo import load_model
    from napari_lightm.io import read_image, write_labels

    model, src, dst = model_and_paths(args)
    jobs, _ = plan_predict(src, dst, args.suffix)
    for out_folder in {out.parent for _, out in jobs}:
        check_writable(out_folder)
    seg = load_model(model, device=args.device)
    seg.precision = args.precision
    bar = progress_bar(not args.quiet)
    for i, (image_path, out_path) in enumerate(jobs):
        image, geometry = read_image(image_path)
        _, note = seg.input_spacing(image.shape[-seg.spatial_dims :], geometry)
        if note:
            print(f"{image_path.name}: {note}")
        t0 = time.perf_counter()
        labels = seg.predict(image, geometry, overlap=args.overlap, tta=args.tta, progress=bar)
        try:
            write_labels(out_path, labels, geometry, class_names=seg.class_names)
        except OSError as err:
            raise CLIError(f"cannot write {out_path}: {err.strerror or err}") from None
        print(
            f"[{i + 1}/{len(jobs)}] {image_path.name} -> {out_path} "
            f"({time.perf_counter() - t0:.1f} s)"
        )
    return 0


def add_parser(sub, common) -> None:
    p = sub.add_parser(
        "predict",
        usage="lightm predict [options] [MODEL] INPUT OUTPUT",
        help="segment an image file or a folder of images",
        description="Segment an image file, a DICOM series folder or every image of a folder; "
        "labels are written with the source image's geometry.",
    )
    p.add_argument(
        "paths",
        nargs="+",
        metavar="[MODEL] INPUT OUTPUT",
        help="MODEL: a checkpoint (.safetensors or folder) or a pretrained model's name (or "
        "give it with --model); INPUT: an image file, DICOM folder or folder of images; "
        "OUTPUT: a labels file (one input) or folder",
    )
    p.add_argument(
        "-m",
        "--model",
        default=None,
        help="checkpoint or pretrained model name, e.g. cxr-lungs (`lightm models` lists them)",
    )
    p.add_argument(
        "--suffix",
        default=None,
        help="output suffix (.nii.gz, .nrrd, .mha, .png, or .dcm: DICOM-SEG of a DICOM input, "
        "one segment per class); default: the input's where possible, else .nii.gz",
    )
    p.add_argument(
        "--overlap", type=overlap_fraction, default=0.5, help="sliding-window overlap, in [0, 1)"
    )
    p.add_argument("--tta", action="store_true", help="mirroring test-time augmentation")
    p.add_argument(
        "--precision",
        choices=("tf32", "bf16", "fp32"),
        default="tf32",
        help="CUDA matmul precision: tf32 (float32 tensors, TF32 tensor cores), bf16 "
        "(autocast) or fp32 (full precision); ignored on the CPU",
    )
    common(p)
    p.set_defaults(func=cmd_predict)
