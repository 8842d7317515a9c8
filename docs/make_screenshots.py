"""Make the documentation's screenshots (docs/screenshot_*.png) by driving the widget.

Each picture comes from a fresh napari window with the dock widget added through the
plugin manifest, driven through the same steps the GUI tests take (buttons, the model
panel, workers), on the generated phantoms; nothing is written outside the output
folder (models and autosaves go to a temporary plugin home).

Run from the repository root, under a virtual display::

    PYTHONPATH=src xvfb-run -a python docs/make_screenshots.py            # all of them
    PYTHONPATH=src xvfb-run -a python docs/make_screenshots.py xray click  # some

Pictures: ``widget`` (the dock next to a CT phantom), ``segment`` (a briefly trained
model's segmentation), ``click`` (click-to-segment), ``finetune`` (after fine-tuning on 3
reviewed slices and segmenting the rest), ``xray`` (the X-ray sample segmented by the
shipped ``cxr-lungs`` model). A few minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DOCS = Path(__file__).resolve().parent
WINDOW = (1300, 900)
MAX_BYTES = 600_000
SHAPE = (16, 64, 64)  # the CT phantom of the widget tests


def wait(condition, timeout: float = 1800.0) -> None:
    """Run the Qt event loop until ``condition()`` (workers report through it)."""
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    start = time.monotonic()
    while not condition():
        app.processEvents()
        time.sleep(0.02)
        if time.monotonic() - start > timeout:
            raise TimeoutError("the widget did not finish in time")
    app.processEvents()


def new_viewer():
    """A napari window of the documented size with the widget docked via the manifest;
    each picture gets an empty model folder of its own (no recent models from another)."""
    import napari

    os.environ["NAPARI_LIGHTM_MODELS"] = tempfile.mkdtemp(dir=os.environ["NAPARI_LIGHTM_HOME"])
    viewer = napari.Viewer(show=False)
    viewer.window.resize(*WINDOW)
    _, widget = viewer.window.add_plugin_dock_widget("napari-lightm", "LightM-UNet")
    return viewer, widget


def add_ct(viewer, name: str = "ct", seed: int = 0, shape=SHAPE):
    from napari_lightm.io.phantoms import ct_phantom

    image, truth, geometry = ct_phantom(seed=seed, shape=shape)
    layer = viewer.add_image(
        image, name=name, colormap="gray", contrast_limits=(-200, 300),
        **geometry.layer_kwargs(),
    )
    return layer, truth


def run_and_wait(widget, button) -> None:
    button.click()
    wait(lambda: not widget.runner.busy)
    if widget.runner.last_status != "finished":
        raise RuntimeError(f"'{widget.runner.name}' ended {widget.runner.last_status}")


def save(viewer, out: Path, name: str) -> Path:
    path = out / f"screenshot_{name}.png"
    viewer.screenshot(path=str(path), canvas_only=False, flash=False)
    size = path.stat().st_size
    if size >= MAX_BYTES:
        raise RuntimeError(f"{path} is {size} bytes (limit {MAX_BYTES})")
    print(f"wrote {path} ({size // 1000} kB)")
    return path


def tiny_segmenter():
    """The widget tests' tiny 2D CT model (untrained)."""
    import torch

    from napari_lightm.engine import Segmenter
    from napari_lightm.io.phantoms import CT_CLASSES

    torch.manual_seed(0)
    return Segmenter.new(2, list(CT_CLASSES), modality="CT", device="cpu", init_filters=8,
                         patch_size=(64, 64))


def tuned_segmenter():
    """The tiny model fine-tuned briefly on another phantom seed (as the tests' fixture)."""
    from napari_lightm._napari._finetune_panel import preload_training_modules
    from napari_lightm.engine import FinetuneSample, finetune
    from napari_lightm.io.phantoms import ct_phantom

    preload_training_modules()
    image, labels, geometry = ct_phantom(seed=1, shape=SHAPE)
    sample = FinetuneSample(image, labels, np.ones(labels.shape, bool), geometry)
    return finetune(tiny_segmenter(), [sample], max_steps=30, lr=3e-3)


