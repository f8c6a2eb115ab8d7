"""Stage 2's targets in nnU-Net's terms: plain labels, region-based labels and the ignore label.

REHRSeg's loader works on integer label maps, as the annotator draws them: the thick-slice majority that makes the
pseudo-LR labels is defined on them, and a region (whole tumour, core, ...) is a union of their values. The losses take
what nnU-Net's own losses take: the label map itself (the ignore label left in; the losses mask it), or, for a
region-based dataset, one binary channel per region with the ignore mask as the last channel (the layout of
ConvertSegmentationToRegionsTransform that DC_and_BCE_loss expects). The conversion runs on the training device, after
the majority, so the loader stays the same for every kind of dataset.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch

from nnunetv2_rehrseg.raw_dataset import num_label_values


class LabelTargets:
    """Targets and hard predictions for one dataset's label declaration (an nnU-Net LabelManager)."""

    def __init__(self, label_manager):
        self.has_regions: bool = label_manager.has_regions
        self.ignore_label: Optional[int] = label_manager.ignore_label
        self.num_values = num_label_values(label_manager)   # values a label map holds: one-hot width, majority classes
        self.regions: Optional[List[Tuple[int, ...]]] = (
            [tuple(int(v) for v in (r if isinstance(r, (list, tuple)) else [r]))
             for r in label_manager.foreground_regions] if self.has_regions else None)

    def loss_target(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, 1, ...) integer labels -> what nnU-Net's loss of this dataset takes."""
        if not self.has_regions:
            return labels
        channels = list(self.regions) + ([(self.ignore_label,)] if self.ignore_label is not None else [])
        plain = labels[:, 0]
        return torch.stack([torch.isin(plain, torch.tensor(c, device=labels.device, dtype=plain.dtype))
                            for c in channels], 1)

    def loss_targets(self, labels: Union[torch.Tensor, Sequence[torch.Tensor]]):
        """`loss_target` of one target or of each deep-supervision target."""
        if isinstance(labels, torch.Tensor):
            return self.loss_target(labels)
        return [self.loss_target(t) for t in labels]

    def soft_loss_target(self, probabilities: torch.Tensor, labels: torch.Tensor, weight: float) -> torch.Tensor:
        """The HR head's soft target in the layout of `loss_target`: per voxel (1 - weight) x the one-hot of the
        integer labels (B, 1, ...) + weight x the class probabilities (B, num_values, ...), the ignore label's share
        dropped (its voxels are masked by the labels); for regions, each region's probability is the sum of its
        values'. Channels per class (or region), plus the ignore mask last where the dataset has an ignore label
        (losses.SoftDiceCE, nnU-Net's DC_and_BCE_loss)."""
        one_hot = torch.zeros_like(probabilities, dtype=torch.float32).scatter_(1, labels.long(), 1.0)
        blend = (1 - weight) * one_hot + weight * probabilities.float()
        if self.ignore_label is not None:
            blend = blend[:, :self.ignore_label]
            blend = blend / blend.sum(1, keepdim=True).clamp_min(1e-6)
        if self.has_regions:
            blend = torch.stack([blend[:, list(region)].sum(1) for region in self.regions], 1)
        if self.ignore_label is not None:
            blend = torch.cat([blend, (labels == self.ignore_label).float()], 1)
        return blend

    def hard_counts(self, logits: torch.Tensor, labels: torch.Tensor, axes: Sequence[int]):
        """nnU-Net's online-validation counts (tp, fp, fn per foreground label or region) of a batch's logits against
        integer labels (B, 1, ...): argmax or sigmoid > 0.5, ignored voxels left out."""
        from nnunetv2.training.loss.dice import get_tp_fp_fn_tn

        target = self.loss_target(labels)
        mask = None
        if self.has_regions:
            prediction = (logits > 0).to(torch.float16)
            if self.ignore_label is not None:
                mask, target = ~target[:, -1:], target[:, :-1]
        else:
            prediction = torch.zeros_like(logits, dtype=torch.float16).scatter_(1, logits.argmax(1, keepdim=True), 1)
            if self.ignore_label is not None:
                mask = target != self.ignore_label
                target = torch.where(mask, target, torch.zeros_like(target))
        tp, fp, fn, _ = get_tp_fp_fn_tn(prediction, target, axes=list(axes), mask=mask)
        if not self.has_regions:
            tp, fp, fn = tp[1:], fp[1:], fn[1:]
        return tp, fp, fn
