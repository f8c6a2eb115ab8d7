"""Soft pseudo-HR targets: quantised storage, the loader's augmentation keeping them aligned with the labels, the
HR-head target's layout and the losses toward it (equal to nnU-Net's own on one-hot targets)."""
import numpy as np
import pytest
import torch

from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.utilities.helpers import softmax_helper_dim1
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from nnunetv2_rehrseg.class_probabilities import dequantise, quantise, soft_target
from nnunetv2_rehrseg.segmenter.label_targets import LabelTargets
from nnunetv2_rehrseg.segmenter.losses import SoftDiceCE
from nnunetv2_rehrseg.segmenter.pseudo_lr import (degrade_patch, hr_regression_target, margin_slices,
                                                  split_hr_regression_target)
from test_stage2_units import _augmentation

DICE = {"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}


def _labels(shape=(2, 1, 8, 10, 10), values=3, seed=0):
    return torch.randint(0, values, shape, generator=torch.Generator().manual_seed(seed))


def _one_hot(labels, k):
    return torch.zeros(labels.shape[0], k, *labels.shape[2:]).scatter_(1, labels.long(), 1.0)


def test_quantised_probabilities_come_back_as_distributions():
    p = torch.randn(4, 6, 5, 5, generator=torch.Generator().manual_seed(1)).softmax(0).numpy()
    levels = quantise(p)
    assert levels.dtype == np.uint8 and np.abs(levels.sum(0).astype(int) - 255).max() <= 2
    back = dequantise(levels)
    assert (back - torch.from_numpy(p)).abs().max() <= 0.5 / 255 + 1e-6
    labels = torch.zeros(1, 6, 5, 5, dtype=torch.int16)
    target = soft_target(back, labels, 4)
    torch.testing.assert_close(target.sum(0), torch.ones(6, 5, 5))
    # padding of an augmented crop (no mass): the hard label's one-hot; -1 (outside the non-zero region) counts as 0
    back[:, 0] = 0
    labels[0, 0, 0, 0], labels[0, 0, 1, 1] = 2, -1
    target = soft_target(back, labels, 4)
    assert target[:, 0, 0, 0].tolist() == [0, 0, 1, 0] and target[:, 0, 1, 1].tolist() == [1, 0, 0, 0]


@pytest.mark.parametrize("ignore", [False, True])
def test_soft_dice_ce_on_one_hot_targets_is_nnunets_dice_ce(ignore):
    logits = torch.randn(2, 3, 8, 10, 10, generator=torch.Generator().manual_seed(2), requires_grad=True)
    values = 4 if ignore else 3
    labels = _labels(values=values)
    manager = LabelManager({"background": 0, "a": 1, "b": 2, **({"ignore": 3} if ignore else {})}, None)
    targets = LabelTargets(manager)
    stock = DC_and_CE_loss(DICE, {}, weight_ce=1, weight_dice=1, ignore_label=manager.ignore_label,
                           dice_class=MemoryEfficientSoftDiceLoss)
    ours = SoftDiceCE(MemoryEfficientSoftDiceLoss(apply_nonlin=softmax_helper_dim1, **DICE), use_ignore_label=ignore)
    expected = stock(logits, targets.loss_target(labels))
    (grad_expected,) = torch.autograd.grad(expected, logits)
    # the probabilities of a certain stage 1 are the labels' one-hot: any blend weight gives the hard loss
    for weight in (0.0, 0.5, 1.0):
        got = ours(logits, targets.soft_loss_target(_one_hot(labels, values), labels, weight))
        (grad,) = torch.autograd.grad(got, logits)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad, grad_expected, rtol=1e-4, atol=1e-7)
    if ignore:   # ignored voxels count for nothing, whatever their probabilities
        q = torch.rand(2, values, 8, 10, 10)
        q = q / q.sum(1, keepdim=True)
        loss = ours(logits, targets.soft_loss_target(q, labels, 1.0))
        (grad,) = torch.autograd.grad(loss, logits)
        assert grad.abs().sum() > 0 and grad.permute(1, 0, 2, 3, 4)[:, labels[:, 0] == 3].abs().max() == 0


def test_soft_ce_rewards_the_target_distribution():
    """The CE term is minimal where the network's softmax is the target: the HR head learns the probabilities, not
    only their argmax."""
    q = torch.tensor([0.7, 0.2, 0.1])[None, :, None, None, None].expand(1, 3, 2, 2, 2).contiguous()
    ours = SoftDiceCE(MemoryEfficientSoftDiceLoss(apply_nonlin=softmax_helper_dim1, **DICE))
    at_target = torch.log(q).clone().requires_grad_(True)
    ce = ours(at_target, q) - ours.dice(at_target, q)
    (grad,) = torch.autograd.grad(ce, at_target)
    assert grad.abs().max() < 1e-6
    assert ce < ours(torch.log(torch.tensor([0.9, 0.05, 0.05]))[None, :, None, None, None].expand(1, 3, 2, 2, 2), q) \
        - ours.dice(torch.log(q), q) + 1e-6