# --- the pictures ---------------------------------------------------------------------
def shot_widget(out: Path) -> Path:
    viewer, _ = new_viewer()
    add_ct(viewer, "CT phantom", shape=(24, 96, 96))
    viewer.reset_view()
    try:
        return save(viewer, out, "widget")
    finally:
        viewer.close()


def shot_segment(out: Path, tuned) -> Path:
    viewer, widget = new_viewer()
    add_ct(viewer)
    widget.model.set_segmenter(tuned, name="tuned")
    run_and_wait(widget, widget.segment_image_button)
    viewer.reset_view()
    try:
        return save(viewer, out, "segment")
    finally:
        viewer.close()


def shot_click(out: Path, tuned) -> Path:
    from scipy import ndimage

    from napari_lightm._napari._segment import layer_geometry

    viewer, widget = new_viewer()
    layer, truth = add_ct(viewer)
    widget.model.set_segmenter(tuned, name="tuned")
    z = 8
    # deep inside the phantom's liver, where the model also sees liver
    image, geometry = np.asarray(layer.data), layer_geometry(layer)
    inside = (truth[z] == 1) & (tuned.predict(image[z : z + 1], geometry)[0] == 1)
    depth = ndimage.distance_transform_edt(inside)
    index = (z, *np.unravel_index(int(np.argmax(depth)), depth.shape))
    widget.click_button.click()
    points = viewer.layers["LightM clicks"]
    world = layer.data_to_world(index)
    points.add(points.world_to_data(world))
    wait(lambda: not widget.runner.busy)
    viewer.dims.set_point(0, world[0])
    viewer.reset_view()
    try:
        return save(viewer, out, "click")
    finally:
        viewer.close()


def shot_finetune(out: Path) -> Path:
    viewer, widget = new_viewer()
    layer, truth = add_ct(viewer)
    widget.model.set_segmenter(tiny_segmenter(), name="ft")
    labels = widget.labels_layer(create=True)
    reviewed = [3, 8, 13]
    for z in reviewed:  # the user paints the truth on 3 slices and marks them reviewed
        idx = np.nonzero(truth[z])
        labels.data_setitem((np.full(idx[0].size, z), *idx), truth[z][idx])
    widget.tracker.mark(labels, reviewed)
    widget.finetune.max_seconds.setValue(0)
    widget.finetune.max_steps.setValue(60)
    run_and_wait(widget, widget.finetune.finetune_button)
    run_and_wait(widget, widget.finetune.unreviewed_button)
    viewer.dims.set_point(0, layer.data_to_world([6, 0, 0])[0])  # an unreviewed slice
    viewer.reset_view()
    try:
        return save(viewer, out, "finetune")
    finally:
        viewer.close()


def shot_xray(out: Path) -> Path:
    viewer, widget = new_viewer()
    viewer.open_sample("napari-lightm", "xray")
    viewer.layers["xray phantom ground truth"].visible = False  # show the model's labels
    panel = widget.model
    panel.pretrained.setCurrentIndex(panel.pretrained.findData("cxr-lungs"))
    panel.pretrained_button.click()
    run_and_wait(widget, widget.segment_image_button)
    viewer.layers.selection.active = viewer.layers["xray phantom labels"]
    viewer.reset_view()
    try:
        return save(viewer, out, "xray")
    finally:
        viewer.close()


NAMES = ("widget", "segment", "click", "finetune", "xray")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"pictures to make: {', '.join(NAMES)} (default: all)")
    parser.add_argument("--out", type=Path, default=DOCS, help="output folder (docs/)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 is fastest on a busy 2-core machine)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(NAMES))
    if unknown:
        parser.error(f"unknown picture(s) {', '.join(unknown)}; choose from {', '.join(NAMES)}")
    names = args.names or list(NAMES)
    args.out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="lightm-screenshots-") as home:
        os.environ["NAPARI_LIGHTM_HOME"] = home
        import torch

        import napari_lightm.model  # noqa: F401  (before napari's canvas: see _triton_guard)

        torch.set_num_threads(args.threads)
        tuned = tuned_segmenter() if {"segment", "click"} & set(names) else None
        for name in names:
            if name in ("segment", "click"):
                globals()[f"shot_{name}"](args.out, tuned)
            else:
                globals()[f"shot_{name}"](args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
