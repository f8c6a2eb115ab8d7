"""HR-grid geometry derived exactly from an LR header (SimpleITK conventions: index order x, y, z), and the one rule
for how a thick-slice case maps onto a dataset's or model's HR spacing (`slice_geometry`), used by stage 1, the
predictor and rehrseg_super_resolve alike.

World position of voxel index v: origin + D @ (spacing * v), where column a of the direction matrix D is the
direction of index axis a. On the HR grid the LR axis spacing is divided by r and the origin moves so that each
LR slice centre equals the mean of its r sub-slice centres: origin_hr = origin_lr - (r-1)/2 * (s/r) * D[:, a].
"""
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from nnunetv2_rehrseg.errors import InputError

# a thick axis is at least this many times the largest in-plane spacing: below it a volume counts as isotropic and
# there is nothing to super-resolve
MIN_ANISOTROPY = 1.5
# a rounded r further than this fraction from the exact ratio is worth a warning: the HR grid then lies off the target
SCALE_WARNING_FRACTION = 0.05


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


def detect_lr_axis(spacing: Sequence[float], min_anisotropy: float = MIN_ANISOTROPY) -> int:
    """Index of the thick-slice axis (largest spacing); raises ValueError for (near-)isotropic spacing."""
    spacing = np.asarray(spacing, dtype=float)
    axis = int(np.argmax(spacing))
    in_plane = np.delete(spacing, axis)
    ratio = spacing[axis] / in_plane.max()
    if ratio < min_anisotropy:
        raise ValueError(f"spacing {tuple(float(s) for s in spacing.round(4))} is (nearly) isotropic (ratio {ratio:.2f} < "
                         f"{min_anisotropy}): there is no thick-slice axis to super-resolve")
    return axis


def resolve_scale(slice_spacing: float, in_plane_spacing: float, r: Optional[int] = None,
                  target_spacing: Optional[float] = None) -> Tuple[int, float, Optional[str]]:
    """(r, HR spacing along the thick axis, warning or None).

    Target defaults to the in-plane spacing and r = round(slice spacing / target). The HR spacing is then
    slice_spacing / r exactly, so the HR grid covers the LR field of view; a non-integer ratio is rounded with a
    warning (resampling the LR data instead would invent a grid the annotations were never drawn on).
    """
    warning = None
    if r is None:
        target = in_plane_spacing if target_spacing is None else target_spacing
        if target <= 0:
            raise ValueError(f"target spacing must be > 0, got {target}")
        ratio = slice_spacing / target
        r = max(1, int(round(ratio)))
        if abs(ratio - r) > SCALE_WARNING_FRACTION * r:
            warning = (f"slice spacing / target spacing = {slice_spacing:.4g} / {target:.4g} = {ratio:.3f} is not an "
                       f"integer: using r = {r} (HR spacing {slice_spacing / r:.4g} mm)")
    if r < 2:
        raise ValueError(f"scale r = {r}: the data is not thick-sliced relative to the target spacing")
    return int(r), float(slice_spacing) / r, warning


@dataclass(frozen=True)
class SliceGeometry:
    """How one case was acquired and where its HR grid lies: its thick axis (SimpleITK index order), slice spacing and
    thickness (mm), and r, the number of thin slices per thick one (HR spacing = slice spacing / r)."""
    axis: int
    slice_spacing: float
    in_plane_spacing: float
    r: int
    slice_thickness: float

    @property
    def hr_spacing(self) -> float:
        return self.slice_spacing / self.r

    def to_dict(self) -> dict:
        return {"axis": self.axis, "slice_spacing": self.slice_spacing, "in_plane_spacing": self.in_plane_spacing,
                "r": self.r, "slice_thickness": self.slice_thickness}


def slice_geometry(spacing: Sequence[float], target_spacing: float, source: str,
                   slice_thickness: Optional[float] = None) -> SliceGeometry:
    """The one rule for a thick-slice case (spacing in SimpleITK order) against an HR target spacing: its thick axis
    is its largest spacing, r = round(slice spacing / target) (the field of view kept, so its HR spacing is slice
    spacing / r), its thickness the slice spacing unless given. Refuses, naming `source`, a case with no thick axis
    and a case whose slices are not thicker than the target (r < 2)."""
    spacing = [float(s) for s in spacing]
    try:
        axis = detect_lr_axis(spacing)
    except ValueError as e:
        raise InputError(f"{source}: {e}; REHRSeg takes thick-slice (anisotropic) volumes only") from None
    slice_spacing = spacing[axis]
    in_plane = max(s for a, s in enumerate(spacing) if a != axis)
    r = int(round(slice_spacing / target_spacing))
    if r < 2:
        raise InputError(f"{source}: slice spacing {slice_spacing:.4g} mm is less than 1.5 x the HR target spacing "
                         f"{target_spacing:.4g} mm: it is not a thick-slice case for this dataset or model; remove "
                         f"it, or choose a smaller -target_spacing")
    thickness = slice_spacing if slice_thickness is None else float(slice_thickness)
    return SliceGeometry(axis, slice_spacing, in_plane, r, thickness)


def axes_swap(grid: Grid, a: int, b: int) -> Grid:
    """The same voxels with index axes a and b (SimpleITK order) exchanged: identical world geometry, another index
    order (the direction matrix's columns swap with the sizes and spacings)."""
    if a == b:
        return grid
    order = list(range(3))
    order[a], order[b] = b, a
    direction = np.asarray(grid.direction, dtype=float).reshape(3, 3)[:, order]
    return Grid(tuple(grid.size[i] for i in order), tuple(grid.spacing[i] for i in order), grid.origin,
                tuple(direction.ravel()))


def swap_array_axes(array: np.ndarray, a: int, b: int, channel_first: bool = False) -> np.ndarray:
    """`axes_swap` on a (C,) z, y, x array from sitk.GetArrayFromImage."""
    offset = 1 if channel_first else 0
    return np.swapaxes(array, offset + numpy_axis_of(a), offset + numpy_axis_of(b))
