"""``lightm train`` (a dataset folder) and ``lightm finetune`` (images + labels)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from napari_lightm.cli._common import (
    CLIError,
    check_writable,
    filters,
    folder,
    image_files,
    ints,
    is_main_process,
    positive_float,
    positive_int,
    progress_bar,
    same_file,
)


def check_train_output(dataset: Path, out_dir: Path, resume: bool) -> None:
    """Refuse an output folder that is the dataset or one of its image/label folders, and,
    without ``--resume``, one that already holds a training run (it would be replaced)."""
    from napari_lightm.engine.train_state import run_files

    if out_dir.exists() and not out_dir.is_dir():
        raise CLIError(f"output folder {out_dir} is a file")
    if dataset.is_dir():
        own = [dataset, *(dataset / n for n in ("imagesTr", "labelsTr", "images", "labels"))]
        hit = next((d for d in own if d.exists() and same_file(out_dir, d)), None)
        if hit is not None:
            raise CLIError(f"output folder {out_dir} is the dataset's {hit}; choose another")
    existing = run_files(out_dir)
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

    from napari_lightm.engine import FinetuneSample, finetune
    from napari_lightm.engine.data import read_label_image
    from napari_lightm.engine.metrics import check_same_grid
    from napari_lightm.engine.zoo import load_model, resolve_model
    from napari_lightm.io import read_image

    model = resolve_model(args.model)
    target = check_finetune_output(model, Path(args.output))
    seg = load_model(model, device=args.device)
    images = cases(folder(args.images), "images")
    labels = cases(folder(args.labels), "labels")
    reviewed = cases(folder(args.reviewed), "reviewed masks") if args.reviewed else {}
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


def cases(where: Path, what: str) -> dict[str, Path]:
    """``{case: file}`` of a folder; nnU-Net's ``<case>_0000`` image names are case ``<case>``."""
    from napari_lightm.engine.data import case_name

    out: dict[str, Path] = {}
    for path in image_files(where):
        name = case_name(path)
        if name in out:
            raise CLIError(f"{where}: {out[name].name} and {path.name} are both {what} of {name}")
        out[name] = path
    return out


def check_finetune_output(model: Path, output: Path) -> Path:
    """The ``.safetensors`` file ``finetune`` writes; refuses the input model's own file,
    a shipped pretrained model, an existing file of another kind, and a folder that cannot
    take new files."""
    from napari_lightm.engine.checkpoint import checkpoint_file
    from napari_lightm.engine.zoo import is_shipped

    if output.is_file() and output.suffix != ".safetensors":
        raise CLIError(f"output {output} is an existing file that is not a .safetensors checkpoint")
    target = checkpoint_file(output, for_writing=True)
    source = checkpoint_file(model)
    if same_file(target, source):
        raise CLIError(
            f"{target} is the model being fine-tuned; write the new version to another file"
        )
    if is_shipped(target):
        raise CLIError(f"{target} is inside the package's pretrained models; write elsewhere")
    check_writable(target.parent)
    return target


def add_parsers(sub, common) -> None:
    p = sub.add_parser(
        "train",
        help="train a new model on a dataset folder (imagesTr/labelsTr or images/labels)",
        description="Train a LightM-UNet on a dataset folder: nnU-Net / Decathlon layout "
        "(imagesTr/ + labelsTr/, optional dataset.json) or images/ + labels/.",
    )
    p.add_argument("dataset", help="dataset folder")
    p.add_argument("out_dir", help="folder for best/last.safetensors and the training state")
    p.add_argument(
        "--dims", type=int, choices=(2, 3), default=None,
        help="2 or 3; default: 2 for 2D images, else 3",
    )
    p.add_argument("--config", default="light", choices=("light", "repo"),
                   help="light (16 filters) or repo (32, the authors' released width)")
    p.add_argument("--init-filters", type=filters, default=None,
                   help="override the config's width (a multiple of 8)")
    p.add_argument("--modality", default=None,
                   help="CT, MR or XR; default: from dataset.json or the files")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="training steps; default 1000, or --epochs x 250")
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs of 250 steps")
    p.add_argument("--patch-size", type=ints, default=None,
                   help="e.g. 256,256 or 64,128,128; default 256^2 / 64x128x128, capped at "
                   "the median image size")
    p.add_argument("--batch-size", type=positive_int, default=2, help="patches per step")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="learning rate; default the engine's (1e-3, poly decay)")
    p.add_argument("--seed", type=int, default=0, help="seeds weights, patches, augmentation")
    p.add_argument("--val-every", type=positive_int, default=None,
                   help="validate every N steps; default a tenth of the run")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT_DIR/train_state.safetensors")
    p.add_argument("--no-augment", action="store_true", help="train without augmentation")
    common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "finetune",
        help="fine-tune a model on images + labels (+ reviewed masks)",
        description="Fine-tune a checkpoint or pretrained model on the labelled voxels of "
        "images; the result is a new checkpoint (the input model is never changed). Files "
        "pair by case name: case.nii.gz, or nnU-Net's case_0000.nii.gz for an image.",
    )
    p.add_argument("model", help="checkpoint (.safetensors or folder) or pretrained model name")
    p.add_argument("images", help="folder of images")
    p.add_argument("labels", help="folder of label files (same case names)")
    p.add_argument("output", help="new checkpoint (.safetensors file or folder)")
    p.add_argument(
        "--reviewed", default=None,
        help="folder of reviewed masks (non-zero = the labels there are right; the rest is "
        "ignored); default: every voxel except the ignore label 255",
    )
    p.add_argument("--steps", type=positive_int, default=None,
                   help="step budget; default the recipe's when --seconds is not given")
    p.add_argument("--seconds", type=positive_float, default=None,
                   help="time budget in seconds, counted from the first step")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="learning rate; default the recipe's")
    common(p)
    p.set_defaults(func=cmd_finetune)
