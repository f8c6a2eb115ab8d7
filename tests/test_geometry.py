import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_rehrseg.degradation import blur_subsample
from nnunetv2_rehrseg.geometry import Grid, hr_grid, lr_grid, numpy_axis_of


def oblique_direction(seed: int) -> tuple:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return tuple(q.ravel())


@pytest.mark.parametrize("lr_axis", [0, 1, 2])
@pytest.mark.parametrize("r", [2, 3, 4])
def test_lr_slice_centre_is_mean_of_its_sub_slices(lr_axis, r):
    spacing = [0.7, 0.9, 1.1]
    spacing[lr_axis] = 5.0
    lr = Grid((10, 12, 14), tuple(spacing), (3.0, -20.0, 41.5), oblique_direction(lr_axis + 10 * r))
    hr = hr_grid(lr, lr_axis, r)
    assert hr.size[lr_axis] == lr.size[lr_axis] * r
    assert hr.spacing[lr_axis] == pytest.approx(5.0 / r)
    assert hr.direction == lr.direction
    for k in (0, 3, lr.size[lr_axis] - 1):
        lr_index = np.array([2.0, 5.0, 7.0])
        lr_index[lr_axis] = k
        sub_centres = []
        for j in range(r * k, r * k + r):
            hr_index = lr_index.copy()
            hr_index[lr_axis] = j
            sub_centres.append(hr.index_to_world(hr_index))
        np.testing.assert_allclose(np.mean(sub_centres, axis=0), lr.index_to_world(lr_index), atol=1e-9)
    back = lr_grid(hr, lr_axis, r)
    assert back.size == lr.size
    np.testing.assert_allclose(back.origin, lr.origin, atol=1e-9)
    np.testing.assert_allclose(back.spacing, lr.spacing, atol=1e-12)


def test_sitk_physical_points_agree_with_grid():
    grid = Grid((6, 7, 8), (0.8, 0.8, 4.0), (10.0, 20.0, -30.0), oblique_direction(3))
    image = grid.apply_to(sitk.Image(6, 7, 8, sitk.sitkFloat32))
    hr = hr_grid(grid, 2, 4)
    hr_image = hr.apply_to(sitk.Image(6, 7, 32, sitk.sitkFloat32))
    for index in ((0, 0, 0), (5, 6, 7), (2, 3, 4)):
        np.testing.assert_allclose(image.TransformContinuousIndexToPhysicalPoint(index),
                                   grid.index_to_world(index), atol=1e-9)
        hr_index = (index[0], index[1], 4 * index[2] + 1.5)
        np.testing.assert_allclose(hr_image.TransformContinuousIndexToPhysicalPoint(hr_index),
                                   image.TransformContinuousIndexToPhysicalPoint(index), atol=1e-6)


@pytest.mark.parametrize("lr_axis", [0, 1, 2])
def test_degraded_ramp_in_world_coordinates(lr_axis):
    """An HR volume whose values are the world coordinate along the slice normal, degraded along any axis, gives LR
    values equal to the world coordinate of the LR voxel centres on the derived LR grid."""
    r = 4
    size = [8, 8, 8]
    size[lr_axis] = 12 * r
    spacing = [1.0, 1.0, 1.0]
    hr = Grid(tuple(size), tuple(spacing), (1.0, 2.0, 3.0), oblique_direction(7))
    normal = np.asarray(hr.direction).reshape(3, 3)[:, lr_axis]
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in size], indexing="ij"), -1)  # sitk index order
    world = (idx * np.asarray(spacing)) @ np.asarray(hr.direction).reshape(3, 3).T + np.asarray(hr.origin)
    values = (world @ normal).transpose(2, 1, 0)  # to (z, y, x)
    lr_values = blur_subsample(values, numpy_axis_of(lr_axis), r, float(r))
    lr = lr_grid(hr, lr_axis, r)
    for lr_index in ((3, 3, 3), (4, 2, 5)):
        lr_index = list(lr_index)
        lr_index[lr_axis] = 5
        expected = lr.index_to_world(lr_index) @ normal
        assert lr_values[tuple(lr_index[::-1])] == pytest.approx(expected, abs=1e-4)
