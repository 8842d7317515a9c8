"""Medical image IO with exact geometry (no Qt)."""

from napari_lightm.io.geometry import Geometry, resample

__all__ = ["Geometry", "resample"]
