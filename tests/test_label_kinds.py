"""Region-based labels and the ignore label, unit by unit: the thick-slice majority, stage 1's written labels, stage
2's targets and losses, the review table."""
import csv
import json

import numpy as np
import pytest
import torch
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from nnunetv2_rehrseg.degradation import majority_labels
from nnunetv2_rehrseg.inference.review import head_disagreement, label_masks, write_case_record, write_review_summary
from nnunetv2_rehrseg.segmenter.label_targets import LabelTargets
from nnunetv2_rehrseg.segmenter.losses import UncertaintyWeightedBCE, UncertaintyWeightedCE
from nnunetv2_rehrseg.selfsr.label_sources import LabelSources, written_labels
from nnunetv2_rehrseg.selfsr.pseudo_labels import keep_ignored_ignored

REGIONS = {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": [3]}
SPARSE = {"background": 0, "a": 1, "b": 2, "ignore": 3}


def test_ignored_sub_slices_do_not_vote_in_the_thick_slice_majority():
    # four thick voxels of r = 4 sub-slices (thick axis 0)
    hr = np.array([[3, 3, 3, 3], [3, 3, 1, 2], [3, 1, 1, 2], [2, 2, 1, 0]], np.uint8).T[:, :, None]
    plain = majority_labels(hr, 0, 4, num_classes=4)
    skipping = majority_labels(hr, 0, 4, num_classes=4, ignore_label=3)
    assert plain[0, :, 0].tolist() == [3, 3, 1, 2]
    # all ignored stays ignored; otherwise the annotated sub-slices decide (ties: the lowest label)
    assert skipping[0, :, 0].tolist() == [3, 1, 1, 2]
    torch_result = majority_labels(torch.from_numpy(hr.astype(np.int16)), 0, 4, num_classes=4, ignore_label=3)
    assert torch_result.numpy()[0, :, 0].tolist() == [3, 1, 1, 2]


def test_written_labels_keep_the_ignore_label_exactly_where_it_was_drawn():
    rng = np.random.default_rng(0)
    r, k = 3, 4
    lr = rng.integers(0, 3, size=(6, 10, 10)).astype(np.uint8)
    lr[1::2] = 3                                           # every other thick slice ignored
    lr[0, :3, :3] = 3                                      # and a patch of an annotated one
    probabilities = rng.dirichlet(np.ones(k), size=(r * 6, 10, 10)).transpose(3, 0, 1, 2).astype(np.float32)
    probabilities[3] *= 5                                  # a network that likes the ignore label
    kept = keep_ignored_ignored(probabilities, lr, r, ignore_label=3)
    np.testing.assert_allclose(kept.sum(0), 1, atol=1e-5)
    ignored = np.repeat(lr == 3, r, axis=0)
    assert (kept[3][ignored] == 1).all() and (kept[3][~ignored] == 0).all()
    labels, _ = written_labels(kept, None, lr, r, LabelSources.selfsr_only(k), fixed=(3,))
    # no class where the annotator drew nothing, no ignore where they drew a class, and the annotation reproduced
    np.testing.assert_array_equal(labels == 3, ignored)
    np.testing.assert_array_equal(majority_labels(labels, 0, r, num_classes=k), lr)


def test_region_targets_follow_nnunets_layout_with_the_ignore_mask_last():
    manager = LabelManager({**REGIONS, "ignore": 4}, regions_class_order=[1, 2, 3])
    targets = LabelTargets(manager)
    assert targets.num_values == 5 and targets.regions == [(1, 2, 3), (2, 3), (3,)]
    labels = torch.tensor([0, 1, 2, 3, 4]).view(1, 1, 5, 1, 1)
    target = targets.loss_target(labels)
    assert target.shape == (1, 4, 5, 1, 1) and target.dtype == torch.bool
    assert target[0, :, :, 0, 0].int().tolist() == [[0, 1, 1, 1, 0], [0, 0, 1, 1, 0], [0, 0, 0, 1, 0],
                                                     [0, 0, 0, 0, 1]]
    # the HR loss on these targets is nnU-Net's own region loss, ignored voxels masked
    logits = torch.randn(1, 3, 5, 1, 1, requires_grad=True)
    loss = DC_and_BCE_loss({}, {"batch_dice": True, "smooth": 1e-5, "do_bg": True, "ddp": False},
                           use_ignore_label=True, dice_class=MemoryEfficientSoftDiceLoss)(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and (logits.grad[..., 4, :, :] == 0).all()
    # plain labels stay label maps (nnU-Net's DC_and_CE_loss masks the ignore label itself)
    plain = LabelTargets(LabelManager(SPARSE, None))
    assert plain.num_values == 4 and plain.loss_target(labels[:, :, :4]) is not None
    assert torch.equal(plain.loss_target(labels), labels)


def test_online_counts_score_regions_by_sigmoid_and_leave_ignored_voxels_out():
    targets = LabelTargets(LabelManager({**REGIONS, "ignore": 4}, regions_class_order=[1, 2, 3]))
    labels = torch.tensor([0, 1, 2, 3, 4, 4]).view(1, 1, 6, 1, 1)
    logits = torch.full((1, 3, 6, 1, 1), -5.0)
    logits[:, 0, 1:] = 5                                   # whole tumour everywhere from voxel 1 on
    tp, fp, fn = targets.hard_counts(logits, labels, axes=[0, 2, 3, 4])
    assert tp.tolist() == [3, 0, 0] and fp.tolist() == [0, 0, 0] and fn.tolist() == [0, 2, 1]
    plain = LabelTargets(LabelManager(SPARSE, None))
    labels = torch.tensor([0, 1, 2, 3]).view(1, 1, 4, 1, 1)
    logits = torch.zeros(1, 3, 4, 1, 1)
    logits[:, 1] = 1                                       # label 1 everywhere: the ignored voxel is no false positive
    tp, fp, fn = plain.hard_counts(logits, labels, axes=[0, 2, 3, 4])
    assert tp.tolist() == [1, 0] and fp.tolist() == [2, 0] and fn.tolist() == [0, 1]


def test_uncertainty_weighted_ce_leaves_ignored_voxels_out():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, 5, requires_grad=True)
    target = torch.randint(0, 3, (2, 1, 4, 5, 5))
    target[:, :, 1::2] = 3
    uncertainty = torch.rand(2, 1, 4, 5, 5) * 0.5
    loss = UncertaintyWeightedCE(0.99, None, 0.0, ignore_label=3)(logits, target, uncertainty)
    loss.backward()
    valid = target[:, 0] != 3
    ce = torch.nn.functional.cross_entropy(logits.detach(), target[:, 0].clamp_max(2), reduction="none")
    expected = ((1 - 0.99 * uncertainty[:, 0]) * ce)[valid].mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert (logits.grad[:, :, 1::2] == 0).all() and logits.grad[:, :, 0::2].abs().sum() > 0
    # with the Dice term: finite, and still blind to the ignored voxels
    logits.grad = None
    dice = MemoryEfficientSoftDiceLoss(apply_nonlin=lambda x: torch.softmax(x, 1), batch_dice=True, do_bg=False, ddp=False)
    UncertaintyWeightedCE(0.99, dice, 1.0, ignore_label=3)(logits, target, uncertainty).backward()
    assert (logits.grad[:, :, 1::2] == 0).all()


def test_uncertainty_weighted_bce_is_bce_at_zero_uncertainty_and_masks_ignored_voxels():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 4, 5, 5, requires_grad=True)
    regions = torch.rand(2, 3, 4, 5, 5) > 0.5
    zero = torch.zeros(2, 1, 4, 5, 5)
    loss = UncertaintyWeightedBCE(0.99)(logits, regions, zero)
    assert loss.item() == pytest.approx(torch.nn.functional.binary_cross_entropy_with_logits(
        logits, regions.float()).item(), rel=1e-6)
    # a high uncertainty weighs a voxel down: the same logits, less loss
    assert UncertaintyWeightedBCE(0.99)(logits, regions, zero + 0.9).item() < loss.item()
    ignore = torch.zeros(2, 1, 4, 5, 5, dtype=torch.bool)
    ignore[:, :, 1::2] = True
    dice = MemoryEfficientSoftDiceLoss(apply_nonlin=torch.sigmoid, batch_dice=True, do_bg=True, ddp=False)
    masked = UncertaintyWeightedBCE(0.99, dice, 1.0, use_ignore_label=True)(logits, torch.cat([regions, ignore], 1),
                                                                             zero)
    masked.backward()
    assert torch.isfinite(masked) and (logits.grad[:, :, 1::2] == 0).all()


