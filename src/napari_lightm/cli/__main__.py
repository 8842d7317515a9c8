"""``python -m napari_lightm.cli``: the ``lightm`` command (``torchrun`` uses this form)."""

import sys

from napari_lightm.cli import main

sys.exit(main())
