"""What the plugin's actions (segment, click, fine-tune, demo, sessions) need from the
dock widget, as an interface.

The action modules type their ``widget`` argument with :class:`PluginContext`, not with
:class:`~napari_lightm._napari._widget.LightMWidget`, so the widget depends on its
panels and actions and none of them depends on the widget: no import circle, and an
action can be driven by anything that offers these members (a test double included).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from napari_lightm._napari._model_panel import ModelPanel
    from napari_lightm._napari._review import ReviewTracker
    from napari_lightm._napari._workers import JobRunner


class PluginContext(Protocol):
    """The dock widget as its actions see it."""

    viewer: Any  # napari.Viewer
    model: ModelPanel  # the loaded Segmenter, its versions and the model store
    tracker: ReviewTracker  # truth and undoable writes of every linked Labels layer
    runner: JobRunner  # the one background job at a time, its progress and status
    finetune: Any  # the fine-tune panel (its budget and LR fields, start)
    session_dir: Path | None

    @property
    def is_open(self) -> bool: ...

    def current_image(self) -> Any: ...

    def set_image(self, layer: Any) -> None: ...

    def images_with_labels(self) -> list: ...

    def refresh_review(self) -> None: ...

    def on_polarity(self, positive: bool) -> None: ...

    def autosave(self) -> Path: ...


__all__ = ["PluginContext"]
