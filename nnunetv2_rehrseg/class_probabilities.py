"""Soft pseudo-HR targets on disk and in the loader: stage 1's class probabilities, quantised.

Stage 1 writes, beside its hard pseudo-HR labels, the class probabilities they were decided from (one uint8 volume
per label value, 255 = certain): a quarter of a float32 image channel per class before compression, and almost
nothing after it, since away from boundaries a voxel is certain of one class and most volumes hold runs of 0 and
255. Preprocessing carries them through nnU-Net's transpose, crop and resampling (order 1) like the uncertainty map;
the loader reads a crop, lets nnU-Net's spatial augmentation move it with the image, and turns it back into a
distribution here.
"""
import numpy as np
import torch

LEVELS = 255
# below this much probability mass a voxel of an augmented crop lies (mostly) in padding, where the stored map is
# zero: its target is the hard label's one-hot instead
MIN_MASS = 0.5


def quantise(probabilities: np.ndarray) -> np.ndarray:
    """(K, ...) probabilities in [0, 1] -> uint8 levels (a voxel's levels sum to 255 up to rounding)."""
    return np.rint(np.clip(probabilities, 0, 1) * LEVELS).astype(np.uint8)


def dequantise(levels) -> torch.Tensor:
    """uint8 levels (any array or tensor) -> float32 probabilities (not yet renormalised)."""
    return torch.as_tensor(np.asarray(levels)).float() / LEVELS


def soft_target(probabilities: torch.Tensor, hard_labels: torch.Tensor, num_values: int) -> torch.Tensor:
    """A distribution per voxel from an augmented probability crop (K, ...) and the hard labels of the same crop
    (1, ...): the crop renormalised where it holds at least MIN_MASS, the hard label's one-hot elsewhere (padding,
    where the hard label is the padding label too). Labels outside 0..num_values-1 (nnU-Net's -1 outside the
    non-zero region, mapped to 0 later by its transforms) count as 0."""
    mass = probabilities.sum(0, keepdim=True)
    hard = hard_labels.long().clamp(0, num_values - 1)
    one_hot = torch.zeros_like(probabilities).scatter_(0, hard, 1.0)
    return torch.where(mass >= MIN_MASS, probabilities / mass.clamp_min(1e-6), one_hot)
