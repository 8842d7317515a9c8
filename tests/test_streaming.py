"""A 2D model over a volume runs part by part: same labels, memory of one part."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

import napari_lightm.engine.inference as inference
from napari_lightm.engine import Cancelled, CancelToken, Segmenter
from napari_lightm.io.phantoms import ct_phantom


def _model(spacing):
    torch.manual_seed(0)
    seg = Segmenter.new(2, ["background", "liver", "spine"], "CT", init_filters=8,
                        patch_size=(32, 32), spacing=spacing[1:], device="cpu")
    with torch.no_grad():  # a random model whose classes all win somewhere
        for p in seg.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return seg


@pytest.fixture
def parts_of(monkeypatch):
    def set_planes(n: int, plane_voxels: int) -> None:
        monkeypatch.setitem(inference.PART_VOXELS, "cpu", n * plane_voxels)

    return set_planes


def test_parts_give_the_labels_of_one_pass(parts_of):
    image, _, geometry = ct_phantom(seed=0, shape=(14, 48, 40), spacing=(2.5, 2.0, 2.0))
    seg = _model(geometry.scale)
    whole_proba = seg.predict_proba(image, geometry)
    whole = seg.predict(image, geometry)
    roi = (slice(4, 11), slice(5, 30), slice(0, 33))
    whole_roi = seg.predict_proba(image, geometry, roi=roi)
    parts_of(3, 48 * 40)
    calls = []
    seg.model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    proba = seg.predict_proba(image, geometry)
    labels = seg.predict(image, geometry)
    assert 1 < max(calls) <= 3  # no forward pass holds more slices than one part
    np.testing.assert_allclose(proba, whole_proba, atol=1e-3)  # batch rounding only
    top2 = np.sort(whole_proba, axis=0)[-2:]
    clear = (top2[1] - top2[0]) > 1e-2
    assert len(np.unique(whole)) == 3
    np.testing.assert_array_equal(labels[clear], whole[clear])
    np.testing.assert_allclose(seg.predict_proba(image, geometry, roi=roi), whole_roi,
                               atol=1e-3)


def test_progress_and_cancel_span_all_parts(parts_of):
    image, _, geometry = ct_phantom(seed=0, shape=(10, 32, 32), spacing=(2.5, 2.0, 2.0))
    seg = _model(geometry.scale)
    parts_of(2, 32 * 32)
    reports = []
    seg.predict(image, geometry, progress=lambda p: reports.append((p.done, p.total)))
    totals = {t for _, t in reports}
    done = [d for d, _ in reports]
    assert len(totals) == 1 and done == sorted(done) and done[-1] == totals.pop()
    token = CancelToken()

    def cancel_midway(p):
        if p.done and p.done < p.total:
            token.cancel()

    with pytest.raises(Cancelled):
        seg.predict(image, geometry, progress=cancel_midway, cancel=token)


def test_memory_grows_with_the_labels_not_with_float_copies_of_the_volume(parts_of):
    image, _, geometry = ct_phantom(seed=0, shape=(128, 64, 64), spacing=(2.5, 2.0, 2.0))
    image = np.ascontiguousarray(image, np.float32)
    torch.manual_seed(0)
    seg = Segmenter.new(2, ["background", "liver", "spine"], "CT", init_filters=8,
                        patch_size=(64, 64), spacing=(2.0, 2.0), device="cpu")
    parts_of(4, 64 * 64)
    seg.predict(image[:4], geometry)  # warm-up: lazy imports and caches

    def peak(n: int) -> int:
        tracemalloc.start()
        try:
            seg.predict(image[:n], geometry)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    short, long = peak(32), peak(128)
    # 96 more slices: 384 KiB more labels; one whole-volume float32 copy would add 1.5 MiB
    assert long - short < 0.5 * image[32:].nbytes, (short, long)
