"""nnU-Net's training transforms adapted to REHRSeg's samples: the image on the LR grid (D slices), the HR labels on
r*D slices, the uncertainty on D slices.

nnU-Net's spatial transforms run slice-wise in REHRSeg's dummy-2D mode (the LR axis folded into channels) and its
mirroring flips each tensor along its own axes, so both take tensors of different depths as they are. Only the
masking of `use_mask_for_norm` reads the labels at the image's voxels: here the mask comes from the HR labels' own
thick-slice majority (a thick voxel lies outside when most of its r sub-slices do).
"""
import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.nnunet_masking import MaskImageTransform


def outside_on_lr_grid(hr_labels: torch.Tensor, r: int) -> torch.Tensor:
    """(r*D, H, W) labels with -1 outside the non-zero region -> (D, H, W) mask of thick voxels mostly outside."""
    d_hr, h, w = hr_labels.shape
    return (hr_labels < 0).reshape(d_hr // r, r, h, w).sum(1) * 2 > r


class LRGridMaskImageTransform(BasicTransform):
    """MaskImageTransform for an LR-grid image with HR labels."""

    def __init__(self, apply_to_channels, r: int, channel_idx_in_seg: int = 0, set_outside_to: float = 0):
        super().__init__()
        self.apply_to_channels, self.r = apply_to_channels, r
        self.channel_idx_in_seg, self.set_outside_to = channel_idx_in_seg, set_outside_to

    def apply(self, data_dict, **params):
        if len(self.apply_to_channels) == 0:
            return data_dict
        mask = outside_on_lr_grid(data_dict["segmentation"][self.channel_idx_in_seg], self.r)
        for channel in self.apply_to_channels:
            data_dict["image"][channel, mask] = self.set_outside_to
        return data_dict


def for_lr_grid_samples(transforms: ComposeTransforms, r: int) -> ComposeTransforms:
    """nnU-Net's composed transforms with its label-masking step replaced by the LR-grid one."""
    transforms.transforms = [
        LRGridMaskImageTransform(t.apply_to_channels, r, t.channel_idx_in_seg, t.set_outside_to)
        if isinstance(t, MaskImageTransform) else t for t in transforms.transforms]
    return transforms
