"""Stage-2 segmentation losses (method.md R5-R6). KD terms live in distillation.py."""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class UncertaintyWeightedCE(nn.Module):
    """R5: mean over voxels of w * CE with w = 1 - scale * U; U used as produced, in (0, 1), no per-volume rescaling.
    As in R5 there is no Dice term: the weighting is a per-voxel statement that soft Dice cannot express."""

    def __init__(self, scale: float = 0.99):
        super().__init__()
        self.scale = scale

    def forward(self, logits: torch.Tensor, target: torch.Tensor, uncertainty: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits.float(), target[:, 0].long(), reduction="none")
        return ((1 - self.scale * uncertainty[:, 0].float()) * ce).mean()


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
