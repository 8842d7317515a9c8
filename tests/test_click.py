"""Click-to-segment geometry: the window around a click and the component under it."""

from __future__ import annotations

import numpy as np
import pytest

from napari_lightm._napari._click import (
    CLICK_WINDOW_2D,
    CLICK_WINDOW_3D,
    click_index,
    click_roi,
    component_at,
)
from napari_lightm._napari._segment import SegmentInputError


@pytest.mark.parametrize(
    ("shape", "index", "dims", "expected"),
    [
        ((40, 300, 300), (5, 150, 10), 2, (1, *CLICK_WINDOW_2D)),
        ((40, 300, 300), (39, 299, 299), 3, CLICK_WINDOW_3D),
        ((10, 50, 60), (3, 20, 30), 3, (10, 50, 60)),  # window larger than the image
        ((300, 200), (0, 199), 2, CLICK_WINDOW_2D),
    ],
)
def test_click_roi_contains_the_click_and_stays_inside(shape, index, dims, expected):
    roi = click_roi(shape, index, dims)
    assert tuple(s.stop - s.start for s in roi) == expected
    for s, i, n in zip(roi, index, shape):
        assert 0 <= s.start <= i < s.stop <= n


def test_component_at_picks_only_the_touched_object():
    mask = np.zeros((10, 10), bool)
    mask[1:4, 1:4] = True
    mask[6:9, 6:9] = True
    comp = component_at(mask, (2, 2))
    assert comp.sum() == 9 and comp[1:4, 1:4].all() and not comp[6:9, 6:9].any()
    assert not component_at(mask, (5, 5)).any()


def test_click_index_uses_world_to_data_and_refuses_outside():
    from napari.layers import Image

    layer = Image(np.zeros((4, 20, 20)), scale=(3.0, 0.5, 0.5), translate=(10, 0, 0))
    assert click_index(layer, (16.0, 5.0, 2.0)) == (2, 10, 4)
    with pytest.raises(SegmentInputError, match="outside the image"):
        click_index(layer, (100.0, 5.0, 2.0))
