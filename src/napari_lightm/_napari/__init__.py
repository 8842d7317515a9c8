"""The only part of napari-lightm that imports napari or Qt.

Widgets, workers, manifest callables, keybindings, the launcher.
"""
