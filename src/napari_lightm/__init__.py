"""napari-lightm: LightM-UNet segmentation for napari, with a CLI and a pure-torch core."""

__version__ = "0.1.0"

__all__ = ["__version__"]
