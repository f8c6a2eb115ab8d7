import numpy as np
import pytest
import torch

from nnunetv2_rehrseg.selfsr.pseudo_labels import (class_volumes, implied_hr_volumes, labels_consistent_with_lr,
                                                    volume_calibrated_labels)
from nnunetv2_rehrseg.geometry import detect_lr_axis, resolve_scale
from nnunetv2_rehrseg.degradation import (blur_subsample, majority_labels, profile_fwhm_in_voxels,
                                          slice_kernel)


def measured_fwhm(profile: str, fwhm: float) -> float:
    from nnunetv2_rehrseg.degradation import gaussian_profile, slr_profile
    t = np.linspace(-3 * fwhm, 3 * fwhm, 60001)
    h = (gaussian_profile if profile == "gaussian" else slr_profile)(t, fwhm)
    above = t[h >= 0.5 * h.max()]
    return above.max() - above.min()


@pytest.mark.parametrize("profile", ["gaussian", "rf-pulse-slr"])
@pytest.mark.parametrize("fwhm", [2.0, 3.87, 5.0])
def test_profile_has_requested_fwhm(profile, fwhm):
    assert measured_fwhm(profile, fwhm) == pytest.approx(fwhm, rel=0.01)


@pytest.mark.parametrize("profile", ["gaussian", "rf-pulse-slr"])
@pytest.mark.parametrize("r", [2, 3, 4, 5])
def test_kernel_normalised_and_symmetric_about_slice_centre(profile, r):
    weights, i_min = slice_kernel(r, float(r), profile)
    assert weights.sum() == pytest.approx(1.0, abs=1e-6)
    assert (weights >= 0).all()
    np.testing.assert_allclose(weights, weights[::-1], atol=1e-6)
    indices = np.arange(i_min, i_min + len(weights))
    assert (weights * indices).sum() == pytest.approx((r - 1) / 2, abs=1e-5)


def test_fwhm_from_thickness():
    assert profile_fwhm_in_voxels(4.0, 1.0) == pytest.approx(4.0)
    assert profile_fwhm_in_voxels(4.0, 1.0, hr_slice_thickness=1.0) == pytest.approx(np.sqrt(15))
    assert profile_fwhm_in_voxels(6.0, 1.0) == pytest.approx(6.0)  # thickness > spacing: overlapping slices
    with pytest.raises(ValueError):
        profile_fwhm_in_voxels(0.0, 1.0)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("profile", ["gaussian", "rf-pulse-slr"])
def test_constant_stays_constant(axis, profile):
    hr = np.full((16, 12, 20), 3.5, np.float32)
    lr = blur_subsample(hr, axis, 4, 4.0, profile)
    expected_shape = list(hr.shape)
    expected_shape[axis] //= 4
    assert lr.shape == tuple(expected_shape)
    np.testing.assert_allclose(lr, 3.5, rtol=1e-6)


@pytest.mark.parametrize("r", [2, 3, 4])
@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("phase", [0, 1])
def test_ramp_lands_on_slice_centres(r, axis, phase):
    n = 12 * r + phase
    ramp = np.arange(n, dtype=np.float64) * 0.5 + 2.0
    shape = [3, 3, 3]
    shape[axis] = n
    hr = np.broadcast_to(ramp.reshape([-1 if a == axis else 1 for a in range(3)]), shape).copy()
    lr = np.moveaxis(blur_subsample(hr, axis, r, float(r), phase=phase), axis, 0)[:, 0, 0]
    centres = phase + r * np.arange(len(lr)) + (r - 1) / 2
    interior = slice(2, len(lr) - 2)  # edge replication bends the ramp at the ends only
    np.testing.assert_allclose(lr[interior], centres[interior] * 0.5 + 2.0, atol=1e-4)


def test_torch_and_numpy_agree():
    rng = np.random.default_rng(0)
    hr = rng.random((2, 16, 10, 8)).astype(np.float32)
    a = blur_subsample(hr, 1, 4, 4.0, phase=2)
    b = blur_subsample(torch.from_numpy(hr), 1, 4, 4.0, phase=2).numpy()
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_majority_rule():
    column = np.array([1, 1, 2, 0, 3, 3, 3, 0, 2, 2, 1, 1], np.uint8)  # r = 4: [1,1,2,0] [3,3,3,0] [2,2,1,1]
    lr = majority_labels(column[:, None, None], axis=0, r=4)
    assert lr[:, 0, 0].tolist() == [1, 3, 1]  # the last block ties 2 vs 1: the lower label wins
    assert lr.dtype == np.uint8
    shifted = majority_labels(column[:, None, None], axis=0, r=4, phase=1)
    assert shifted[:, 0, 0].tolist() == [0, 3]  # [1,2,0,3] is a four-way tie -> 0; [3,3,0,2] -> 3
    along_x = majority_labels(np.broadcast_to(column, (2, 3, 12)).copy(), axis=2, r=4)
    assert along_x.shape == (2, 3, 3) and (along_x == np.array([1, 3, 1])).all()


