"""Dice + CE with the ignore label: ignored voxels have no effect on loss or gradient."""

from __future__ import annotations

import torch

from napari_lightm.engine.losses import IGNORE, dice_ce_loss


def _grad(logits: torch.Tensor, target: torch.Tensor, valid=None) -> tuple[float, torch.Tensor]:
    x = logits.clone().requires_grad_(True)
    loss = dice_ce_loss(x, target, valid)
    loss.backward()
    return float(loss.detach()), x.grad


def test_ignored_voxels_have_no_gradient_effect():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, generator=g)
    labels = torch.randint(0, 3, (2, 8, 8), generator=g)
    ignored = torch.rand(2, 8, 8, generator=g) < 0.4
    other = torch.where(ignored, torch.randint(0, 3, (2, 8, 8), generator=g), labels)
    assert (other != labels).any()
    # the same labels outside the ignored voxels, different inside: identical loss and grads
    loss_a, grad_a = _grad(logits, torch.where(ignored, IGNORE, labels))
    loss_b, grad_b = _grad(logits, torch.where(ignored, IGNORE, other))
    assert loss_a == loss_b and torch.equal(grad_a, grad_b)
    # a validity mask is the same as the ignore label, whatever the labels there
    loss_c, grad_c = _grad(logits, other, valid=~ignored)
    assert abs(loss_a - loss_c) < 1e-6 and torch.allclose(grad_a, grad_c, atol=1e-7)
    # ignored voxels' logits get exactly zero gradient; the others do not
    assert torch.all(grad_a.abs().sum(1)[ignored] == 0)
    assert torch.all(grad_a.abs().sum(1)[~ignored] > 0)


def test_loss_prefers_the_right_answer_and_handles_all_ignored():
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[:, 2:6, 2:6] = 1
    good = torch.nn.functional.one_hot(labels, 2).movedim(-1, 1).float() * 10
    assert dice_ce_loss(good, labels) < 0.01 < dice_ce_loss(-good, labels)
    none = torch.full_like(labels, IGNORE)
    x = good.clone().requires_grad_(True)
    loss = dice_ce_loss(x, none)
    loss.backward()
    assert float(loss) == 0.0 and torch.all(x.grad == 0)
