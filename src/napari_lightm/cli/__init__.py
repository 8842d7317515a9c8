"""``lightm``: the command line of napari-lightm (predict, models, train, finetune, evaluate,
bench).

Every sub-command calls the same core functions as the napari widget. Bad input (a
``ValueError``: unreadable file, wrong checkpoint, missing folder, unknown device) and a
failed write (``OSError``: read-only folder, full disk) print one line
``lightm: error: ...`` on stderr and exit with status 2, without a traceback. Messages
from the core that name an API argument are shown with the command's flag instead
(``spatial_dims`` -> ``--dims``).

No command overwrites its input: ``predict`` checks every output path before the first
inference (none may be an input file, its data file or another output), ``finetune``
refuses to write over the model it starts from or a shipped model, ``train`` refuses the
dataset's own folders and, without ``--resume``, a folder that already holds a training
run. Output folders are checked for writing before the work starts.

Runs under ``torchrun`` (``python -m napari_lightm.cli train ...``) for multi-GPU training.
"""

from __future__ import annotations

import argparse
import re
import sys

from napari_lightm import __version__
from napari_lightm.cli._common import CLIError, HelpFormatter

EXIT_BAD_INPUT = 2
EXIT_CANCELLED = 130

#: core argument names as the command line spells them
FLAGS = {
    "spatial_dims": "--dims",
    "max_steps": "--steps",
    "max_seconds": "--seconds",
    "batch_size": "--batch-size",
    "val_every": "--val-every",
    "patch_size": "--patch-size",
    "init_filters": "--init-filters",
    "overlap": "--overlap",
}


def cli_message(message: str) -> str:
    """``message`` with core argument names replaced by their flags."""
    return re.sub(
        r"\b(" + "|".join(FLAGS) + r")\b(=)?",
        lambda m: FLAGS[m.group(1)] + (" " if m.group(2) else ""),
        message,
    )


def build_parser() -> argparse.ArgumentParser:
    from napari_lightm.cli import bench, evaluate, models, predict, train

    parser = argparse.ArgumentParser(
        prog="lightm",
        description="LightM-UNet segmentation of CT/MRI volumes and chest X-rays: predict with "
        "a pretrained or your own model, train, fine-tune, evaluate, benchmark.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"lightm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add = sub.add_parser

    def add_parser(*args, **kwargs):  # every sub-command shows its defaults
        kwargs.setdefault("formatter_class", HelpFormatter)
        return add(*args, **kwargs)

    sub.add_parser = add_parser

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--device", default="auto", help="auto (CUDA > MPS > CPU), cpu, cuda, cuda:N, mps"
        )
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    predict.add_parser(sub, common)
    models.add_parser(sub, common)
    train.add_parsers(sub, common)
    evaluate.add_parser(sub, common)
    bench.add_parser(sub, common)
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
        print(f"lightm: error: {cli_message(message)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (Cancelled, KeyboardInterrupt):
        print("lightm: cancelled", file=sys.stderr)
        return EXIT_CANCELLED


__all__ = ["EXIT_BAD_INPUT", "EXIT_CANCELLED", "CLIError", "build_parser", "main"]
