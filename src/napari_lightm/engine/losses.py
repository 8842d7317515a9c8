"""Dice + cross-entropy with an ignore label (partially annotated images).

``loss = CE + (1 - soft Dice)`` with weights 1:1, as the authors' nnU-Net trainer
(nnU-Net's Dice term is ``-Dice``; the constant does not change the gradient). The Dice
term excludes the background and is computed over the whole batch ("batch Dice").
Voxels labelled :data:`IGNORE` (255), or outside ``valid`` when a mask is given, are
excluded from both terms: their logits get exactly zero gradient and their labels do
not change the loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = 255
SMOOTH = 1e-5


def dice_ce_loss(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean CE + (1 - mean foreground soft Dice) over the valid voxels.

    Args:
        logits: ``[B, K, *S]`` raw scores.
        target: ``[B, *S]`` integer labels in ``0..K-1``, or :data:`IGNORE`.
        valid: optional ``[B, *S]`` bool mask of supervised voxels (combined with
            ``target != IGNORE``).

    Returns:
        scalar loss (0 when no voxel is valid, still attached to the graph).
    """
    k = logits.shape[1]
    mask = target != IGNORE
    if valid is not None:
        mask = mask & valid.bool()
    # labels under the mask are replaced, so their values cannot leak into the loss
    safe = torch.where(mask, target, torch.zeros_like(target)).long()
    n_valid = mask.sum()
    if int(n_valid) == 0:
        return logits.sum() * 0.0
    ce = F.cross_entropy(logits.float(), safe, reduction="none")
    ce = (ce * mask).sum() / n_valid
    if k < 2:
        return ce
    probs = torch.softmax(logits.float(), dim=1)
    m = mask.unsqueeze(1).to(probs.dtype)
    onehot = F.one_hot(safe, k).movedim(-1, 1).to(probs.dtype)
    dims = (0, *range(2, logits.ndim))  # batch Dice: sum over batch and space
    inter = (probs * onehot * m).sum(dims)[1:]
    denom = ((probs * m).sum(dims) + (onehot * m).sum(dims))[1:]
    dice = (2 * inter + SMOOTH) / (denom + SMOOTH)
    return ce + (1.0 - dice.mean())


__all__ = ["IGNORE", "dice_ce_loss"]
