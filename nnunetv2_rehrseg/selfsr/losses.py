"""Self-SR losses: the plain phase's and the UASR phase's, for multi-class labels."""
from typing import Dict

import torch
import torch.nn.functional as F

from nnunetv2_rehrseg.degradation import blur_subsample

MIN_UNCERTAINTY = 1e-4  # keeps |error| / U finite where the head is (over-)confident


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - 2 sum(p t) / (sum p^2 + sum t^2) per class over the batch, averaged over classes present or predicted."""
    probs = torch.softmax(logits.float(), dim=1)
    one_hot = F.one_hot(target.long(), logits.shape[1]).movedim(-1, 1).float()
    dims = (0,) + tuple(range(2, logits.ndim))
    intersection = (probs * one_hot).sum(dims)
    denominator = (probs ** 2).sum(dims) + (one_hot ** 2).sum(dims)
    return 1 - (2 * intersection / denominator.clamp_min(1e-5)).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), target.long()) + soft_dice_loss(logits, target)


def plain_sr_loss(pred: Dict[str, torch.Tensor], image: torch.Tensor, labels: torch.Tensor,
                  image_weight: float = 1.0) -> Dict[str, torch.Tensor]:
    """R1: L1 on the image + CE + Dice on the labels; `image_weight` scales the image terms."""
    l1 = (pred["image"].float() - image).abs().mean()
    seg = segmentation_loss(pred["seg"], labels)
    return {"loss": image_weight * l1 + seg, "l1": l1, "seg": seg}


def uasr_loss(pred: Dict[str, torch.Tensor], image: torch.Tensor, labels: torch.Tensor,
              image_weight: float = 1.0) -> Dict[str, torch.Tensor]:
    """R4: L1 + Laplace NLL (|e| / U + log U) + |U - sg(|e|)| + CE + Dice; |e| averaged over image channels.

    `image_weight` scales the L1 term only: the NLL and U-regression terms set the meaning of U and stay as in R4.
    """
    error = (pred["image"].float() - image).abs()
    l1 = error.mean()
    voxel_error = error.mean(dim=1, keepdim=True)
    u = pred["uncertainty"].float().clamp_min(MIN_UNCERTAINTY)
    nll = (voxel_error / u + torch.log(u)).mean()
    regression = (pred["uncertainty"].float() - voxel_error.detach()).abs().mean()
    seg = segmentation_loss(pred["seg"], labels)
    return {"loss": image_weight * l1 + nll + regression + seg, "l1": l1, "nll": nll, "u_regression": regression,
            "seg": seg}


def thick_axis_consistency_loss(pred: Dict[str, torch.Tensor], thick_image: torch.Tensor, r: int, fwhm: float,
                                profile: str, side: int) -> torch.Tensor:
    """L1 between the acquired thick slice and the network's thin sub-slices along the real thick axis, degraded with
    the slice profile.

    `pred` comes from the windows of PairSampler.sample_thick flattened to (B * (2 side + 1), ...): window j of a
    draw predicts the sub-slices of thick slice k - side + j, which together cover slice k's profile. Images only: a
    label counterpart (the slab's mean probabilities toward its annotation) is best met by copying the thick slice's
    label onto every sub-slice: the nearest round trip, which the thin-slice labels are there to improve on.
    """
    b, n = thick_image.shape[0], 2 * side + 1
    image = pred["image"].float()
    image = image.view(b, n, *image.shape[1:]).movedim(1, 2).flatten(2, 3)         # (B, C, n r, P, P)
    degraded = blur_subsample(image, 2, r, fwhm, profile)[:, :, side]
    return (degraded - thick_image).abs().mean()