def test_soft_region_targets_are_sums_of_their_values_and_nnunets_region_loss_takes_them():
    manager = LabelManager({"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": 3, "ignore": 4},
                           [1, 2, 3])
    targets = LabelTargets(manager)
    labels = _labels(values=5, seed=3)
    q = torch.rand(2, 5, 8, 10, 10, generator=torch.Generator().manual_seed(4))
    q = q / q.sum(1, keepdim=True)
    target = targets.soft_loss_target(q, labels, 0.5)
    assert target.shape == (2, 4, 8, 10, 10)         # three regions, the ignore mask last
    assert torch.equal(target[:, 3], (labels[:, 0] == 4).float())
    blend = 0.5 * _one_hot(labels, 5) + 0.5 * q
    plain = blend[:, :4] / blend[:, :4].sum(1, keepdim=True)
    torch.testing.assert_close(target[:, 1], plain[:, 2] + plain[:, 3])
    torch.testing.assert_close(target[:, 0], plain[:, 1:4].sum(1))
    stock = DC_and_BCE_loss({}, {**DICE, "do_bg": True}, use_ignore_label=True, dice_class=MemoryEfficientSoftDiceLoss)
    logits = torch.randn(2, 3, 8, 10, 10)
    torch.testing.assert_close(stock(logits, targets.soft_loss_target(_one_hot(labels, 5), labels, 0.5)),
                               stock(logits, targets.loss_target(labels)))
    assert torch.isfinite(stock(logits, target))


@pytest.mark.parametrize("mirror", [False, True])
def test_augmented_probabilities_stay_aligned_with_the_labels_and_the_uncertainty_is_unchanged(mirror):
    """The loader's soft path: the HR uncertainty and class probabilities ride through nnU-Net's spatial augmentation
    as one regression target. The probabilities of one-hot labels come out as the labels nnU-Net's own label
    resampling makes (the same rule: bilinear indicators, argmax), a distribution per voxel; the uncertainty,
    averaged per thick slice afterwards, is what the hard path (averaged before) gives."""
    r, fwhm = 4, 4.0
    margin = margin_slices(r, fwhm, "gaussian")
    generator = torch.Generator().manual_seed(5)
    volume = torch.nn.functional.avg_pool3d(torch.randn(1, 1, 6 * r + 2 * margin, 28, 28, generator=generator), 3, 1,
                                            1)[0]
    labels = (volume > 0.1).to(torch.int16) + (volume > 0.3).to(torch.int16)
    uncertainty = torch.rand(volume.shape, generator=generator)
    probabilities = dequantise(quantise(_one_hot(labels[None], 3)[0].numpy()))
    transforms = _augmentation(mirror)
    image, hr_labels, lr_uncertainty = degrade_patch(volume, labels, uncertainty, r, fwhm, "gaussian", margin)
    # the soft path carries the HR uncertainty itself: without it degrade_patch makes the same sample, no LR map
    image_alone, labels_alone, none = degrade_patch(volume, labels, None, r, fwhm, "gaussian", margin)
    assert none is None and torch.equal(image_alone, image) and torch.equal(labels_alone, hr_labels)

    np.random.seed(3)
    torch.manual_seed(0)
    hard = transforms(image=image.clone(), segmentation=hr_labels.clone(), regression_target=lr_uncertainty)
    np.random.seed(3)
    torch.manual_seed(0)
    soft = transforms(image=image.clone(), segmentation=hr_labels.clone(),
                      regression_target=hr_regression_target(uncertainty, probabilities, r, margin))
    torch.testing.assert_close(soft["image"], hard["image"])
    assert torch.equal(soft["segmentation"], hard["segmentation"])
    u, augmented = split_hr_regression_target(soft["regression_target"], r)
    torch.testing.assert_close(u, hard["regression_target"], atol=1e-5, rtol=1e-5)
    assert augmented.shape == (3, 6 * r, 20, 20)
    target = soft_target(augmented, soft["segmentation"], 3)
    torch.testing.assert_close(target.sum(0), torch.ones(6 * r, 20, 20))
    inside = soft["segmentation"][0] >= 0
    assert (target.argmax(0) == soft["segmentation"][0])[inside].float().mean() > 0.99
