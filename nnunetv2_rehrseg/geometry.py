"""HR-grid geometry derived exactly from an LR header (SimpleITK conventions: index order x, y, z).

World position of voxel index v: origin + D @ (spacing * v), where column a of the direction matrix D is the
direction of index axis a. On the HR grid the LR axis spacing is divided by r and the origin moves so that each
LR slice centre equals the mean of its r sub-slice centres: origin_hr = origin_lr - (r-1)/2 * (s/r) * D[:, a].
"""
from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class Grid:
    size: Tuple[int, ...]        # sitk order (x, y, z)
    spacing: Tuple[float, ...]
    origin: Tuple[float, ...]
    direction: Tuple[float, ...]  # row-major flattened 3x3

    @classmethod
    def of(cls, image: sitk.Image) -> "Grid":
        return cls(tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()),
                   tuple(image.GetDirection()))

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        if tuple(image.GetSize()) != self.size:
            raise ValueError(f"image size {image.GetSize()} does not match grid size {self.size}")
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def index_to_world(self, index: Sequence[float]) -> np.ndarray:
        direction = np.asarray(self.direction, dtype=float).reshape(3, 3)
        return np.asarray(self.origin) + direction @ (np.asarray(self.spacing) * np.asarray(index, dtype=float))


def hr_grid(lr: Grid, lr_axis: int, r: int) -> Grid:
    """The HR grid for an LR grid; `lr_axis` in sitk index order (0 = x)."""
    direction = np.asarray(lr.direction, dtype=float).reshape(3, 3)
    hr_spacing = list(lr.spacing)
    hr_spacing[lr_axis] = lr.spacing[lr_axis] / r
    shift = -(r - 1) / 2.0 * hr_spacing[lr_axis] * direction[:, lr_axis]
    size = list(lr.size)
    size[lr_axis] = lr.size[lr_axis] * r
    return Grid(tuple(size), tuple(hr_spacing), tuple(np.asarray(lr.origin) + shift), lr.direction)


def lr_grid(hr: Grid, lr_axis: int, r: int) -> Grid:
    """Inverse of `hr_grid` (the grid of thick slices that `blur_subsample` at phase 0 produces)."""
    direction = np.asarray(hr.direction, dtype=float).reshape(3, 3)
    lr_spacing = list(hr.spacing)
    lr_spacing[lr_axis] = hr.spacing[lr_axis] * r
    shift = (r - 1) / 2.0 * hr.spacing[lr_axis] * direction[:, lr_axis]
    size = list(hr.size)
    size[lr_axis] = hr.size[lr_axis] // r
    return Grid(tuple(size), tuple(lr_spacing), tuple(np.asarray(hr.origin) + shift), hr.direction)


def numpy_axis_of(sitk_axis: int, ndim: int = 3) -> int:
    """sitk index axis -> axis of the array from sitk.GetArrayFromImage (reversed order)."""
    return ndim - 1 - sitk_axis
