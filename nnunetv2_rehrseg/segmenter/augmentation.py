"""nnU-Net's training transforms adapted to REHRSeg's samples: the image on the LR grid (D slices), the HR labels on
r*D slices, the uncertainty on D slices.

nnU-Net's spatial transforms run slice-wise in REHRSeg's dummy-2D mode (the LR axis folded into channels) and its
mirroring flips each tensor along its own axes, so both take tensors of different depths as they are. Two steps are
replaced:
- the label resampling of the spatial transform: the same rule (bilinear interpolation of every label's indicator,
  argmax, the nearest neighbour settling ties, outside = the padding label), computed as a weighted vote of the four
  neighbours for all r*D label slices at once instead of one grid_sample per slice and label (that loop dominated
  REHRSeg's loader time);
- the masking of `use_mask_for_norm`, which reads the labels at the image's voxels: here the mask comes from the HR
  labels' own thick-slice majority (a thick voxel lies outside when most of its r sub-slices do).
"""
import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
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


def bilinear_label_vote(segmentation: torch.Tensor, grid: torch.Tensor, pad: int, align_corners: bool) -> torch.Tensor:
    """Labels (C, H, W) resampled at a grid_sample grid (Ho, Wo, 2) by nnU-Net's rule: the label whose bilinearly
    interpolated indicator is largest, the nearest neighbour settling ties, outside = `pad`. The interpolated
    indicator of a label is the summed bilinear weight of the (at most four) neighbours holding it, so the rule is a
    weighted vote among four neighbours, computed once for all channels: its cost does not grow with the number of
    labels, unlike one grid_sample per channel and label."""
    c, h, w = segmentation.shape
    x = grid[..., 0].float()
    y = grid[..., 1].float()
    if align_corners:
        x, y = (x + 1) / 2 * (w - 1), (y + 1) / 2 * (h - 1)
    else:
        x, y = ((x + 1) * w - 1) / 2, ((y + 1) * h - 1) / 2
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = x - x0, y - y0
    flat = segmentation.reshape(c, -1)
    labels, weights = [], []
    for dy, dx, weight in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        xi, yi = (x0 + dx).long(), (y0 + dy).long()
        inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        index = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).reshape(-1)
        neighbour = flat[:, index].reshape(c, *x.shape)
        labels.append(torch.where(inside, neighbour, torch.full_like(neighbour, pad)))
        weights.append(weight)
    # each neighbour's label scores the weight of all neighbours that hold it (pairwise agreements computed once)
    same = {(i, j): labels[i] == labels[j] for i in range(4) for j in range(i + 1, 4)}
    scores = [weights[i] + sum(weights[j] * same[min(i, j), max(i, j)] for j in range(4) if j != i)
              for i in range(4)]
    best_score, best_label = scores[0], labels[0]
    for score, label in zip(scores[1:], labels[1:]):
        better = score > best_score
        best_score = torch.where(better, score, best_score)
        best_label = torch.where(better, label, best_label)
    # the nearest neighbour (largest weight) settles the voxel where its label has the top score
    nearest = torch.stack(weights).argmax(0).expand(c, -1, -1)[None]
    nearest_label = torch.stack(labels).gather(0, nearest)[0]
    nearest_score = torch.stack(scores).gather(0, nearest)[0]
    return torch.where(nearest_score == best_score, nearest_label, best_label)


class VectorisedLabelSpatialTransform(SpatialTransform):
    """nnU-Net's SpatialTransform with its bilinear label resampling computed as a weighted vote of the four
    neighbours (bilinear_label_vote) for all channels at once."""

    def _apply_to_segmentation(self, segmentation: torch.Tensor, **params) -> torch.Tensor:
        grid = params["grid"]
        if (grid is None or self.mode_seg != "bilinear" or self.border_mode_seg not in ("zeros", "constant")
                or segmentation.ndim != 3):
            return super()._apply_to_segmentation(segmentation, **params)
        pad = self.padding_value_seg if self.border_mode_seg == "constant" else 0
        return bilinear_label_vote(segmentation, grid, pad, self.align_corners).contiguous()


def for_lr_grid_samples(transforms: ComposeTransforms, r: int) -> ComposeTransforms:
    """nnU-Net's composed transforms with the spatial transform's label resampling vectorised and the label-masking
    step replaced by the LR-grid one (every other setting kept)."""
    def adapted(t):
        if isinstance(t, MaskImageTransform):
            return LRGridMaskImageTransform(t.apply_to_channels, r, t.channel_idx_in_seg, t.set_outside_to)
        if type(t) is SpatialTransform:
            vectorised = VectorisedLabelSpatialTransform.__new__(VectorisedLabelSpatialTransform)
            vectorised.__dict__.update(t.__dict__)
            return vectorised
        return t
    transforms.transforms = [adapted(t) for t in transforms.transforms]
    return transforms
