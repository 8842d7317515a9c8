"""``lightm``: the command line of napari-lightm (predict, train, finetune, evaluate, bench)."""

from __future__ import annotations

import argparse
import sys

from napari_lightm import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightm",
        description="LightM-UNet segmentation of CT/MRI volumes and chest X-rays.",
    )
    parser.add_argument("--version", action="version", version=f"lightm {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
