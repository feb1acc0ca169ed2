"""The segmentation training loss shared by the thorax and the CTV trainers."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def present_dice_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Soft cross-entropy over all classes plus the soft Dice loss of each foreground class
    that is present in the batch's targets (at least one voxel's worth).

    A foreground class absent from the patch (nodes for an N0 context, or a box away from
    the CTV) gets no Dice term: its Dice would be 1 for any non-zero prediction (MONAI's
    batch Dice with tiny smoothing), which teaches the network to under-segment small,
    often-absent classes; cross-entropy already penalises its false positives.
    """
    ce = F.cross_entropy(logits, targets)
    probs = torch.softmax(logits, dim=1)
    dims = (0, *range(2, logits.ndim))
    truth = targets.sum(dim=dims)[1:]
    overlap = (probs * targets).sum(dim=dims)[1:]
    denominator = probs.sum(dim=dims)[1:] + truth
    present = truth >= 1.0
    if not bool(present.any()):
        return ce
    dice = 1.0 - (2.0 * overlap[present] + 1e-5) / (denominator[present] + 1e-5)
    return ce + dice.mean()
