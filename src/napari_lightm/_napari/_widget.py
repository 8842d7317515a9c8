"""The dock widget: a QWidget shell that gathers inputs, calls the core and applies results.

The parts live in their own modules: model panel (``_model_panel``), pixel spacing
(``_spacing_row``), segmentation (``_segment``), click-to-segment (``_click``), reviewed
slices and undoable writes (``_review``, ``_review_panel``), fine-tuning
(``_finetune_panel``), sessions (``_session``), the demo (``_demo``), the one key table
(``_keybindings``) and the worker runner (``_workers``). They take the widget as a
:class:`~napari_lightm._napari.context.PluginContext` and never import it.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from napari_lightm import __version__
from napari_lightm._napari import _keybindings as keys
from napari_lightm._napari._classes_panel import ClassesPanel
from napari_lightm._napari._click import ClickController
from napari_lightm._napari._finetune_panel import FinetunePanel
from napari_lightm._napari._model_panel import CORE_ERRORS, NO_MODEL, ModelPanel
from napari_lightm._napari._review import (
    IMAGE_ID_KEY,
    IMAGE_KEY,
    ReviewTracker,
    ensure_labels,
    find_labels,
    image_id,
)
from napari_lightm._napari._review_panel import ReviewPanel
from napari_lightm._napari._spacing_row import SpacingRow
from napari_lightm._napari._workers import JobRunner, alive
from napari_lightm.engine.store import lightm_home

if TYPE_CHECKING:
    import napari


def _button(action: str) -> QPushButton:
    button = QPushButton(keys.button_text(action))
    button.setToolTip(keys.tooltip(action))
    return button


class LightMWidget(QWidget):
    """LightM-UNet segmentation panel docked in napari.

    Public attributes used by tests and scripts: ``viewer``, ``model`` (ModelPanel),
    ``runner`` (JobRunner), ``tracker`` (ReviewTracker), ``clicks`` (ClickController),
    ``finetune`` (FinetunePanel), ``session_dir``.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.setObjectName("LightMWidget")
        self.session_dir: Path | None = None
        # everything sits in a scroll area: a short napari window must not squash rows
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        content = QWidget()
        scroll.setWidget(content)
        outer.addWidget(scroll)
        layout = QVBoxLayout(content)
        self.title = QLabel(f"<b>LightM-UNet</b> segmentation &middot; v{__version__}")
        layout.addWidget(self.title)

        row = QHBoxLayout()
        row.addWidget(QLabel("image:"))
        self.image_picker = QComboBox()
        self.image_picker.setToolTip("the image to segment")
        row.addWidget(self.image_picker, 1)
        layout.addLayout(row)
        # pixel spacing: read from the file, else estimated for the model and editable
        self.spacing_row = SpacingRow(self, lambda func, *args: self._guard_io(func, *args))
        layout.addWidget(self.spacing_row)
        self.spacing, self.spacing_note = self.spacing_row.box, self.spacing_row.note

        self.model = ModelPanel()
        layout.addWidget(self.model)
        self.classes = ClassesPanel(self, lambda func, *args: self._guard_io(func, *args))
        layout.addWidget(self.classes)

        # --- segment ---------------------------------------------------------------
        box = QGroupBox("Segment")
        seg_layout = QVBoxLayout(box)
        row = QHBoxLayout()
        self.segment_image_button = _button("segment_image")
        self.segment_slice_button = _button("segment_slice")
        self.segment_box_button = _button("segment_box")
        for b in (self.segment_image_button, self.segment_slice_button, self.segment_box_button):
            row.addWidget(b)
        seg_layout.addLayout(row)
        row = QHBoxLayout()
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.setFormat("idle")
        self.cancel_button = _button("cancel")
        self.cancel_button.setEnabled(False)
        row.addWidget(self.progress, 1)
        row.addWidget(self.cancel_button)
        seg_layout.addLayout(row)
        row = QHBoxLayout()
        self.click_button = _button("click_mode")
        self.polarity_button = _button("toggle_polarity")
        self.polarity_label = QLabel()
        row.addWidget(self.click_button)
        row.addWidget(self.polarity_button)
        row.addWidget(self.polarity_label)
        seg_layout.addLayout(row)
        layout.addWidget(box)

        self.review = ReviewPanel(self, _button("mark_reviewed"))
        layout.addWidget(self.review)
        # the box's parts, by the names tests and scripts use
        self.mark_button, self.review_strip = self.review.mark_button, self.review.strip
        self.review_summary = self.review.summary
        self.volumes_button = self.review.volumes_button
        self.volumes_label = self.review.volumes_label

        self.finetune = FinetunePanel(self)
        layout.addWidget(self.finetune)

        row = QHBoxLayout()
        self.save_session_button = QPushButton("Save session…")
        self.open_session_button = QPushButton("Open session…")
        self.demo_button = QPushButton("Demo: train in a minute")
        self.demo_button.setToolTip(
            "open the CT sample if needed, take 3 reference slices as "
            "reviewed, train a small 2D model, segment the rest"
        )
        row.addWidget(self.save_session_button)
        row.addWidget(self.open_session_button)
        layout.addLayout(row)
        layout.addWidget(self.demo_button)
        layout.addStretch(1)

        self.runner = JobRunner(self.progress, self)
        self.tracker = ReviewTracker(on_change=lambda _layer: self.refresh_review())
        self.clicks = ClickController(self)
        self._napari_connections: list = []  # (emitter, callback), cut on teardown
        self._closed = False
        self._actions = self._connect()
        self._bound_keys = keys.bind_all(self.viewer, self._actions)
        # closing the viewer deletes this widget without a closeEvent: tear down then
        # too (a plain callable: it runs while the widget's Qt object goes away)
        self.destroyed.connect(partial(LightMWidget._teardown, self))
        self.refresh_images()
        self.on_polarity(True)

    # --- wiring -------------------------------------------------------------------
    def _connect(self) -> dict:
        from napari_lightm._napari import _demo, _segment

        actions = {
            "segment_image": lambda: self._guard(_segment.start_segment, self, "image"),
            "segment_slice": lambda: self._guard(_segment.start_segment, self, "slice"),
            "segment_box": lambda: self._guard(_segment.start_segment, self, "box"),
            "segment_unreviewed": lambda: self._guard(_segment.start_segment, self, "unreviewed"),
            "click_mode": lambda: self._guard_io(self.enter_click_mode),
            "toggle_polarity": self.clicks.toggle,
            "mark_reviewed": lambda: self._guard_io(self.mark_current_reviewed),
            "finetune": lambda: self._guard(self.start_finetune),
            "cancel": self.runner.cancel,
        }
        buttons = {
            "segment_image": self.segment_image_button,
            "segment_slice": self.segment_slice_button,
            "segment_box": self.segment_box_button,
            "segment_unreviewed": self.finetune.unreviewed_button,
            "click_mode": self.click_button,
            "toggle_polarity": self.polarity_button,
            "mark_reviewed": self.mark_button,
            "cancel": self.cancel_button,
        }
        # the panel's own connection starts without checking for a model: ours says what to do
        try:
            self.finetune.finetune_button.clicked.disconnect(self.finetune.start)
        except (TypeError, RuntimeError):  # wired otherwise: leave the panel's connection
            pass
        else:
            buttons["finetune"] = self.finetune.finetune_button
        for action, button in buttons.items():
            button.clicked.connect(lambda _checked=False, a=action: actions[a]())
        self.save_session_button.clicked.connect(self._on_save_session)
        self.open_session_button.clicked.connect(self._on_open_session)
        self.demo_button.clicked.connect(lambda: self._guard_io(_demo.start_demo, self))
        self.runner.busy_changed.connect(self._on_busy)
        self.image_picker.currentIndexChanged.connect(lambda _i: self._on_image_picked())
        self.model.model_changed.connect(lambda _seg: self._on_model_changed())
        events = self.viewer.layers.events
        for emitter, callback in (
            (events.inserted, self._on_layers_changed),
            (events.inserted, self._on_layer_inserted),
            (events.removed, self._on_layers_changed),
            (events.reordered, self._on_layers_changed),
            (self.viewer.layers.selection.events.active, self._on_active_layer),
            (self.viewer.dims.events.current_step, self._on_step),
        ):
            self._listen(emitter, callback)
        return actions

    def _listen(self, emitter, callback) -> None:
        """Connect a napari event to this widget until it closes (once per pair)."""
        if (emitter, callback) not in self._napari_connections:
            emitter.connect(callback)
            self._napari_connections.append((emitter, callback))

    def _guard(self, func, *args):
        """Run an action unless a job is running (keys stay live while buttons are off);
        an error from the core becomes a notification (:meth:`_guard_io`)."""
        if self.runner.busy:
            from napari.utils.notifications import show_info

            show_info(
                f"busy with '{self.runner.name}'; press Cancel [{keys.KEYBINDINGS['cancel'].key}]"
            )
            return False
        return self._guard_io(func, *args)

    def _on_busy(self, busy: bool) -> None:
        for button in (
            self.segment_image_button,
            self.segment_slice_button,
            self.segment_box_button,
            self.finetune.finetune_button,
            self.finetune.unreviewed_button,
            self.demo_button,
            self.model.pretrained_button,
            self.model.new_button,
            self.model.load_button,
            self.model.recent_button,
            self.model.rollback_button,
            self.open_session_button,
        ):
            button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)

    def _on_layers_changed(self, event=None) -> None:
        if not self.is_open:
            return
        self.refresh_images()
        layer = getattr(event, "value", None)
        from napari.layers import Labels

        if isinstance(layer, Labels) and (
            layer.metadata.get(IMAGE_ID_KEY) or layer.metadata.get(IMAGE_KEY)
        ):
            self.tracker.track(layer)
            self.classes.apply_to_layers()  # a new linked layer shows the model's classes

    def _on_layer_inserted(self, event=None) -> None:
        """A newly opened image becomes the picked one."""
        from napari.layers import Image

        layer = getattr(event, "value", None)
        if self.is_open and isinstance(layer, Image):
            self.set_image(layer)

    def _on_active_layer(self, event=None) -> None:
        """The picker follows the layer the user selects: an image, or the image that a
        selected Labels layer belongs to."""
        from napari.layers import Image, Labels

        if not self.is_open:
            return
        layer = self.viewer.layers.selection.active
        if isinstance(layer, Labels):
            uid = layer.unique_id  # layers may come wrapped in proxies: compare identities
            layer = next(
                (
                    image
                    for image in self.image_layers()
                    if getattr(find_labels(self.viewer, image), "unique_id", None) == uid
                ),
                None,
            )
        if isinstance(layer, Image):
            self.set_image(layer)

    def _on_model_changed(self) -> None:
        self.refresh_spacing()
        self.refresh_review()
        self.classes.refresh()

    def _on_step(self, event=None) -> None:
        self.refresh_review()

    # --- images -------------------------------------------------------------------
    def image_layers(self) -> list:
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def refresh_images(self) -> None:
        """List the open images by name; the picked one stays picked (by identity, so a
        rename keeps it)."""
        if not self.is_open:
            return
        current = self.image_picker.currentData()
        layers = self.image_layers()
        ids = [image_id(layer) for layer in layers]
        self.image_picker.blockSignals(True)
        self.image_picker.clear()
        for layer, uid in zip(layers, ids):
            self.image_picker.addItem(layer.name, uid)
            self._listen(layer.events.name, self._on_image_renamed)
        if current in ids:
            self.image_picker.setCurrentIndex(ids.index(current))
        elif ids:
            self.image_picker.setCurrentIndex(len(ids) - 1)
        self.image_picker.blockSignals(False)
        self._on_image_picked()

    def _on_image_renamed(self, event=None) -> None:
        self.refresh_images()

    def _on_image_picked(self) -> None:
        """Offer the picked image's classes and modality for a new model while no model is
        loaded (a loaded model's own dimensions and classes stay shown)."""
        from napari_lightm._napari._segment import layer_geometry

        image = self.current_image()
        if image is not None:  # what "New model" builds for, with or without a model loaded
            geometry = layer_geometry(image)
            self.model.spacing_hint = None if geometry.units == "pixel" else geometry.scale
        if image is not None and self.model.segmenter is None:
            names = image.metadata.get("class_names")
            if names:
                self.model.classes.setText(", ".join(n for n in names if n != "background"))
            modality = (image.metadata.get("geometry") or {}).get("modality", "")
            self.model.modality_hint = modality if modality in ("CT", "MR", "XR") else "CT"
            # a volume gets a 3D model only when asked: the few-slice recipe's is 2D
            few_slice = self.model.config.currentText() == "few-slice"
            volume = image.data.ndim == 3 and not few_slice
            self.model.dims.setCurrentText("3D" if volume else "2D")
        self.refresh_spacing()
        self.refresh_review()

    # --- pixel spacing ------------------------------------------------------------
    def refresh_spacing(self) -> None:
        if self.is_open:
            self.spacing_row.refresh()

    def set_spacing(self, spacing_mm: float, image_layer=None) -> None:
        """Use ``spacing_mm`` (mm per pixel, in-plane) for an image without a spacing of its
        own (default: the picked one)."""
        self.spacing_row.set_spacing(spacing_mm, image_layer)

    def current_image(self):
        """The picked Image layer (None when no image is open)."""
        uid = self.image_picker.currentData()
        for layer in self.image_layers():
            if image_id(layer) == uid:
                return layer
        return None

    def set_image(self, layer) -> None:
        index = self.image_picker.findData(image_id(layer))
        if index >= 0:
            self.image_picker.setCurrentIndex(index)

    def images_with_labels(self) -> list:
        """Open images that have a linked Labels layer."""
        return [layer for layer in self.image_layers() if find_labels(self.viewer, layer)]

    def labels_layer(self, image_layer=None, create: bool = False):
        """The Labels layer linked to ``image_layer`` (default: picked image)."""
        image_layer = image_layer or self.current_image()
        if image_layer is None:
            return None
        layer = find_labels(self.viewer, image_layer)
        if layer is None and create:
            n = len(self.model.segmenter.class_names) if self.model.segmenter else 256
            layer = ensure_labels(self.viewer, image_layer, n)
        if layer is not None:
            self.tracker.track(layer)
        return layer

    # --- fine-tune ----------------------------------------------------------------
    def start_finetune(self) -> bool:
        """Fine-tune the current model on the truth of the open images (the panel's run);
        without a model, say how to get one."""
        if self.model.segmenter is None:
            from napari.utils.notifications import show_error

            show_error(NO_MODEL)
            return False
        return self.finetune.start()

    # --- review -------------------------------------------------------------------
    def current_slice(self) -> int:
        return self.review.current_slice()

    def mark_current_reviewed(self) -> None:
        """Mark the current slice (whole image in 2D) reviewed, creating labels if needed."""
        labels = self.labels_layer(create=True)
        if labels is not None:
            self.tracker.mark(labels, [self.current_slice()])

    def refresh_review(self) -> None:
        """Show the reviewed slices, and the painted / clicked voxels of the current one."""
        if self.is_open:
            self.review.refresh()

    def show_volumes(self) -> str:
        """Show (and return) the volume in ml of each class in the picked image's labels."""
        return self.review.show_volumes()

    # --- clicks -------------------------------------------------------------------
    def enter_click_mode(self) -> None:
        image = self.current_image()
        if image is None:
            from napari.utils.notifications import show_error

            show_error("open an image first")
            return
        self.clicks.ensure_layer(image)

    def on_polarity(self, positive: bool) -> None:
        self.polarity_label.setText(
            "<b style='color:#3c3'>positive</b> (adds)"
            if positive
            else "<b style='color:#e33'>negative</b> (removes)"
        )

    # --- sessions -----------------------------------------------------------------
    def save_session(self, folder: str | Path) -> Path:
        from napari_lightm._napari import _session

        path = _session.save(self, folder)
        self.session_dir = Path(folder)
        return path

    def open_session(self, folder: str | Path) -> list:
        from napari_lightm._napari import _session

        return _session.open_session(self, folder)

    def autosave(self) -> Path:
        """Save the session to the open session folder, else ``<home>/sessions/autosave``."""
        from napari_lightm._napari import _session

        folder = self.session_dir or lightm_home() / "sessions" / "autosave"
        _session.save(self, folder)
        return Path(folder)

    def _on_save_session(self) -> None:
        folder = QFileDialog.getExistingDirectory(
            self, "Save session into folder", str(self.session_dir or lightm_home())
        )
        if folder:
            self._guard_io(self.save_session, folder)

    def _on_open_session(self) -> None:
        folder = QFileDialog.getExistingDirectory(
            self, "Open session folder", str(self.session_dir or lightm_home())
        )
        if folder:
            self._guard_io(self.open_session, folder)

    def _guard_io(self, func, *args):
        """``func(*args)``; an error from the core (bad input, disk, device, safetensors)
        becomes one notification and None, never an exception out of a Qt slot."""
        from napari.utils.notifications import show_error

        try:
            return func(*args)
        except CORE_ERRORS as exc:
            show_error(str(exc))
            return None

    # --- teardown -----------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        """False once the widget closed or its Qt object was deleted (the viewer closed)."""
        return not self._closed and alive(self)

    def _teardown(self, *_args) -> None:
        """Cancel the running job and cut every napari connection (idempotent).

        Runs from ``closeEvent`` and when the widget is deleted (the viewer closed), so
        it calls nothing on this widget's Qt objects.
        """
        if self._closed:
            return
        self._closed = True
        self.runner.shutdown()
        keys.unbind_all(self.viewer, self._bound_keys)
        self._bound_keys = []
        self.tracker.untrack_all()
        self.clicks.close()
        for emitter, callback in self._napari_connections:
            try:
                emitter.disconnect(callback)
            except (RuntimeError, TypeError, ValueError):
                pass
        self._napari_connections = []

    def closeEvent(self, event) -> None:
        self._teardown()
        super().closeEvent(event)
