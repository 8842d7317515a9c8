"""Model panel: pretrained models, new model, load a checkpoint, recent models, device,
version history.

Pretrained models ship inside the package (:mod:`napari_lightm.engine.zoo`) and are picked
by name. User checkpoints live in the local model store
(:mod:`napari_lightm.engine.store`: ``~/.napari-lightm/models``, or the folder named by
``NAPARI_LIGHTM_MODELS``). Every fine-tuning run saves a new version there
(``<name>_v<NNN>``, never replacing one) and the panel can roll back to any earlier one.
A shipped file is never written: fine-tuning a pretrained model starts a new user model
``<name>-ft`` in the model folder.
"""

from __future__ import annotations

import time
from pathlib import Path

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)
from safetensors import SafetensorError

from napari_lightm.engine import store
from napari_lightm.engine.store import models_dir, recent_models, split_version
from napari_lightm.engine.zoo import find_pretrained, is_shipped, pretrained_models

DEVICES = ("auto", "cuda", "mps", "cpu")
#: "few-slice": the fine-tuning recipe's model (engine.recipe.DEFAULT_RECIPE: narrow, at
#: the recipe's in-plane spacing), what learns most from a few reviewed slices
CONFIGS = ("few-slice", "light", "repo")
#: what a slot that calls the core catches and shows as one notification
CORE_ERRORS = (ValueError, OSError, RuntimeError, SafetensorError)
#: what every "no model" message says: the ways to get one
NO_MODEL = (
    "no model: pick a pretrained one and press Use, press the Demo button, "
    "or create a New model / Load… a checkpoint"
)
#: suffix of the user model that fine-tuning a shipped model starts
FINETUNED_SUFFIX = "-ft"


class ShippedModelWriteError(ValueError):
    """A save would write into the package's folder of shipped models."""


def parse_class_names(text: str) -> list[str]:
    """``"liver, kidney"`` -> ``["background", "liver", "kidney"]`` (background added once)."""
    names = [n.strip() for n in text.replace(";", ",").split(",") if n.strip()]
    if not names:
        raise ValueError("give at least one class name, e.g. 'liver, kidney'")
    if names[0].lower() != "background":
        names.insert(0, "background")
    if len(set(names)) != len(names):
        raise ValueError(f"class names repeat: {names}")
    return names


