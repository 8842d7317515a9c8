"""The one key table: clear of napari's own keys, printed on buttons, bound on the viewer."""

from __future__ import annotations

import pytest

from napari_lightm._napari._keybindings import KEYBINDINGS, NAPARI_KEYS, button_text


def _napari_owned_keys() -> set[str]:
    """Keys napari binds itself: app shortcuts plus every layer type's class keymap."""
    import napari.layers as layers
    from napari.components import ViewerModel
    from napari.utils.key_bindings import coerce_keybinding
    from napari.utils.shortcuts import default_shortcuts

    owned = {
        str(coerce_keybinding(k)) for shortcuts in default_shortcuts.values() for k in shortcuts
    }
    for cls in (layers.Labels, layers.Points, layers.Shapes, layers.Image, ViewerModel):
        owned |= {str(k) for k in cls.class_keymap}
    return owned


def test_table_is_clear_of_napari_keys():
    from napari.utils.key_bindings import coerce_keybinding

    ours = {str(coerce_keybinding(kb.key)) for kb in KEYBINDINGS.values()}
    assert len(ours) == len(KEYBINDINGS), "two actions share a key"
    assert not ours & _napari_owned_keys()
    assert not ours & {str(coerce_keybinding(k)) for k in NAPARI_KEYS}


@pytest.mark.parametrize("action", sorted(KEYBINDINGS))
def test_button_text_prints_the_key(action):
    assert button_text(action).endswith(f"[{KEYBINDINGS[action].key}]")


@pytest.mark.gui
def test_keys_are_bound_on_the_viewer_and_act(make_napari_viewer_proxy):
    from napari.utils.key_bindings import coerce_keybinding

    viewer = make_napari_viewer_proxy(show=False)
    _, widget = viewer.window.add_plugin_dock_widget("napari-lightm", "LightM-UNet")
    buttons = [b.text() for b in widget.findChildren(type(widget.cancel_button))]
    for action, kb in KEYBINDINGS.items():
        assert button_text(action) in buttons
        assert coerce_keybinding(kb.key) in viewer.keymap

    toggle = viewer.keymap[coerce_keybinding(KEYBINDINGS["toggle_polarity"].key)]
    assert widget.clicks.positive
    toggle(viewer)
    assert not widget.clicks.positive
    assert "negative" in widget.polarity_label.text()

    widget.close()  # closing the widget releases its keys
    assert coerce_keybinding(KEYBINDINGS["toggle_polarity"].key) not in viewer.keymap
