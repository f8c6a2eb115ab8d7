"""Pseudo-LR training samples made from pseudo-HR patches (the paper's pseudo-data), before augmentation.

The loader crops HR patches whose first slice starts a thick slice of a chosen phase (REHRSegDataLoader) and adds a
margin of whole thick slices on both ends along the LR axis, so the slice profile sees real neighbours instead of
replicated edges. `degrade_patch` blurs the image with the slice profile and subsamples it r-fold along the LR axis,
drops the margin, keeps the HR labels of the r*D core slices and averages the uncertainty over each thick slice's r
sub-slices. All of this commutes with REHRSeg's spatial augmentation (in-plane rotation and scaling applied to every
slice alike, mirroring), so the augmentation then runs on the LR image (D slices) instead of the HR patch: labels and
uncertainty get the same in-plane transform. After augmentation `lr_training_targets` makes the pseudo-LR labels: the
per-voxel majority over the r sub-slices (the annotator model of stage 1; a majority of in-plane-resampled labels
equals the resampled majority when every slice gets the same in-plane sampling), and the deep-supervision targets.
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from nnunetv2_rehrseg.degradation import majority_labels, slice_kernel

LR_AXIS = -3  # of (C, D, H, W) samples and (B, C, D, H, W) batches: nnU-Net's transpose puts the LR axis first


def margin_slices(r: int, fwhm: float, profile: str) -> int:
    """HR slices of context needed on each side of a patch by the slice profile, rounded up to whole thick slices."""
    weights, i_min = slice_kernel(r, fwhm, profile)
    reach = max(0, -i_min, i_min + len(weights) - r)
    return r * -(-reach // r)


def degrade_patch(hr_image: torch.Tensor, hr_labels: torch.Tensor, hr_uncertainty: Optional[torch.Tensor], r: int,
                  fwhm: float, profile: str, margin: int) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """HR patch with `margin` slices of context on both ends of the LR axis -> (pseudo-LR image with D slices, HR
    labels of the r*D core slices, uncertainty averaged per thick slice with D slices, or None without an HR
    uncertainty: a caller that carries the HR map itself). Any leading dimensions."""
    n_lr = (hr_image.shape[LR_AXIS] - 2 * margin) // r
    image = blur_subsample_core(hr_image, r, fwhm, profile, margin, n_lr)
    labels = hr_labels.narrow(LR_AXIS, margin, r * n_lr)
    uncertainty = None
    if hr_uncertainty is not None:
        core = hr_uncertainty.narrow(LR_AXIS, margin, r * n_lr)
        *lead, _, h, w = core.shape
        uncertainty = core.reshape(*lead, n_lr, r, h, w).mean(-3)
    return image.to(hr_image.dtype).contiguous(), labels.contiguous(), uncertainty


def hr_regression_target(hr_uncertainty: torch.Tensor, hr_probabilities: torch.Tensor, r: int,
                         margin: int) -> torch.Tensor:
    """(1 + K, r*D, H, W): the uncertainty and the class probabilities of the r*D core slices of an HR crop, stacked so
    that nnU-Net's augmentation moves both with the image as one regression target (for soft pseudo-HR targets)."""
    n_lr = (hr_uncertainty.shape[LR_AXIS] - 2 * margin) // r
    return torch.cat([hr_uncertainty.narrow(LR_AXIS, margin, r * n_lr),
                      hr_probabilities.narrow(LR_AXIS, margin, r * n_lr)]).contiguous()


def split_hr_regression_target(target: torch.Tensor, r: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """An augmented `hr_regression_target` -> (uncertainty averaged per thick slice (1, D, H, W), as degrade_patch
    makes it, class probabilities (K, r*D, H, W)). Averaging after the (in-plane, linear) augmentation equals
    averaging before it."""
    uncertainty = target[:1]
    _, d_hr, h, w = uncertainty.shape
    return uncertainty.reshape(1, d_hr // r, r, h, w).mean(2), target[1:]


def blur_subsample_core(hr_image: torch.Tensor, r: int, fwhm: float, profile: str, margin: int,
                        n_lr: int) -> torch.Tensor:
    """`blur_subsample` along the LR axis for the n_lr thick slices after the margin only: the margin holds the
    profile's reach, so no padding is needed, and the taps are strided slices of the patch (no reshaping into lines,
    which cost the loader most of this function's time). Equal to blur_subsample(...).narrow(LR_AXIS, margin // r, n_lr)."""
    weights, i_min = slice_kernel(r, fwhm, profile)
    first = margin + i_min
    if first < 0 or first + r * (n_lr - 1) + len(weights) > hr_image.shape[LR_AXIS]:
        raise ValueError(f"a margin of {margin} slices is less than the slice profile's reach")
    image = hr_image.float()
    out = None
    for tap, weight in enumerate(weights):
        term = float(weight) * image.narrow(LR_AXIS, first + tap, r * (n_lr - 1) + 1)[..., ::r, :, :]
        out = term if out is None else out.add_(term)
    return out


@dataclass
class PseudoLRBatch:
    image: torch.Tensor                 # (B, C, D, H, W) LR grid
    labels: List[torch.Tensor]          # majority labels per deep-supervision output, (B, 1, D, H, W) first
    uncertainty: List[torch.Tensor]     # mean over the r sub-slices, per deep-supervision output
    hr_labels: torch.Tensor             # (B, 1, r*D, H, W)


def lr_training_targets(hr_labels: torch.Tensor, uncertainty: torch.Tensor, r: int, num_classes: int,
                        scales: Optional[Sequence[Sequence[float]]], ignore_label: Optional[int] = None
                        ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """The LR head's targets of an augmented batch (HR labels (B, 1, r*D, H, W), uncertainty (B, 1, D, H, W)):
    pseudo-LR labels and uncertainty per deep-supervision output (scales None: the full resolution alone). Made in
    the loader's workers, where stock nnU-Net makes its deep-supervision targets, not on the training step's path.
    `num_classes`: the values a label map holds (the ignore label included); ignored sub-slices do not vote."""
    labels = majority_labels(hr_labels, LR_AXIS, r, num_classes=num_classes, ignore_label=ignore_label)
    if scales is None:
        return [labels], [uncertainty]
    return downsample_for_deep_supervision(labels, uncertainty, scales)


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
