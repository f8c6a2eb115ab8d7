"""Shape-based interpolation of thick-slice labels: a sphere comes back better than by nearest upsampling, a slab on
thick-slice boundaries comes back unchanged, several labels, any thick axis, both distance modes."""
import numpy as np
import pytest

from nnunetv2_rehrseg.degradation import majority_labels
from nnunetv2_rehrseg.interpolation import interpolate_along, shape_based_upsample, signed_distance
from nnunetv2_rehrseg.qc import dice_per_label


def _ball(shape, centre, radius):
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grids, centre)) <= radius ** 2


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("mode", ["2d", "3d"])
def test_spheres_degraded_and_brought_back_beat_nearest(axis, mode):
    """Two labels (balls about 6 and 5 thick slices tall): in 3d mode (the default) every label beats nearest
    upsampling; 2d mode stays close to it (measured: 3d is the better mode; neither gains on objects only 2-3 thick
    slices tall)."""
    r = 4
    shape = [40, 48, 40]
    hr = np.zeros(shape, np.uint8)
    hr[_ball(shape, (19.3, 13.1, 18.7), 11.5)] = 1
    hr[_ball(shape, (21, 34.5, 20), 9.2)] = 2
    lr = majority_labels(hr, axis, r, num_classes=3)
    up = shape_based_upsample(lr, axis, r, mode=mode)
    assert up.shape == hr.shape and set(np.unique(up)) == {0, 1, 2}
    ours, nearest = dice_per_label(up, hr, [1, 2]), dice_per_label(np.repeat(lr, r, axis=axis), hr, [1, 2])
    if mode == "3d":
        assert all(ours[k] > nearest[k] for k in ours), (ours, nearest)
        assert np.mean(list(ours.values())) > np.mean(list(nearest.values())) + 0.01, (ours, nearest)
    else:
        assert np.mean(list(ours.values())) > np.mean(list(nearest.values())) - 0.01, (ours, nearest)


@pytest.mark.parametrize("axis", [0, 2])
def test_slab_on_thick_slice_boundaries_is_unchanged(axis):
    r = 3
    hr = np.zeros((24, 10, 12), np.uint8)
    index = [slice(None)] * 3
    index[axis] = slice(2 * r, 5 * r)
    hr[tuple(index)] = 2
    index[axis] = slice(5 * r, 6 * r)
    hr[tuple(index)] = 1
    if hr.shape[axis] % r:
        pytest.skip("shape not divisible")
    lr = majority_labels(hr, axis, r, num_classes=3)
    for mode in ("2d", "3d"):
        np.testing.assert_array_equal(shape_based_upsample(lr, axis, r, mode=mode), hr)


def test_signed_distance_and_interpolation_grid():
    mask = np.zeros((1, 7), bool)
    mask[0, 2:5] = True
    d = signed_distance(mask, (1.0, 2.0))
    np.testing.assert_allclose(d[0], [4, 2, -2, -4, -2, 2, 4])
    assert (signed_distance(np.zeros((3, 3), bool), (1, 1)) > 0).all()
    # LR slice centres map to HR index r*k + (r-1)/2: a ramp over LR slices stays a ramp over HR centres
    ramp = np.arange(5, dtype=float)[:, None]
    up = interpolate_along(ramp, 0, 4)[:, 0]
    np.testing.assert_allclose(up[2:-2], (np.arange(20)[2:-2] - 1.5) / 4)
    assert up[0] == 0 and up[-1] == 4                  # held at the ends
    with pytest.raises(ValueError):
        shape_based_upsample(np.zeros((2, 3, 3), np.uint8), 0, 2, mode="4d")


@pytest.mark.parametrize("r, axis", [(4, 0), (3, 2)])
def test_contour_interpolation_brings_balls_back_and_keeps_the_grid(r, axis):
    """ITK's morphological contour interpolation (the benchmark's arm 1c), for an even r (two centre choices,
    reconciled) and an odd one: a ball about 5 thick slices tall comes back better than by nearest upsampling; one
    about 3.5 tall (label 2) may not at r = 4 (ITK ends an object at its outermost annotated sub-slice: measured
    0.86 vs 0.90)."""
    pytest.importorskip("itk")
    from nnunetv2_rehrseg.interpolation import contour_interpolated_upsample

    shape = [36, 40, 36]
    hr = np.zeros(shape, np.uint8)
    hr[_ball(shape, (17.3, 12.1, 17.7), 9.5)] = 1
    hr[_ball(shape, (18, 29.5, 18), 7.2)] = 2
    if hr.shape[axis] % r:
        hr = np.take(hr, np.arange(hr.shape[axis] // r * r), axis=axis)
    lr = majority_labels(hr, axis, r, num_classes=3)
    up = contour_interpolated_upsample(lr, axis, r)
    assert up.shape == hr.shape and up.dtype == lr.dtype
    ours, nearest = dice_per_label(up, hr, [1, 2]), dice_per_label(np.repeat(lr, r, axis=axis), hr, [1, 2])
    assert ours[1] > nearest[1] and (r % 2 == 0 or ours[2] > nearest[2]), (ours, nearest)
    # the annotation is kept where it is certain: every thick slice's majority still reproduces it
    assert (majority_labels(up, axis, r, num_classes=3) == lr).mean() > 0.97
