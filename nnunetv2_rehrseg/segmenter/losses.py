"""Stage-2 segmentation losses (docs/how-it-works.md). KD terms live in distillation.py."""
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class UncertaintyWeighted(nn.Module):
    """The settings R5's losses share: w = 1 - scale * U per voxel, and an optional soft Dice term beside it."""

    def __init__(self, scale: float = 0.99, dice: Optional[nn.Module] = None, dice_weight: float = 0.0):
        super().__init__()
        self.scale = scale
        self.dice = dice if dice_weight else None
        self.dice_weight = dice_weight


class UncertaintyWeightedCE(UncertaintyWeighted):
    """R5: mean over voxels of w * CE with w = 1 - scale * U; U used as produced, in (0, 1), no per-volume rescaling;
    plus `dice_weight` x a soft Dice loss (unweighted: a ratio over the whole patch cannot carry per-voxel weights).

    The paper's R5 is CE only (dice_weight 0). With the small U a calibrated self-SR gives most voxels, its weights
    are near 1 almost everywhere and it acts as plain CE, which neglects thin classes; the Dice term weighs every
    class equally."""

    def __init__(self, scale: float = 0.99, dice: Optional[nn.Module] = None, dice_weight: float = 0.0,
                 ignore_label: Optional[int] = None):
        super().__init__(scale, dice, dice_weight)
        self.ignore_label = ignore_label

    def forward(self, logits: torch.Tensor, target: torch.Tensor, uncertainty: torch.Tensor) -> torch.Tensor:
        weight = 1 - self.scale * uncertainty[:, 0].float()
        if self.ignore_label is None:
            ce = F.cross_entropy(logits.float(), target[:, 0].long(), reduction="none")
            loss = (weight * ce).mean()
            dice = self.dice(logits, target) if self.dice is not None else None
        else:   # ignored voxels count for neither term, as in nnU-Net's DC_and_CE_loss
            valid = target != self.ignore_label
            target = torch.where(valid, target, torch.zeros_like(target))
            ce = F.cross_entropy(logits.float(), target[:, 0].long(), reduction="none")
            loss = (weight * ce * valid[:, 0]).sum() / valid.sum().clamp_min(1)
            dice = self.dice(logits, target, loss_mask=valid) if self.dice is not None else None
        if dice is not None:
            loss = loss + self.dice_weight * dice
        return loss


class UncertaintyWeightedBCE(UncertaintyWeighted):
    """R5 for region-based datasets (sigmoid outputs, one per region): mean over voxels and regions of w * BCE with
    w = 1 - scale * U, plus `dice_weight` x a soft Dice loss over the regions. Targets as nnU-Net's DC_and_BCE_loss
    takes them: one binary channel per region, with `use_ignore_label` the ignore mask last (voxels left out)."""

    def __init__(self, scale: float = 0.99, dice: Optional[nn.Module] = None, dice_weight: float = 0.0,
                 use_ignore_label: bool = False):
        super().__init__(scale, dice, dice_weight)
        self.use_ignore_label = use_ignore_label

    def forward(self, logits: torch.Tensor, target: torch.Tensor, uncertainty: torch.Tensor) -> torch.Tensor:
        mask = None
        if self.use_ignore_label:
            mask, target = ~target[:, -1:].bool(), target[:, :-1]
        bce = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
        weighted = (1 - self.scale * uncertainty.float()) * bce
        if mask is None:
            loss = weighted.mean()
        else:
            loss = (weighted * mask).sum() / (mask.sum() * weighted.shape[1]).clamp_min(1)
        if self.dice is not None:
            loss = loss + self.dice_weight * self.dice(logits, target, loss_mask=mask)
        return loss


class SoftDiceCE(nn.Module):
    """nnU-Net's Dice + CE (DC_and_CE_loss at weights 1 and 1) toward class probabilities (B, K, ...) instead of labels:
    CE = -sum_c q_c log softmax(x)_c, and nnU-Net's soft Dice with q where it takes the labels' one-hot. With
    `use_ignore_label` the last target channel is the ignore mask (its voxels count for neither term, as nnU-Net
    leaves the ignore label out; the layout of its region targets). On one-hot q it is DC_and_CE_loss."""

    def __init__(self, dice: nn.Module, use_ignore_label: bool = False):
        super().__init__()
        self.dice = dice
        self.use_ignore_label = use_ignore_label

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        mask = None
        if self.use_ignore_label:
            mask, target = (1 - target[:, -1:]).bool(), target[:, :-1]
        ce = -(target.float() * F.log_softmax(logits.float(), 1)).sum(1, keepdim=True)
        ce = ce.mean() if mask is None else (ce * mask).sum() / mask.sum().clamp_min(1)
        return ce + self.dice(logits, target, loss_mask=mask)


class IgnoringUncertainty(nn.Module):
    """Gives an unweighted loss (e.g. nnU-Net's DC_and_CE_loss) the (logits, target, uncertainty) call of R5."""

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss

    def forward(self, logits: torch.Tensor, target: torch.Tensor, uncertainty: torch.Tensor) -> torch.Tensor:
        return self.loss(logits, target)


def deep_supervision_weights(num_outputs: int, ddp_without_compile: bool) -> np.ndarray:
    """nnU-Net's weights 1/2^i, the lowest output off (1e-6 under DDP without compile, where a zero weight leaves
    parameters without gradients and DDP fails), normalised to sum 1."""
    weights = np.array([1 / (2 ** i) for i in range(num_outputs)])
    weights[-1] = 1e-6 if ddp_without_compile else 0
    return weights / weights.sum()
