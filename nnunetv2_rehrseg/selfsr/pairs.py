"""Self-supervised training pairs from the LR volumes themselves.

Each LR volume (thick axis first) is first made pseudo-isotropic along its thick axis (cubic B-spline, same field
of view). Its in-plane axes then carry true HR information: degrading one of them with the slice profile and r-fold
subsampling gives a thick-slice window whose thin sub-slices are known. Both in-plane axes and all r phases are used.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from scipy.ndimage import zoom

from nnunetv2_rehrseg.degradation import blur_subsample, majority_labels, one_hot, slice_kernel


@dataclass
class SRCase:
    """One LR training case, thick axis first: image (C, Z, Y, X) scaled to [0, 1], labels (Z, Y, X)."""
    image: np.ndarray
    labels: np.ndarray


def upsample_thick_axis(image: np.ndarray, r: int) -> np.ndarray:
    """Cubic B-spline upsampling of axis 1 of (C, Z, Y, X) by r, same field of view."""
    return np.stack([zoom(c, (r, 1, 1), order=3, mode="reflect", grid_mode=True) for c in image]).astype(np.float32)


class DegradedViews:
    """A volume whose thin slices are known (image (C, Z, Y, X), labels (Z, Y, X)) and its thick-slice versions,
    degraded along each of `axes` (axes of the image) at every phase."""

    def __init__(self, hr_image: np.ndarray, hr_labels: np.ndarray, axes: Tuple[int, ...], r: int, fwhm: float,
                 profile: str, num_classes: int):
        self.hr_image, self.hr_labels, self.axes = hr_image, hr_labels, tuple(axes)
        self.lr_image: Dict = {}
        self.lr_labels: Dict = {}
        for axis in self.axes:
            for phase in range(r):
                self.lr_image[axis, phase] = blur_subsample(hr_image, axis, r, fwhm, profile, phase)
                self.lr_labels[axis, phase] = majority_labels(hr_labels, axis - 1, r, phase, num_classes)

    @classmethod
    def self_supervised(cls, case: SRCase, r: int, fwhm: float, profile: str, num_classes: int) -> "DegradedViews":
        """The LR case made pseudo-isotropic along its thick axis, degraded along its in-plane axes."""
        # labels by nearest: every sub-slice keeps its thick slice's label
        return cls(upsample_thick_axis(case.image, r), np.repeat(case.labels, r, axis=0), (2, 3), r, fwhm, profile,
                   num_classes)


def thick_axis_side(r: int, fwhm: float, profile: str) -> int:
    """How many neighbouring thick slices on each side the slice profile of one thick slice reaches into: the thin
    sub-slices of reference slices k - side .. k + side determine thick slice k."""
    i_min = slice_kernel(r, fwhm, profile)[1]
    return int(np.ceil(-i_min / r))


class PairSampler:
    """Draws batches of (window of thick slices, r thin sub-slices of the window's reference slice).

    All randomness comes from one numpy Generator whose state is saved with the checkpoints, so a resumed run draws
    exactly the batches an uninterrupted run would.
    """

    def __init__(self, cases: List[Union[SRCase, DegradedViews]], r: int, fwhm: float, profile: str, num_classes: int,
                 window: int, patch: int, label_dropout: float = 0.5, edge_replicate: float = 0.1, seed: int = 0,
                 thick_cases: Optional[List[SRCase]] = None):
        if not cases:
            raise ValueError("no training cases for the self-SR")
        self.r, self.window, self.patch, self.num_classes = r, window, patch, num_classes
        self.centre = (window - 1) // 2
        self.label_dropout, self.edge_replicate = label_dropout, edge_replicate
        # LR cases are self-supervised; prepared views (known thin slices along any axis) are used as given
        self.views = [c if isinstance(c, DegradedViews) else DegradedViews.self_supervised(c, r, fwhm, profile,
                                                                                           num_classes)
                      for c in cases]
        for v in self.views:
            for (axis, phase), lr in v.lr_image.items():
                if lr.shape[axis] < window:
                    raise ValueError(f"an in-plane axis of {v.hr_image.shape[axis]} voxels gives {lr.shape[axis]} "
                                     f"thick slices at r={r}, fewer than the SR window ({window})")
        # the real thick axis of the LR cases, for the consistency term (prepared views have no real thick slices):
        # by default every LR case; in a dataset of several slice spacings only those acquired at this r
        self.thick_cases = [c for c in cases if isinstance(c, SRCase)] if thick_cases is None else list(thick_cases)
        self.thick_side = thick_axis_side(r, fwhm, profile)
        self.rng = np.random.default_rng(seed)

    def _crop_plane(self, arr: np.ndarray, starts, plane_axes, patch: int = 0) -> np.ndarray:
        patch = patch or self.patch
        index = [slice(None)] * arr.ndim
        for a, s in zip(plane_axes, starts):
            index[a] = slice(s, s + patch)
        out = arr[tuple(index)]
        pad = [(0, 0)] * arr.ndim
        for a in plane_axes:
            pad[a] = (0, patch - out.shape[a])
        return np.pad(out, pad, mode="edge") if any(p[1] for p in pad) else out

    def sample_one(self):
        rng = self.rng
        view = self.views[rng.integers(len(self.views))]
        axis = int(rng.choice(view.axes))
        phase = int(rng.integers(self.r))
        lr = view.lr_image[axis, phase]
        n_lr = lr.shape[axis]
        first = int(rng.integers(0, n_lr - self.window + 1))
        ref = first + self.centre
        plane_axes = [a for a in (1, 2, 3) if a != axis]
        starts = [int(rng.integers(0, max(1, lr.shape[a] - self.patch + 1))) for a in plane_axes]
        # window of thick slices and the r thin sub-slices of the reference slice, degraded axis moved to front
        lr_window = np.take(lr, range(first, first + self.window), axis=axis)
        lab_window = np.take(view.lr_labels[axis, phase], range(first, first + self.window), axis=axis - 1)
        hr_range = range(phase + self.r * ref, phase + self.r * ref + self.r)
        hr_image = np.take(view.hr_image, hr_range, axis=axis)
        hr_labels = np.take(view.hr_labels, hr_range, axis=axis - 1)
        lr_window = np.moveaxis(self._crop_plane(lr_window, starts, plane_axes), axis, 1)
        hr_image = np.moveaxis(self._crop_plane(hr_image, starts, plane_axes), axis, 1)
        label_axes = [a - 1 for a in plane_axes]
        lab_window = np.moveaxis(self._crop_plane(lab_window, starts, label_axes), axis - 1, 0)
        hr_labels = np.moveaxis(self._crop_plane(hr_labels, starts, label_axes), axis - 1, 0)

        # the thick slices at the volume ends are replicated at inference: show the network that case too
        if rng.random() < self.edge_replicate:
            lr_window[:, :self.centre] = lr_window[:, self.centre:self.centre + 1]
            lab_window[:self.centre] = lab_window[self.centre:self.centre + 1]
        if rng.random() < self.edge_replicate:
            lr_window[:, self.centre + 1:] = lr_window[:, self.centre:self.centre + 1]
            lab_window[self.centre + 1:] = lab_window[self.centre:self.centre + 1]
        # in-plane flips and a swap of the two frame axes (the frame plane mixes the thick and an in-plane axis)
        lr_window, hr_image, lab_window, hr_labels = self._flip_and_swap(lr_window, hr_image, lab_window, hr_labels)
        # a global intensity scale commutes with the (linear) degradation, so it keeps the pair consistent
        scale = float(rng.uniform(0.8, 1.2))
        return self._net_input(lr_window * scale, lab_window), hr_image * scale, hr_labels

    def _flip_and_swap(self, *arrays):
        """The same random in-plane flips and swap of the two last axes for every array."""
        if self.rng.random() < 0.5:
            arrays = [a[..., ::-1, :] for a in arrays]
        if self.rng.random() < 0.5:
            arrays = [a[..., ::-1] for a in arrays]
        if self.rng.random() < 0.5:
            arrays = [a.swapaxes(-1, -2) for a in arrays]
        return arrays

    def _net_input(self, image: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Image channels and one-hot label maps (dropped at the label-dropout rate: image-only mode)."""
        label_maps = one_hot(labels, self.num_classes)
        if self.rng.random() < self.label_dropout:
            label_maps = np.zeros_like(label_maps)
        return np.concatenate([image, label_maps], axis=0)

    def sample_thick_one(self, patch: int):
        """Windows around one real thick slice k of an LR case, for the thick-axis consistency term: the windows of
        reference slices k - side .. k + side (their sub-slices cover the slice profile of slice k), ends
        edge-replicated as at inference. Returns the windows (2 side + 1, C + K, window, patch, patch) and thick
        slice k's image (C, patch, patch)."""
        rng, side = self.rng, self.thick_side
        case = self.thick_cases[rng.integers(len(self.thick_cases))]
        z = case.image.shape[1]
        k = int(rng.integers(z))
        rows = np.clip(np.arange(k - side - self.centre, k + side - self.centre + self.window), 0, z - 1)
        starts = [int(rng.integers(0, max(1, n - patch + 1))) for n in case.image.shape[2:]]
        image = self._crop_plane(case.image[:, rows], starts, (2, 3), patch)
        labels = self._crop_plane(case.labels[rows], starts, (1, 2), patch)
        image, labels = self._flip_and_swap(image, labels)
        net_input = self._net_input(image * float(rng.uniform(0.8, 1.2)), labels)
        windows = np.stack([net_input[:, j:j + self.window] for j in range(2 * side + 1)])
        middle = side + self.centre   # the row of thick slice k
        return windows, net_input[:case.image.shape[0], middle]

    def sample_thick(self, batch_size: int, patch: int):
        """`batch_size` draws of sample_thick_one as tensors: windows (B, 2 side + 1, C + K, window, P, P) and
        thick slices (B, C, P, P)."""
        items = [self.sample_thick_one(patch) for _ in range(batch_size)]
        return tuple(torch.from_numpy(np.ascontiguousarray(np.stack([i[n] for i in items]), dtype=np.float32))
                     for n in range(2))

    def sample(self, batch_size: int):
        items = [self.sample_one() for _ in range(batch_size)]
        net_input = torch.from_numpy(np.ascontiguousarray(np.stack([i[0] for i in items]), dtype=np.float32))
        image = torch.from_numpy(np.ascontiguousarray(np.stack([i[1] for i in items]), dtype=np.float32))
        labels = torch.from_numpy(np.ascontiguousarray(np.stack([i[2] for i in items])).astype(np.int64))
        return net_input, image, labels

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state
