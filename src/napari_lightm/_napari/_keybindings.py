"""Every keyboard shortcut of the widget, in one table.

napari's own layer and viewer keys are left alone: E P F L Z M X B S R A D C I O T
V Y, digits, ``-``, ``=``, ``[``, ``]``, Space, Escape, Ctrl+S, Ctrl+Q, Ctrl+Z
(:data:`NAPARI_KEYS` lists them and a test checks the table stays clear of them).
Each key is printed on its button through :func:`button_text`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class KeyBinding:
    """One action of the widget: its shortcut (napari ``Shift-G`` form) and button text."""

    action: str
    key: str
    text: str
    help: str


#: The one table of shortcuts (action name -> binding).
KEYBINDINGS: dict[str, KeyBinding] = {
    kb.action: kb
    for kb in (
        KeyBinding("segment_image", "G", "Segment image", "segment the whole image"),
        KeyBinding("segment_slice", "Shift-G", "Segment slice", "segment the current slice"),
        KeyBinding("segment_box", "H", "Segment box", "segment inside the last drawn box"),
        KeyBinding(
            "segment_unreviewed",
            "Shift-H",
            "Segment unreviewed",
            "re-segment everything except reviewed slices",
        ),
        KeyBinding("click_mode", "K", "Click mode", "add clicks: positive adds, negative removes"),
        KeyBinding(
            "toggle_polarity", "N", "Positive/negative", "toggle the sign of the next click"
        ),
        KeyBinding(
            "mark_reviewed",
            "W",
            "Mark slice reviewed",
            "mark the current slice as reviewed (fully labelled)",
        ),
        KeyBinding(
            "finetune",
            "U",
            "Fine-tune",
            "fine-tune the model on the truth: reviewed slices, painted voxels, clicks",
        ),
        KeyBinding("cancel", "Q", "Cancel", "cancel the running job"),
    )
}

#: Keys napari already owns (layer tools, viewer toggles, app shortcuts).
NAPARI_KEYS = frozenset(
    "E P F L Z M X B S R A D C I O T V Y 0 1 2 3 4 5 6 7 8 9 - = [ ] Space Escape Enter "
    "Backspace Delete Left Right Up Down Control-S Control-Q Control-Z Control-Shift-Z "
    "Control-A Control-C Control-V Control-G Control-E Control-R Control-T Control-Y "
    "Shift-A Shift-L Shift-P Shift-V Shift-Up Shift-Down".split()
)


def button_text(action: str) -> str:
    """Button label with its key, e.g. ``"Segment image [G]"``."""
    kb = KEYBINDINGS[action]
    return f"{kb.text} [{kb.key}]"


def tooltip(action: str) -> str:
    kb = KEYBINDINGS[action]
    return f"{kb.help} (key: {kb.key})"


def bind_all(viewer, handlers: dict[str, Callable[[], object]]) -> list[str]:
    """Bind each action in ``handlers`` to its key on ``viewer``; returns the keys bound.

    The napari callback receives the viewer; our handlers take no argument, so each is
    wrapped. ``overwrite=True`` lets a re-docked widget replace its own earlier bindings.
    """
    bound = []
    for action, handler in handlers.items():
        key = KEYBINDINGS[action].key

        def _callback(_viewer, _handler=handler):
            _handler()

        viewer.bind_key(key, _callback, overwrite=True)
        bound.append(key)
    return bound


def unbind_all(viewer, keys: list[str]) -> None:
    """Remove the bindings made by :func:`bind_all`."""
    for key in keys:
        try:
            viewer.bind_key(key, None)
        except (KeyError, ValueError):  # already gone (viewer closing)
            pass
