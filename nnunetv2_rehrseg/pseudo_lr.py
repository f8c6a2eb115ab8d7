"""Pseudo-LR training inputs made on the device from HR patches (the paper's pseudo-data).

The loader crops HR patches whose first slice starts a thick slice of a chosen phase (REHRSegDataLoader) and adds a
margin of whole thick slices on both ends along the LR axis, so the slice profile sees real neighbours instead of
replicated edges. Here the patch is blurred with the slice profile and subsampled r-fold along the LR axis, the
margin is dropped, and the targets are cut to match: pseudo-LR labels by the per-voxel majority over the r
sub-slices (the annotator model of stage 1) and the uncertainty averaged over the same r sub-slices.
"""
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F

from nnunetv2_rehrseg.degradation import blur_subsample, majority_labels, slice_kernel

LR_AXIS = 2  # of a (B, C, D, H, W) batch: nnU-Net's transpose puts the LR axis first


def margin_slices(r: int, fwhm: float, profile: str) -> int:
    """HR slices of context needed on each side of a patch by the slice profile, rounded up to whole thick slices."""
    weights, i_min = slice_kernel(r, fwhm, profile)
    reach = max(0, -i_min, i_min + len(weights) - r)
    return r * -(-reach // r)


@dataclass
class PseudoLRBatch:
    image: torch.Tensor                 # (B, C, D, H, W) LR grid
    labels: torch.Tensor                # (B, 1, D, H, W) majority labels
    uncertainty: torch.Tensor           # (B, 1, D, H, W) mean over the r sub-slices
    hr_labels: torch.Tensor             # (B, 1, r*D, H, W)
    hr_image: torch.Tensor              # (B, C, r*D, H, W) (for pictures and tests)


def make_pseudo_lr(hr_image: torch.Tensor, hr_labels: torch.Tensor, hr_uncertainty: torch.Tensor, r: int,
                   fwhm: float, profile: str, margin: int, num_classes: int) -> PseudoLRBatch:
    lr = blur_subsample(hr_image, LR_AXIS, r, fwhm, profile)
    n_lr = (hr_image.shape[LR_AXIS] - 2 * margin) // r
    keep = slice(margin // r, margin // r + n_lr)
    hr = slice(margin, margin + r * n_lr)
    hr_labels = hr_labels[:, :, hr]
    hr_uncertainty = hr_uncertainty[:, :, hr]
    b, _, d, h, w = hr_uncertainty.shape
    uncertainty = hr_uncertainty.reshape(b, 1, d // r, r, h, w).mean(3)
    labels = majority_labels(hr_labels, LR_AXIS, r, num_classes=num_classes)
    return PseudoLRBatch(lr[:, :, keep].contiguous(), labels, uncertainty, hr_labels, hr_image[:, :, hr])


def downsample_for_deep_supervision(labels: torch.Tensor, uncertainty: torch.Tensor,
                                    scales: Sequence[Sequence[float]]) -> Tuple[List[torch.Tensor],
                                                                                List[torch.Tensor]]:
    """LR targets per deep-supervision output: labels as nnU-Net's DownsampleSegForDSTransform does (nearest-exact),
    the uncertainty by area averaging."""
    label_list, uncertainty_list = [], []
    for scale in scales:
        if all(s == 1 for s in scale):
            label_list.append(labels)
            uncertainty_list.append(uncertainty)
            continue
        shape = [round(n * s) for n, s in zip(labels.shape[2:], scale)]
        label_list.append(F.interpolate(labels.float(), shape, mode="nearest-exact").to(labels.dtype))
        uncertainty_list.append(F.interpolate(uncertainty, shape, mode="area"))
    return label_list, uncertainty_list
