"""``napari-lightm``: open napari with the LightM-UNet widget docked (and a sample, if asked)."""

from __future__ import annotations

import argparse

from napari_lightm import __version__

PLUGIN = "napari-lightm"
WIDGET = "LightM-UNet"
SAMPLES = ("xray", "ct")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-lightm",
        description="Open napari with the LightM-UNet segmentation widget docked.",
    )
    parser.add_argument("--version", action="version", version=f"napari-lightm {__version__}")
    parser.add_argument(
        "--sample",
        choices=SAMPLES,
        help="also open a generated sample image (chest X-ray or abdominal CT phantom)",
    )
    parser.add_argument("paths", nargs="*", help="image files or DICOM folders to open")
    return parser


def open_viewer(sample: str | None = None, paths: list[str] | None = None, show: bool = True):
    """Create a viewer with the widget docked; return ``(viewer, widget)``."""
    import napari

    viewer = napari.Viewer(show=show)
    if paths:
        viewer.open(paths, plugin=PLUGIN)
    if sample:
        viewer.open_sample(PLUGIN, sample)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    return viewer, widget


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import napari

    open_viewer(args.sample, args.paths)
    napari.run()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