@pytest.mark.parametrize("r, axis, phase", [(2, 0, 1), (4, 1, 0), (5, 2, 3)])
def test_majority_is_the_lowest_most_common_label_of_each_block(r, axis, phase):
    from scipy.stats import mode

    rng = np.random.default_rng(r)
    hr = rng.integers(0, 4, (3 * r + phase + 1, 9, 7)).astype(np.int16).swapaxes(0, axis).copy()
    lr = majority_labels(torch.from_numpy(hr), axis=axis, r=r, phase=phase, num_classes=4)
    blocks = np.moveaxis(hr, axis, 0)[phase:phase + 3 * r].reshape(3, r, *np.delete(hr.shape, axis))
    expected = np.moveaxis(mode(blocks, axis=1, keepdims=False).mode, 0, axis)  # scipy: ties -> smallest value
    assert lr.dtype == torch.int16 and np.array_equal(lr.numpy(), expected)


def test_lr_axis_detection_and_isotropic_error():
    assert detect_lr_axis((0.8, 0.8, 4.0)) == 2
    assert detect_lr_axis((5.0, 1.0, 1.0)) == 0
    with pytest.raises(ValueError, match="isotropic"):
        detect_lr_axis((1.0, 1.0, 1.2))


def test_scale_resolution():
    assert resolve_scale(4.0, 1.0) == (4, 1.0, None)
    r, hr_spacing, warning = resolve_scale(5.0, 0.9)
    assert r == 6 and hr_spacing == pytest.approx(5.0 / 6) and "not an integer" in warning
    assert resolve_scale(6.0, 1.0, target_spacing=2.0)[:2] == (3, 2.0)
    assert resolve_scale(6.0, 1.0, r=2)[:2] == (2, 3.0)
    with pytest.raises(ValueError):
        resolve_scale(1.2, 1.0)


@pytest.mark.parametrize("r", [2, 3, 4, 5])
def test_consistent_labels_reproduce_the_annotation_and_keep_agreeing_columns(r):
    rng = np.random.default_rng(r)
    probabilities = rng.random((4, r * 6, 7, 5)).astype(np.float32)
    probabilities /= probabilities.sum(0)
    lr = rng.integers(0, 4, (6, 7, 5)).astype(np.uint8)
    out = labels_consistent_with_lr(probabilities, lr, r)
    assert out.shape == (r * 6, 7, 5) and out.dtype == lr.dtype
    np.testing.assert_array_equal(majority_labels(out, 0, r, num_classes=4), lr)
    argmax = probabilities.argmax(0).astype(np.uint8)
    agrees = np.repeat(majority_labels(argmax, 0, r, num_classes=4) == lr, r, axis=0)
    assert agrees.any() and not agrees.all()
    np.testing.assert_array_equal(out[agrees], argmax[agrees])


def test_consistent_labels_switch_the_fewest_most_probable_sub_slices():
    # r = 4, annotated GM (2); the network says CSF, CSF, WM, WM: tie -> CSF wins, so sub-slices must switch
    probabilities = np.zeros((4, 4, 1, 1), np.float32)
    for i, (label, p_gm) in enumerate([(1, 0.1), (1, 0.4), (3, 0.3), (3, 0.2)]):
        probabilities[label, i] = 0.6
        probabilities[2, i] = p_gm
    out = labels_consistent_with_lr(probabilities, np.array([[[2]]], np.uint8), 4)[:, 0, 0]
    # one switch (sub-slice 1, the most probable GM) gives CSF, GM, WM, WM -> WM; two (1, then 2) give GM
    np.testing.assert_array_equal(out, [1, 2, 2, 3])


def test_consistent_labels_refuse_a_wrong_shape():
    with pytest.raises(ValueError, match="thick slices"):
        labels_consistent_with_lr(np.ones((2, 7, 3, 3), np.float32), np.zeros((2, 3, 3), np.uint8), 4)


def test_volume_calibration_restores_an_under_predicted_class_and_stays_consistent():
    """A network that under-predicts a thin class: the consistency step alone keeps it near the minimum the majority
    allows; calibrated, its HR volume matches the implied volume and the majority still reproduces the annotation."""
    r, rng = 4, np.random.default_rng(3)
    hr_truth = np.zeros((32, 20, 20), np.uint8)
    hr_truth[:, 5:7] = 1                                    # a thin sheet, 2 voxels thick in-plane
    hr_truth[:, 12:] = 2
    hr_truth[9:14, 3:9] = 1                                 # and a blob crossing thick-slice boundaries
    lr = majority_labels(hr_truth, 0, r, num_classes=3)
    logits = np.eye(3)[hr_truth].transpose(3, 0, 1, 2) * 3.0 + rng.normal(0, 1.0, (3, *hr_truth.shape))
    logits[1] -= 2.5                                        # class 1 under-predicted
    probabilities = np.exp(logits) / np.exp(logits).sum(0)
    labels, record = volume_calibrated_labels(probabilities.astype(np.float32), lr, r)
    target = implied_hr_volumes(lr, r, 3)
    assert record["consistent_only"][1] < 0.9               # the old rule leaves the deficit
    np.testing.assert_allclose(np.bincount(labels.ravel(), minlength=3) / target, 1, atol=0.03)
    np.testing.assert_array_equal(majority_labels(labels, 0, r, num_classes=3), lr)
    assert record["offsets"][1] > record["offsets"][0]


