"""Shape-based interpolation of a thick-slice label map onto the thin-slice grid (the classical baseline).

Each class gets a signed distance map on the LR grid (negative inside, in mm), the maps are interpolated linearly
along the thick axis to the HR slice centres of the same-field-of-view grid (HR slice j sits at LR index
(j - (r - 1) / 2) / r, see geometry.hr_grid), and every HR voxel takes the class with the smallest interpolated
distance. Distances are either 3D on the anisotropic LR grid (`"3d"`) or in-plane per slice (`"2d"`).
"""
from typing import Optional, Sequence

import numpy as np
from scipy.ndimage import distance_transform_edt

ABSENT = 1e6   # mm: a class missing from a slice (2d) or the volume is far from every voxel


def signed_distance(mask: np.ndarray, sampling: Sequence[float]) -> np.ndarray:
    """Distance in mm to the other side of the mask's boundary: negative inside, positive outside (float32)."""
    if not mask.any():
        return np.full(mask.shape, ABSENT, np.float32)
    if mask.all():
        return np.full(mask.shape, -ABSENT, np.float32)
    return (distance_transform_edt(~mask, sampling=sampling) - distance_transform_edt(mask, sampling=sampling)).astype(
        np.float32)


def class_distances(lr_labels: np.ndarray, axis: int, label: int, spacing: Sequence[float], mode: str) -> np.ndarray:
    """Signed distances of one class on the LR grid. In 2d mode a slice where the class has no boundary (absent, or
    everywhere) takes its neighbours' distances, mirrored to its side: the boundary then lies half-way, at the
    thick-slice boundary where the annotation puts it, instead of at the last slice centre."""
    mask = lr_labels == label
    if mode == "3d":
        return signed_distance(mask, spacing)
    in_plane = [s for a, s in enumerate(spacing) if a != axis]
    planes = [np.take(mask, k, axis=axis) for k in range(mask.shape[axis])]
    slices = [signed_distance(plane, in_plane) for plane in planes]
    has_boundary = [bool(plane.any() and not plane.all()) for plane in planes]
    for k, plane in enumerate(planes):
        neighbours = [j for j in (k - 1, k + 1) if 0 <= j < len(slices) and has_boundary[j]]
        if not has_boundary[k] and neighbours:
            reach = np.maximum.reduce([np.abs(slices[j]) for j in neighbours])
            slices[k] = -reach if plane.all() else reach
    return np.stack(slices, axis=axis)


def interpolate_along(volume: np.ndarray, axis: int, r: int) -> np.ndarray:
    """Linear interpolation from LR slice centres to the r-times finer same-FOV slice centres (edges held)."""
    n = volume.shape[axis]
    position = np.clip((np.arange(n * r) - (r - 1) / 2) / r, 0, n - 1)
    below = np.floor(position).astype(int)
    above = np.minimum(below + 1, n - 1)
    weight = (position - below).reshape([-1 if a == axis else 1 for a in range(volume.ndim)])
    return (1 - weight) * np.take(volume, below, axis=axis) + weight * np.take(volume, above, axis=axis)


def shape_based_upsample(lr_labels: np.ndarray, axis: int, r: int, spacing: Optional[Sequence[float]] = None,
                         mode: str = "3d", labels: Optional[Sequence[int]] = None) -> np.ndarray:
    """HR labels (r times the slices along `axis`) from LR labels; `spacing` of the LR array's axes in mm (default
    1 in-plane and r along `axis`); `labels`: the label values to consider (default: those present, background
    included)."""
    if mode not in ("2d", "3d"):
        raise ValueError(f"mode must be '2d' or '3d', got {mode!r}")
    axis = axis % lr_labels.ndim
    if spacing is None:
        spacing = [float(r) if a == axis else 1.0 for a in range(lr_labels.ndim)]
    values = np.unique(lr_labels) if labels is None else np.asarray(labels)
    best = np.full([n * r if a == axis else n for a, n in enumerate(lr_labels.shape)], np.inf, np.float32)
    result = np.zeros(best.shape, lr_labels.dtype)
    for value in values:
        distance = interpolate_along(class_distances(lr_labels, axis, value, spacing, mode), axis, r)
        closer = distance < best
        best[closer] = distance[closer]
        result[closer] = value
    return result


def contour_interpolated_upsample(lr_labels: np.ndarray, axis: int, r: int) -> np.ndarray:
    """HR labels by ITK's morphological contour interpolation (Albu et al. 2008, Zukic et al. 2016; PyPI
    `itk-morphologicalcontourinterpolation`, the `[benchmark]` extra).

    ITK interpolates the empty slices between isolated annotated ones, so each LR slice's labels go on one HR
    sub-slice. For an odd r that is the centre sub-slice. For an even r the centre falls between two sub-slices:
    both choices are interpolated, and where the two results disagree the LR slice's own label decides (nearest),
    which keeps the result symmetric. Sub-slices beyond the first and last annotated one copy it. ITK ends an
    object at its outermost annotated sub-slice: an object 3-4 thick slices tall loses its caps (tests)."""
    _require_itk_contour_interpolation()
    axis = axis % lr_labels.ndim
    moved = np.moveaxis(lr_labels, axis, 0)
    n = moved.shape[0]
    offsets = [r // 2] if r % 2 else [r // 2 - 1, r // 2]
    sparse = []
    for offset in offsets:
        volume = np.zeros((n * r, *moved.shape[1:]), moved.dtype)
        volume[offset::r] = moved
        sparse.append(volume)
    filled = [_itk_contour_interpolation(volume) for volume in sparse]
    for volume, offset in zip(filled, offsets):
        volume[:offset] = moved[0]
        volume[r * (n - 1) + offset + 1:] = moved[-1]
    result = filled[0] if len(filled) == 1 else np.where(filled[0] == filled[1], filled[0],
                                                          np.repeat(moved, r, axis=0))
    return np.moveaxis(result.astype(lr_labels.dtype), 0, axis)


def _require_itk_contour_interpolation() -> None:
    try:
        import itk
        itk.MorphologicalContourInterpolator
    except (ImportError, AttributeError):
        raise ImportError("contour interpolation needs ITK's filter: pip install 'nnunetv2-rehrseg[benchmark]'") \
            from None


def _itk_contour_interpolation(sparse: np.ndarray) -> np.ndarray:
    """ITK's filter along axis 0 of a (Z, Y, X) label map whose empty slices are to be filled."""
    import itk

    # multi-threaded, ITK 5.4's filter corrupted the heap on an MNI152-sized multi-label volume ("malloc(): unsorted
    # double linked list corrupted", "unaligned fastbin chunk"); single-threaded it ran clean with the same output
    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(1)
    image = itk.image_from_array(np.ascontiguousarray(sparse))
    return itk.array_from_image(itk.morphological_contour_interpolator(image, axis=sparse.ndim - 1))  # x, y, z
