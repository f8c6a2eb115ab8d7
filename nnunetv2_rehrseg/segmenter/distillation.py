"""Structural knowledge distillation from the frozen self-SR encoder to the segmenter's encoder (docs/how-it-works.md).

Student: one encoder stage of the planned nnU-Net network on the pseudo-LR patch, (B, Cs, D', H', W').
Teacher: the self-SR encoder stage with the closest in-plane downsampling, run on the same pseudo-LR patch (image on
its [0, 1] scale + one-hot pseudo-LR labels), (B, Ct, D, H / 2^i, W / 2^i), resampled to the student's grid, so any
planned topology works (not only strides[1] == (1, 2, 2)).
"""
import math
from typing import Dict, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def teacher_stage_for(student_inplane_stride: int, num_teacher_stages: int) -> int:
    """The self-SR encoder halves the in-plane size per stage: pick the stage at the student's in-plane scale."""
    return int(min(max(round(math.log2(max(student_inplane_stride, 1))), 0), num_teacher_stages - 1))


def match_to(teacher: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Resample teacher features onto the student's (D, H, W): average pooling where the teacher is finer on every
    axis (keeps all of its information), trilinear interpolation otherwise."""
    if tuple(teacher.shape[2:]) == tuple(shape):
        return teacher
    if all(t >= s for t, s in zip(teacher.shape[2:], shape)):
        return F.adaptive_avg_pool3d(teacher, shape)
    return F.interpolate(teacher, size=tuple(shape), mode="trilinear", align_corners=False)


def spatial_kd_loss(adapted_student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """R7: features L2-normalised over channels per voxel, then 1 - cosine over the voxels of each channel."""
    s = F.normalize(adapted_student.float(), dim=1).flatten(2)
    t = F.normalize(teacher.float(), dim=1).flatten(2)
    return (1 - F.cosine_similarity(s, t, dim=2, eps=1e-8)).mean()


def _slice_affinity(features: torch.Tensor) -> torch.Tensor:
    """Per LR slice: max-pool to about 2x2 nodes, cosine affinity between the nodes -> (B * D, N, N)."""
    b, c, d, h, w = features.shape
    per_slice = features.float().permute(0, 2, 1, 3, 4).reshape(b * d, c, h, w)
    kernel = (max(1, h // 2), max(1, w // 2))
    nodes = F.max_pool2d(per_slice, kernel, stride=kernel, ceil_mode=True).flatten(2)  # (B*D, C, N)
    nodes = F.normalize(nodes, dim=1, eps=1e-8)
    return nodes.transpose(1, 2) @ nodes


def correlation_kd_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """R8: squared difference of the per-slice affinity graphs, averaged over batch, slices and node pairs (the
    public code's extra 1/D would make the weight depend on the patch depth)."""
    return ((_slice_affinity(student) - _slice_affinity(teacher)) ** 2).mean()


class StructuralDistillation(nn.Module):
    """The learnable 1x1x1 adapter (student -> teacher channels) and both KD terms."""

    def __init__(self, student_channels: int, teacher_channels: int):
        super().__init__()
        self.adapter = nn.Conv3d(student_channels, teacher_channels, 1)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> Dict[str, torch.Tensor]:
        teacher = match_to(teacher, student.shape[2:])
        return {"kd_spatial": spatial_kd_loss(self.adapter(student), teacher),
                "kd_correlation": correlation_kd_loss(student, teacher)}


def broadcast_parameters(module: nn.Module, source: int = 0) -> None:
    """Give every DDP worker rank `source`'s parameters (DDP does this for the wrapped network only)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    with torch.no_grad():
        for p in module.parameters():
            dist.broadcast(p.data, source)


def all_reduce_gradients(module: nn.Module) -> None:
    """Average a module's gradients over DDP workers (for parameters that live outside the DDP-wrapped network)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    world = dist.get_world_size()
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(world)