def test_implied_volumes_restore_what_the_thick_slice_majority_takes_from_thin_structures():
    """Sheets 3 voxels thick in every orientation plus a compact block: the thick-slice majority under-counts the
    sheets (truth 1.19x r x the LR count); the in-plane estimate recovers most of it, keeps the total, and leaves a
    class that is the same in every direction near 1."""
    r, n = 4, 48
    truth = np.zeros((n, n, n), np.uint8)
    for axis in range(3):
        for start in (5, 18, 31, 42):
            index = [slice(None)] * 3
            index[axis] = slice(start, start + 3)
            truth[tuple(index)] = 1
    truth[20:30, 20:30, 20:30] = 2
    lr = majority_labels(truth, 0, r, num_classes=3)
    annotated = r * class_volumes(lr, 3)
    implied = implied_hr_volumes(lr, r, 3)
    true_ratio = class_volumes(truth, 3) / annotated
    assert true_ratio[1] > 1.15
    assert 1.08 < implied[1] / annotated[1] <= true_ratio[1]
    assert abs(implied[2] / annotated[2] - 1) < 0.02
    assert np.isclose(implied.sum(), annotated.sum())
    # a class that vanishes in-plane gets a bounded volume
    speck = np.zeros((16, 16, 16), np.uint8)
    speck[4:8, 4, 4] = 1
    speck_lr = majority_labels(speck, 0, r, num_classes=2)
    assert implied_hr_volumes(speck_lr, r, 2)[1] <= 2.01 * r * class_volumes(speck_lr, 2)[1]   # total rescaled


@pytest.mark.parametrize("profile", ["gaussian", "rf-pulse-slr"])
def test_back_projection_makes_thin_slices_agree_with_the_thick_ones(profile):
    """Landweber steps on ||blur_subsample(x) - lr||: the residual shrinks geometrically, a consistent estimate (the
    truth) is a fixed point, zero iterations change nothing, and a crude estimate gets closer to the truth."""
    from nnunetv2_rehrseg.degradation import back_project
    from nnunetv2_rehrseg.tools.phantom import phantom as make_phantom

    r, fwhm = 4, 4.0
    truth, _ = make_phantom((32, 24, 24), 2)
    truth = truth.astype(np.float32)
    lr = blur_subsample(truth, 0, r, fwhm, profile)
    crude = np.repeat(lr, r, axis=0)

    def residual(x):
        return np.abs(blur_subsample(x, 0, r, fwhm, profile) - lr).mean()
    corrected = back_project(crude, lr, 0, r, fwhm, profile, iterations=20)
    assert residual(corrected) < 0.01 * residual(crude)
    assert np.abs(corrected - truth).mean() < np.abs(crude - truth).mean()
    np.testing.assert_allclose(back_project(truth, lr, 0, r, fwhm, profile, iterations=5), truth, atol=1e-4)
    assert back_project(crude, lr, 0, r, fwhm, profile, iterations=0) is crude
    # along another axis of a multi-channel array, as stage 1 calls it
    stacked = back_project(np.stack([crude, crude]), np.stack([lr, lr]), 1, r, fwhm, profile, iterations=3)
    np.testing.assert_allclose(stacked[1], back_project(crude, lr, 0, r, fwhm, profile, iterations=3), atol=1e-5)


def test_back_projection_stops_at_the_noise_of_the_thick_slices():
    """The discrepancy principle: an estimate already as close to noisy thick slices as their noise is left alone;
    without that stop, the thin slices take the noise over. noise_sigma reads the noise off an image."""
    from nnunetv2_rehrseg.degradation import back_project, noise_sigma
    from nnunetv2_rehrseg.tools.phantom import phantom as make_phantom

    r, fwhm = 4, 4.0
    truth = make_phantom((32, 48, 48), 3)[0].astype(np.float32)
    truth = (truth - truth.min()) / (truth.max() - truth.min())
    rng = np.random.default_rng(0)
    noisy = blur_subsample(truth, 0, r, fwhm) + rng.normal(0, 0.05, (8, 48, 48)).astype(np.float32)
    kept = back_project(truth, noisy, 0, r, fwhm, iterations=10, noise_sigma=0.06)
    np.testing.assert_array_equal(kept, truth)
    fitted = back_project(truth, noisy, 0, r, fwhm, iterations=10, noise_sigma=0.0)
    assert np.abs(fitted - truth).mean() > 0.01
    pure = rng.normal(0, 0.05, (8, 64, 64))
    assert noise_sigma(pure) == pytest.approx(0.05, rel=0.15)
    assert noise_sigma(np.zeros((8, 64, 64))) == 0.0
