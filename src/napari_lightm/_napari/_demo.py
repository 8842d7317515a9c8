"""The demo path: the whole loop on the CT phantom in about a minute on a CPU.

1. use the picked volume when it has reference labels (the CT sample's "ground
   truth" layer), else add a small CT phantom;
2. copy the reference onto 3 evenly spaced slices and mark them *reviewed* (as if
   the user had corrected them);
3. create the few-slice recipe's model (if the current one does not fit; its weights
   start from a fixed seed) and fine-tune it on those slices for a fixed number of steps
   with the recipe;
4. segment the unreviewed slices.

The budget is steps, not seconds: a model trained for only a few steps labels every
flat region (air, fat) with one class, often the spine, and how many steps fit in a
time budget depends on the machine (on a busy 2-core CPU, 40 s were 1-4 steps). With a
step budget and a seeded start the demo shows the same result everywhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from napari_lightm._napari._review import ensure_labels, full_region

if TYPE_CHECKING:
    from napari_lightm._napari.context import PluginContext

DEMO_SHAPE = (32, 128, 128)
#: fine-tuning steps: enough for the tiny model to find the spine as well as the liver
#: (tests/test_demo.py checks both on the unreviewed slices)
DEMO_STEPS = 120
#: torch seed of the demo model's initial weights (the global RNG is left as it was)
DEMO_SEED = 0
N_REVIEWED = 3


def demo_slices(n: int, k: int = N_REVIEWED) -> list[int]:
    """``k`` evenly spaced interior slice indices of ``n`` (all of them when ``n <= k``)."""
    if n <= k:
        return list(range(n))
    return [int(round(x)) for x in np.linspace(0, n - 1, k + 2)[1:-1]]


def find_reference(viewer, image_layer) -> np.ndarray | None:
    """Reference labels for ``image_layer``: a Labels layer of its shape that the sample
    (or the user) named as reference/ground truth, else None."""
    from napari.layers import Labels

    for layer in viewer.layers:
        if not isinstance(layer, Labels) or layer.data.shape != image_layer.data.shape:
            continue
        name = layer.name.lower()
        if layer.metadata.get("lightm_reference") or any(
            word in name for word in ("reference", "ground truth", "truth", "sample labels")
        ):
            return np.asarray(layer.data)
    return None


def add_phantom(widget: PluginContext):
    """Add the CT phantom image; returns ``(image_layer, reference_labels, class_names)``."""
    from napari_lightm.io.phantoms import CT_CLASSES, ct_phantom

    image, labels, geometry = ct_phantom(seed=0, shape=DEMO_SHAPE)
    layer = widget.viewer.add_image(
        image,
        name="CT phantom (demo)",
        colormap="gray",
        contrast_limits=(-200, 300),
        **geometry.layer_kwargs(),
    )
    return layer, labels, list(CT_CLASSES)


def new_demo_model(widget: PluginContext, class_names: list[str]):
    """The few-slice recipe's new model for the picked image (what "New model" makes),
    its weights drawn from :data:`DEMO_SEED` (the process's random state is restored
    afterwards)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(DEMO_SEED)
        return widget.model.new_model(2, class_names, modality="CT", config="few-slice")


def prepare(widget: PluginContext):
    """Steps 1-3 on the main thread; returns the Labels layer that was prepared."""
    from napari_lightm.io.phantoms import CT_CLASSES

    image_layer = widget.current_image()
    reference = None
    if image_layer is not None and image_layer.data.ndim == 3:
        reference = find_reference(widget.viewer, image_layer)
    class_names = (
        list(image_layer.metadata.get("class_names") or CT_CLASSES)
        if (reference is not None)
        else list(CT_CLASSES)
    )
    if reference is None:
        image_layer, reference, class_names = add_phantom(widget)
    widget.set_image(image_layer)
    seg = widget.model.segmenter
    if seg is None or list(seg.class_names) != class_names:
        new_demo_model(widget, class_names)
    labels = ensure_labels(widget.viewer, image_layer, len(class_names))
    widget.tracker.track(labels)
    n = reference.shape[0] if reference.ndim == 3 else 1
    slices = demo_slices(n)
    where = np.zeros(reference.shape, bool)
    if reference.ndim == 3:
        where[slices] = True
    else:
        where[:] = True
    widget.tracker.write(
        labels,
        reference.astype(labels.data.dtype),
        full_region(reference.shape),
        where=where,
        protect_reviewed=False,
    )
    widget.tracker.mark(labels, slices)
    return labels


def start_demo(widget: PluginContext) -> bool:
    """Run the demo: prepare, fine-tune, then segment the unreviewed slices."""
    from napari.utils.notifications import show_error, show_info
    from qtpy.QtCore import QTimer

    from napari_lightm._napari._segment import start_segment

    if widget.runner.busy:
        show_info(f"busy with '{widget.runner.name}'")
        return False
    try:
        prepare(widget)
    except (ValueError, ImportError, OSError) as exc:
        show_error(f"demo: {exc}")
        return False
    widget.finetune.max_seconds.setValue(0)  # no time limit: the steps are the budget
    widget.finetune.max_steps.setValue(DEMO_STEPS)
    widget.finetune.lr.setCurrentText("auto")  # the recipe's rate for a new model

    def _then_segment(busy: bool) -> None:
        if busy:
            return
        widget.runner.busy_changed.disconnect(_then_segment)
        if widget.runner.last_status == "finished":
            # after the current signal has reached every slot, unless the widget closed
            QTimer.singleShot(0, lambda: widget.is_open and start_segment(widget, "unreviewed"))

    if not widget.finetune.start():
        return False
    widget.runner.busy_changed.connect(_then_segment)
    show_info(
        f"demo: fine-tuning {DEMO_STEPS} steps on {N_REVIEWED} reviewed slices, "
        "then segmenting the rest"
    )
    return True
