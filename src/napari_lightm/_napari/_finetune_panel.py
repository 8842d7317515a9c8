"""Fine-tune panel: train the current model on the truth of every open image.

Truth is the reviewed slices (fully labelled: 0 = background there), the voxels the
user painted or erased, and the disc around each click; everything else is ignored
by the loss (``annotation.Annotation.truth``). The run goes through
``engine.iter_finetune`` in the widget's worker with a time and step budget, draws its
loss curve live, and on success saves the new model version in the model folder and
autosaves the session.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import QPointF
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import (
    QComboBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_lightm._napari._keybindings import button_text, tooltip
from napari_lightm._napari._model_panel import CORE_ERRORS
from napari_lightm._napari._review import find_labels
from napari_lightm._napari._segment import image_array, layer_geometry
from napari_lightm._napari._workers import alive
from napari_lightm.engine.recipe import DEFAULT_RECIPE

if TYPE_CHECKING:
    from napari_lightm._napari.context import PluginContext


#: learning rates offered; "auto" = the fine-tuning recipe's (engine.recipe.DEFAULT_RECIPE:
#: ``lr`` for a model that never trained, ``lr_trained`` after that)
LEARNING_RATES = ("auto", "1e-4", "3e-4", "1e-3", "3e-3", "1e-2")


class NothingReviewedError(ValueError):
    """Fine-tuning was asked for with no truth (reviewed, painted, clicked) in any image."""


class LossPlot(QWidget):
    """A small live loss curve (QPainter; no plotting dependency)."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.losses: list[float] = []
        self.setMinimumHeight(90)
        self.setToolTip("fine-tuning loss per step")

    def clear(self) -> None:
        self.losses = []
        self.update()

    def add(self, loss: float) -> None:
        self.losses.append(float(loss))
        self.update()

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        w, h, pad = self.width(), self.height(), 6
        painter.fillRect(0, 0, w, h, QColor(30, 30, 34))
        painter.setPen(QColor(200, 200, 200))
        if not self.losses:
            painter.drawText(pad, h // 2, "loss curve appears during fine-tuning")
            painter.end()
            return
        values = np.asarray(self.losses, float)
        lo, hi = float(values.min()), float(values.max())
        span = hi - lo or 1.0
        n = max(len(values) - 1, 1)
        points = QPolygonF(
            [
                QPointF(pad + (w - 2 * pad) * i / n, pad + (h - 2 * pad - 12) * (hi - v) / span)
                for i, v in enumerate(values)
            ]
        )
        painter.setPen(QPen(QColor(90, 180, 255), 1.5))
        painter.drawPolyline(points)
        painter.setPen(QColor(220, 220, 220))
        painter.drawText(
            pad, h - 3, f"step {len(values)}  loss {values[-1]:.4f}  (min {lo:.4f}, max {hi:.4f})"
        )
        painter.end()


def preload_training_modules() -> None:
    """Import what torch's optimizers pull in lazily, on the main thread, before training.

    The first ``torch.optim`` optimizer imports ``torch._dynamo``; the core keeps Triton
    out of that import on CPU-only machines (:mod:`napari_lightm._triton_guard`).
    """
    from napari_lightm._triton_guard import keep_triton_out

    keep_triton_out()
    import torch._dynamo  # noqa: F401


def gather_samples(widget: PluginContext) -> tuple[list, list[str]]:
    """``FinetuneSample`` per open image with truth, and a line per image used.

    Each sample's ``reviewed`` mask is the image's truth: reviewed slices OR painted
    voxels OR click discs. Raises :class:`NothingReviewedError` when no image has any.
    """
    seg = widget.model.segmenter
    samples, used = [], []
    for layer in widget.images_with_labels():
        labels = find_labels(widget.viewer, layer)
        state = widget.tracker.annotation(labels)  # with napari's undo/redo applied
        if not state.has_truth():
            continue
        image = image_array(layer)
        if seg is not None and seg.spatial_dims == 3 and image.ndim == 2:
            continue  # a 3D model cannot learn from a 2D image
        samples.append(state.finetune_sample(image, labels.data, layer_geometry(layer)))
        n_marked = state.n_marked()
        used.append(
            f"{layer.name}: {int(state.reviewed.sum())} reviewed slice(s)"
            + (f", {n_marked} painted/clicked voxel(s)" if n_marked else "")
        )
    if not samples:
        raise NothingReviewedError(
            "nothing to learn from: mark slices reviewed, paint corrections or click first"
        )
    return samples, used


class FinetunePanel(QGroupBox):
    """Budget, Fine-tune / Segment unreviewed buttons, the loss curve and a summary line."""

    def __init__(self, widget: PluginContext, parent: QWidget | None = None):
        super().__init__("Correct && retrain", parent)
        self.widget = widget
        self._parent = None  # checkpoint of the model the running fine-tune started from
        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        self.max_seconds = QSpinBox()
        self.max_seconds.setRange(0, 24 * 3600)
        self.max_seconds.setValue(60)
        self.max_seconds.setSuffix(" s")
        self.max_seconds.setToolTip("time budget (0 = no limit)")
        self.max_steps = QSpinBox()
        self.max_steps.setRange(0, 1_000_000)
        self.max_steps.setValue(0)
        self.max_steps.setSuffix(" steps")
        self.max_steps.setToolTip("step budget (0 = no limit)")
        self.lr = QComboBox()
        self.lr.addItems(LEARNING_RATES)
        self.lr.setToolTip(
            f"learning rate; auto: the fine-tuning recipe's ({DEFAULT_RECIPE.lr:g} for a new "
            f"model, {DEFAULT_RECIPE.lr_trained:g} after that), decaying over the budget"
        )
        row.addWidget(QLabel("budget:"))
        row.addWidget(self.max_seconds)
        row.addWidget(self.max_steps)
        row.addWidget(QLabel("lr:"))
        row.addWidget(self.lr)
        layout.addLayout(row)
        row = QHBoxLayout()
        self.finetune_button = QPushButton(button_text("finetune"))
        self.finetune_button.setToolTip(tooltip("finetune"))
        self.unreviewed_button = QPushButton(button_text("segment_unreviewed"))
        self.unreviewed_button.setToolTip(tooltip("segment_unreviewed"))
        row.addWidget(self.finetune_button)
        row.addWidget(self.unreviewed_button)
        layout.addLayout(row)
        self.plot = LossPlot()
        layout.addWidget(self.plot)
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        layout.addWidget(self.summary)
        self.finetune_button.clicked.connect(self.start)

    def budget(self) -> tuple[int | None, float | None]:
        steps, seconds = self.max_steps.value(), self.max_seconds.value()
        if not steps and not seconds:
            seconds = 60  # never unbounded from the GUI
        return (steps or None), (float(seconds) or None)

    def learning_rate(self) -> float | None:
        """The chosen LR; None lets the recipe pick it."""
        text = self.lr.currentText()
        return None if text == "auto" else float(text)

    def start(self) -> bool:
        """Start fine-tuning in the worker; False (with a notification) on bad input."""
        from napari.utils.notifications import show_error

        from napari_lightm.engine import iter_finetune

        widget = self.widget
        seg = widget.model.segmenter
        try:
            if seg is None:
                raise ValueError("no model: create a new one or load a checkpoint first")
            samples, used = gather_samples(widget)
            # the lineage of the result, saved so this run can be rolled back
            self._parent = widget.model.current_checkpoint()
        except CORE_ERRORS as exc:
            show_error(str(exc))
            return False
        steps, seconds = self.budget()
        lr = self.learning_rate()
        preload_training_modules()
        self.plot.clear()
        self.summary.setText("training on " + "; ".join(used))
        widget.runner.progressed.connect(self._on_progress)

        def _gen(token):
            return (
                yield from iter_finetune(
                    seg, samples, recipe=DEFAULT_RECIPE, max_steps=steps, max_seconds=seconds,
                    lr=lr, cancel=token,
                )
            )

        widget.runner.busy_changed.connect(self._on_busy)
        widget.runner.start("fine-tune", _gen, self._on_result)
        return True

    def _on_progress(self, p) -> None:
        if p.loss is not None and alive(self.plot):
            self.plot.add(p.loss)

    def _on_busy(self, busy: bool) -> None:
        if busy or not alive(self):
            return
        for signal, slot in (
            (self.widget.runner.progressed, self._on_progress),
            (self.widget.runner.busy_changed, self._on_busy),
        ):
            try:
                signal.disconnect(slot)
            except (TypeError, RuntimeError):
                pass
        if self.widget.runner.last_status == "cancelled":
            self.summary.setText(self.summary.text() + " — cancelled; model unchanged")

    def _on_result(self, new_seg) -> None:
        """Save the new version, then make it current: a failed save keeps the old model."""
        from napari.utils.notifications import show_error, show_info

        widget = self.widget
        try:
            path = widget.model.save_version(new_seg, parent=self._parent)
        except CORE_ERRORS as exc:
            self.summary.setText(f"fine-tuned model not saved ({exc}); model unchanged")
            show_error(f"fine-tuned model not saved, the current model stays: {exc}")
            return
        widget.model.set_segmenter(new_seg)
        try:
            session = f"session autosaved to '{widget.autosave().name}'"
        except CORE_ERRORS as exc:
            session = "session NOT autosaved"
            show_error(f"fine-tuned model saved, but the session autosave failed: {exc}")
        last = f"{self.plot.losses[-1]:.4f}" if self.plot.losses else "n/a"
        self.summary.setText(
            f"v{new_seg.version} saved to {path.name} after {len(self.plot.losses)} steps "
            f"(last loss {last}); {session}. "
            f"Press '{button_text('segment_unreviewed')}' to refresh the rest."
        )
        show_info(f"fine-tuned model v{new_seg.version} saved ({path})")