def test_head_disagreement_is_zero_when_the_heads_agree_and_grows_when_they_do_not():
    manager = LabelManager(REGIONS, regions_class_order=[1, 2, 3])
    hr = np.zeros((8, 6, 6), np.uint8)
    hr[2:6, 1:5, 1:5] = 1
    hr[2:6, 2:4, 2:4] = 3
    lr = majority_labels(hr, 0, 2, num_classes=4)
    assert head_disagreement(lr, hr, 2, manager) == 0.0
    lr_missing_core = np.where(lr == 3, 1, lr)
    assert head_disagreement(lr_missing_core, hr, 2, manager) == pytest.approx(1 - (1 + 0 + 0) / 3)
    assert head_disagreement(np.zeros_like(lr), np.zeros_like(hr), 2, manager) == 0.0
    assert [name for name, _ in label_masks(hr, {**REGIONS, "ignore": 4})] == ["whole", "core", "enhancing"]


def test_review_summary_lists_the_most_disagreeing_case_first(tmp_path):
    for case, disagreement in (("a", 0.1), ("b", 0.4), ("c", 0.0)):
        write_case_record({"case": case, "head_disagreement": disagreement,
                           "volumes_ml": {"whole": 1.0, "core": 0.5}}, tmp_path / "review")
    summary = write_review_summary(tmp_path)
    rows = list(csv.reader(open(summary)))
    assert rows[0] == ["case", "head_disagreement", "volume_ml_whole", "volume_ml_core"]
    assert [row[0] for row in rows[1:]] == ["b", "a", "c"]
    assert [c["case"] for c in json.loads((tmp_path / "review_summary.json").read_text())["cases"]] == ["b", "a", "c"]
    assert write_review_summary(tmp_path / "empty") is None