class ModelPanel(QGroupBox):
    """Holds the current :class:`~napari_lightm.engine.Segmenter` and its version history.

    Signals:
        model_changed(object): the current segmenter (or None) changed.
    """

    model_changed = Signal(object)

    def __init__(self, parent: QWidget | None = None):
        super().__init__("Model", parent)
        self.segmenter = None
        self.name = ""
        self.history: list[tuple[int, Path]] = []  # (version, checkpoint path) of this model
        self.modality_hint = "CT"  # of the picked image; the widget keeps it current
        self.spacing_hint: tuple[float, ...] | None = None  # the picked image's, mm
        self.pretrained_model = None  # the shipped model the current lineage comes from
        self.card_dialog = self.card_view = None  # the last model card shown
        layout = QVBoxLayout(self)

        box = QGroupBox("Pretrained")
        box_layout = QVBoxLayout(box)
        row = QHBoxLayout()
        self.pretrained = QComboBox()
        self.pretrained.setToolTip("models shipped with napari-lightm, ready to segment")
        self.pretrained_button = QPushButton("Use")
        self.pretrained_button.setToolTip("make the pretrained model current (no file dialog)")
        self.card_button = QPushButton("Card…")
        self.card_button.setToolTip("the model card: training data and terms, metrics, limits")
        row.addWidget(self.pretrained, 1)
        row.addWidget(self.pretrained_button)
        row.addWidget(self.card_button)
        box_layout.addLayout(row)
        self.pretrained_info = QLabel()
        self.pretrained_info.setWordWrap(True)
        box_layout.addWidget(self.pretrained_info)
        layout.addWidget(box)

        form = QFormLayout()
        layout.addLayout(form)

        self.dims = QComboBox()
        self.dims.addItems(["3D", "2D"])
        self.dims.setToolTip("3D: one model over the volume; 2D: slice by slice (faster on CPU)")
        self.config = QComboBox()
        self.config.addItems(CONFIGS)
        self.config.setToolTip(
            "few-slice: the fine-tuning recipe's model (8 filters, 1.5 mm in-plane; learns "
            "most from a few reviewed slices); light: f=16 (~1.3M weights); repo: f=32 as "
            "the authors' code"
        )
        row = QHBoxLayout()
        row.addWidget(self.dims)
        row.addWidget(self.config)
        form.addRow("new:", row)
        self.classes = QLineEdit("liver, kidney")
        self.classes.setToolTip("class names, comma separated (background is added)")
        form.addRow("classes:", self.classes)

        buttons = QHBoxLayout()
        self.new_button = QPushButton("New model")
        self.load_button = QPushButton("Load…")
        buttons.addWidget(self.new_button)
        buttons.addWidget(self.load_button)
        layout.addLayout(buttons)

        self.recent = QComboBox()
        self.recent.setToolTip(
            f"checkpoints in the model folder ({models_dir(create=False)})"
        )
        self.recent_button = QPushButton("Open recent")
        row = QHBoxLayout()
        row.addWidget(self.recent, 1)
        row.addWidget(self.recent_button)
        layout.addLayout(row)

        self.versions = QComboBox()
        self.versions.setToolTip("versions saved by fine-tuning; pick one and roll back")
        self.rollback_button = QPushButton("Roll back")
        row = QHBoxLayout()
        row.addWidget(QLabel("version:"))
        row.addWidget(self.versions, 1)
        row.addWidget(self.rollback_button)
        layout.addLayout(row)

        self.device = QComboBox()
        self.device.addItems(DEVICES)
        self.device.setToolTip("auto picks CUDA, then Apple MPS, then CPU")
        form.addRow("device:", self.device)
        self.cpu_notice = QLabel(
            "⚠ Running on CPU: segmentation and fine-tuning are slow. "
            "A CUDA GPU is used automatically when present."
        )
        self.cpu_notice.setWordWrap(True)
        self.cpu_notice.setStyleSheet("color: #f0b040;")
        layout.addWidget(self.cpu_notice)
        self.info = QLabel(NO_MODEL)
        self.info.setWordWrap(True)
        layout.addWidget(self.info)

        self.pretrained_button.clicked.connect(self._on_pretrained)
        self.card_button.clicked.connect(self._on_card)
        self.pretrained.currentIndexChanged.connect(lambda _i: self._show_pretrained())
        self.new_button.clicked.connect(self._on_new)
        self.load_button.clicked.connect(self._on_load)
        self.recent_button.clicked.connect(self._on_recent)
        self.rollback_button.clicked.connect(self._on_rollback)
        self.device.currentTextChanged.connect(self._on_device)
        self.refresh_pretrained()
        self.refresh_recent()
        self._update_device_notice()

    # --- public API ---------------------------------------------------------------
    def device_choice(self) -> str:
        return self.device.currentText()

    def resolved_device(self) -> str:
        """``cuda``/``mps``/``cpu`` the chosen option maps to on this machine."""
        from napari_lightm.engine import pick_device

        device = pick_device(self.device_choice())
        return str(getattr(device, "type", device)).split(":")[0]

    def new_model(
        self,
        spatial_dims: int,
        class_names: list[str],
        modality: str = "CT",
        config: str = "light",
        **model_kwargs,
    ):
        """Create an untrained segmenter and make it current.

        ``config`` "few-slice" builds the fine-tuning recipe's model
        (:func:`~napari_lightm.engine.recipe.new_segmenter`) for an image of
        :attr:`spacing_hint` (the picked image's); otherwise ``model_kwargs`` go to
        ``Segmenter.new`` (e.g. ``init_filters=8``, ``patch_size``).
        """
        from napari_lightm.engine import Segmenter

        if config == "few-slice":
            from napari_lightm.engine.recipe import DEFAULT_RECIPE, new_segmenter

            if model_kwargs:
                raise TypeError(f"the few-slice model takes no {sorted(model_kwargs)}")

            seg = new_segmenter(
                class_names,
                self.spacing_hint,
                modality=modality,
                recipe=DEFAULT_RECIPE.replace(spatial_dims=spatial_dims),
                device=self.device_choice(),
            )
        else:
            seg = Segmenter.new(
                spatial_dims,
                class_names,
                modality=modality,
                config=config,
                device=self.device_choice(),
                **model_kwargs,
            )
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.set_segmenter(seg, name=f"{modality.lower()}{spatial_dims}d-{stamp}")
        return seg

    def load_path(self, path: str | Path):
        """Load a checkpoint (file or folder) and make it current; a shipped file is taken
        as that pretrained model (read only)."""
        from napari_lightm.engine import Segmenter

        path = Path(path)
        seg = Segmenter.load(path, device=self.device_choice())
        if is_shipped(path):
            shipped = find_pretrained(path.stem, path.parent)
            self.set_segmenter(seg, name=path.stem, path=path, pretrained=shipped)
            return seg
        name, _ = split_version(path)
        self.pretrained_model = None  # a user checkpoint, even under a shipped model's name
        self.set_segmenter(seg, name=name, path=path)
        return seg

    def load_pretrained(self, name: str):
        """Make the shipped model ``name`` current (its name becomes the model's name)."""
        from napari_lightm.engine import Segmenter

        model = find_pretrained(name)
        if model is None:
            names = ", ".join(m.name for m in pretrained_models()) or "none installed"
            raise ValueError(f"no pretrained model called {name!r} (pretrained: {names})")
        seg = Segmenter.load(model.path, device=self.device_choice())
        self.set_segmenter(seg, name=model.name, path=model.path, pretrained=model)
        return seg

    def set_segmenter(
        self, seg, name: str | None = None, path: Path | None = None, pretrained=None
    ) -> None:
        """Make ``seg`` current; a new lineage ``name`` restarts the version history.

        ``pretrained``: the shipped model ``seg`` was loaded from (fine-tuning it saves a
        new user model, :meth:`save_version`); a new lineage without it is a user model.
        """
        if name is not None and name != self.name:
            self.name = name
            self.history = []
            self.pretrained_model = pretrained
        elif pretrained is not None:
            self.pretrained_model = pretrained
        self.segmenter = seg
        if path is not None and all(v != seg.version for v, _ in self.history):
            self.history.append((int(seg.version), Path(path)))
        self._refresh_versions()
        self._follow_model(seg)
        self._update_info()
        self._update_device_notice()
        self.model_changed.emit(seg)

    def save_version(self, seg=None, parent: Path | None = None) -> Path:
        """Save ``seg`` (default: current) as a new version of this model in the store.

        The number comes from the store (past every saved version of this name) and
        becomes ``seg.version``; ``parent`` is the checkpoint ``seg`` was fine-tuned from.
        Raises ValueError / OSError with nothing changed here when the save fails.
        """
        seg = self.segmenter if seg is None else seg
        if seg is None:
            raise ValueError("no model to save")
        folder = models_dir()
        if is_shipped(folder):
            raise ShippedModelWriteError(
                f"the model folder {folder} is inside the package's shipped models; "
                "set NAPARI_LIGHTM_MODELS to a folder of your own"
            )
        name = self.save_name()
        saved = store.save_version(seg, name, folder=folder, parent=parent)
        assert not is_shipped(saved), saved  # shipped files are never written
        if name != self.name:  # a pretrained model's fine-tune: a user model from now on
            self.name, self.pretrained_model = name, None
        self.history = [(v, p) for v, p in self.history if v != seg.version]
        self.history.append((int(seg.version), saved))
        self.history.sort()
        self._refresh_versions()
        self.refresh_recent()
        if seg is self.segmenter:
            self._update_info()  # the store may have given it another number
        return saved

    def current_checkpoint(self) -> Path:
        """The checkpoint of the current model's version, saving it as a version first
        when it has none (so whatever replaces the model can be rolled back to it)."""
        seg = self.segmenter
        if seg is None:
            raise ValueError(NO_MODEL)
        saved = dict(self.history).get(seg.version)
        return saved if saved is not None else self.save_version(seg)

    def save_name(self) -> str:
        """The name a new version is saved under: the model's, or ``<name>-ft`` for a
        pretrained (shipped) model, whose own file is never written."""
        name = self.name or "model"
        if self.pretrained_model is not None:
            return f"{name}{FINETUNED_SUFFIX}"
        return name

    def rollback(self, version: int):
        """Load the saved checkpoint of ``version`` and make it current."""
        from napari_lightm.engine import Segmenter

        paths = dict(self.history)
        if version not in paths:
            raise ValueError(f"no saved checkpoint for version {version}")
        seg = Segmenter.load(paths[version], device=self.device_choice())
        self.set_segmenter(seg)
        return seg

    def refresh_pretrained(self) -> None:
        """List the shipped models by name, each with its one-line description."""
        self.pretrained.clear()
        for model in pretrained_models():
            self.pretrained.addItem(model.name, model.name)
            self.pretrained.setItemData(
                self.pretrained.count() - 1, model.describe(), Qt.ItemDataRole.ToolTipRole
            )
        has_any = self.pretrained.count() > 0
        self.pretrained_button.setEnabled(has_any)
        self.card_button.setEnabled(has_any)
        self._show_pretrained()

    def card_text(self, name: str | None = None) -> str:
        """The model card (markdown) of the shipped model ``name`` (default: the picked one)."""
        model = find_pretrained(name or self.pretrained.currentData() or "")
        if model is None:
            return ""
        return model.card_text() or f"{model.describe()}\n\n(no model card shipped)"

    def refresh_recent(self) -> None:
        self.recent.clear()
        for path in recent_models():
            self.recent.addItem(path.name, str(path))

    # --- slots --------------------------------------------------------------------
    def _notify(self, exc: Exception) -> None:
        from napari.utils.notifications import show_error

        show_error(str(exc))

    def _on_pretrained(self) -> None:
        name = self.pretrained.currentData()
        if not name:
            return
        try:
            self.load_pretrained(name)
        except CORE_ERRORS as exc:
            self._notify(exc)

    def _on_card(self) -> None:
        name = self.pretrained.currentData()
        if not name:
            return
        dialog = QDialog(self)
        dialog.setWindowTitle(f"Model card: {name}")
        layout = QVBoxLayout(dialog)
        text = QTextBrowser()
        text.setOpenExternalLinks(True)
        text.setMarkdown(self.card_text(name))
        layout.addWidget(text)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(dialog.reject)
        layout.addWidget(buttons)
        dialog.resize(640, 560)
        self.card_dialog, self.card_view = dialog, text  # kept: tests and scripts read them
        dialog.open()

    def _on_new(self) -> None:
        try:
            names = parse_class_names(self.classes.text())
            dims = 3 if self.dims.currentText() == "3D" else 2
            self.new_model(
                dims,
                names,
                modality=self.modality_hint,
                config=self.config.currentText(),
            )
        except CORE_ERRORS as exc:
            self._notify(exc)

    def _on_load(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self,
            "Load LightM-UNet checkpoint",
            str(models_dir(create=False)),
            "Checkpoints (*.safetensors *.json);;All files (*)",
        )
        if path:
            self._load_guarded(Path(path))

    def _on_recent(self) -> None:
        data = self.recent.currentData()
        if data:
            self._load_guarded(Path(data))

    def _load_guarded(self, path: Path) -> None:
        try:
            self.load_path(path)
        except CORE_ERRORS as exc:
            self._notify(exc)

    def _on_rollback(self) -> None:
        version = self.versions.currentData()
        if version is None:
            return
        try:
            self.rollback(int(version))
        except CORE_ERRORS as exc:
            self._notify(exc)

    def _on_device(self, _text: str) -> None:
        self._update_device_notice()
        seg = self.segmenter
        if seg is None or str(seg.device).split(":")[0] == self.resolved_device():
            return
        try:  # move the current model: through a saved version, so nothing is lost
            mover = getattr(seg, "to", None)
            if callable(mover):
                self.segmenter = mover(self.device_choice()) or seg
            else:
                path = self.save_version(seg)
                self.segmenter = type(seg).load(path, device=self.device_choice())
            self._update_info()
            self.model_changed.emit(self.segmenter)
        except CORE_ERRORS as exc:
            self._notify(exc)

    # --- display ------------------------------------------------------------------
    def _show_pretrained(self) -> None:
        model = find_pretrained(self.pretrained.currentData() or "")
        if model is None:
            self.pretrained_info.setText("no pretrained models installed")
            return
        self.pretrained_info.setText(model.describe())
        self.pretrained_info.setToolTip(model.describe())
        self.pretrained.setToolTip(model.describe())

    def _follow_model(self, seg) -> None:
        """The "new model" fields show the current model's dimensions and classes."""
        self.dims.setCurrentText(f"{seg.spatial_dims}D")
        self.classes.setText(", ".join(seg.class_names[1:]))
        if seg.modality in ("CT", "MR", "XR"):
            self.modality_hint = seg.modality

    def _refresh_versions(self) -> None:
        self.versions.clear()
        for version, path in self.history:
            self.versions.addItem(f"v{version}  ({path.name})", version)
        if self.history:
            self.versions.setCurrentIndex(len(self.history) - 1)

    def _update_info(self) -> None:
        seg = self.segmenter
        if seg is None:
            self.info.setText(NO_MODEL)
            return
        info = seg.info() if callable(getattr(seg, "info", None)) else {}
        config = info.get("config", "?") if isinstance(info, dict) else "?"
        if isinstance(config, dict):
            config = config.get("name", ", ".join(f"{k}={v}" for k, v in config.items()))
        classes = ", ".join(seg.class_names[1:])
        origin = " &middot; pretrained (read only)" if self.pretrained_model is not None else ""
        spacing = seg.spacing
        scale = (
            f" &middot; {' x '.join(f'{s:g}' for s in spacing)} mm" if spacing else ""
        )
        self.info.setText(
            f"<b>{self.name or 'model'}</b> v{seg.version}{origin}<br>"
            f"{seg.spatial_dims}D {seg.modality} &middot; {config}{scale}<br>"
            f"classes: {classes}<br>"
            f"device: {seg.device} &middot; scan backend: {seg.backend}"
        )

    def _update_device_notice(self) -> None:
        try:
            device = (
                str(self.segmenter.device) if self.segmenter is not None else self.resolved_device()
            )
        except (ImportError, ValueError, RuntimeError):
            device = "cpu"
        self.cpu_notice.setVisible(device.split(":")[0] == "cpu")
