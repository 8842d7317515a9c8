"""The only part of napari-lightm that imports napari or Qt: widgets, workers, manifest callables."""
