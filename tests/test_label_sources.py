"""Stage 1's per-label sources: interpolation as probabilities, written labels consistent with the annotation, and the
choice on the in-plane task (interpolation where it wins, the self-SR only past the safety margin)."""
import numpy as np
import pytest
import torch

from nnunetv2_rehrseg.degradation import majority_labels, one_hot
from nnunetv2_rehrseg.interpolation import shape_based_upsample
from nnunetv2_rehrseg.selfsr.label_sources import (INTERPOLATION, SAFETY_MARGIN, SELFSR, LabelSources,
                                                   choose_label_sources, in_plane_counts, interpolation_probabilities,
                                                   written_labels)
from nnunetv2_rehrseg.selfsr.pairs import SRCase


def blobs(shape=(8, 24, 24), seed=0) -> np.ndarray:
    """Labels 0/1/2: a large ellipsoid (1) holding a small one (2), off-centre (no symmetry to hide errors)."""
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    labels = np.zeros(shape, np.uint8)
    labels[(z / 0.9) ** 2 + ((y - 0.1) / 0.7) ** 2 + (x / 0.6) ** 2 < 1] = 1
    labels[((z - 0.2) / 0.5) ** 2 + ((y - 0.2) / 0.3) ** 2 + ((x + 0.1) / 0.25) ** 2 < 1] = 2
    return labels


def test_interpolation_probabilities_argmax_is_shape_based_interpolation():
    lr = blobs()
    spacing = (4.0, 1.0, 1.0)
    p = interpolation_probabilities(lr, 4, spacing, 3)
    assert p.shape == (3, 32, 24, 24)
    np.testing.assert_allclose(p.sum(0), 1, atol=1e-5)
    np.testing.assert_array_equal(p.argmax(0), shape_based_upsample(lr, 0, 4, spacing=spacing, mode="3d"))
    assert p[2].max() > 0.95 and p[2].min() < 1e-3               # sharp inside, vanishing far away


@pytest.mark.parametrize("selfsr_labels", [[], [1], [2], [1, 2]])
def test_written_labels_degraded_back_equal_the_annotation(selfsr_labels):
    rng = np.random.default_rng(0)
    lr = blobs()
    selfsr = rng.dirichlet(np.ones(3), size=(32, 24, 24)).transpose(3, 0, 1, 2).astype(np.float32)  # noise
    interpolated = interpolation_probabilities(lr, 4, (4.0, 1.0, 1.0), 3)
    labels, record = written_labels(selfsr, interpolated, lr, 4, LabelSources(selfsr_labels))
    np.testing.assert_array_equal(majority_labels(labels, 0, 4, num_classes=3), lr)
    assert len(record["implied_to_lr_count"]) == 3       # the volume record stage 1's QC keeps, whatever the source


def test_a_label_from_the_selfsr_keeps_its_shape_and_the_others_follow_interpolation():
    """Label 2 from a self-SR that draws it one HR slice lower than interpolation (a shape the consistency step
    allows), label 1 from interpolation: label 2 is written as the self-SR draws it, label 1 as interpolated except
    where label 2 takes its place."""
    lr = blobs()
    interpolated = interpolation_probabilities(lr, 4, (4.0, 1.0, 1.0), 3)
    interpolation_map = interpolated.argmax(0)
    shifted = np.roll(interpolation_map, 1, axis=0)
    selfsr = np.where(shifted == 2, 0.9, 0.05)[None] * np.eye(3)[2][:, None, None, None]
    selfsr[:2] = np.where(shifted == 2, 0.05, interpolated[:2] * 0.9)
    selfsr /= selfsr.sum(0, keepdims=True)
    labels, _ = written_labels(selfsr.astype(np.float32), interpolated, lr, 4, LabelSources([2]))
    np.testing.assert_array_equal(majority_labels(labels, 0, 4, num_classes=3), lr)
    selfsr_map = written_labels(selfsr.astype(np.float32), None, lr, 4, LabelSources([1, 2]))[0]
    np.testing.assert_array_equal(labels == 2, selfsr_map == 2)
    outside = (labels != 2) & (selfsr_map != 2) & (interpolation_map != 2)
    assert (labels[outside] == interpolation_map[outside]).mean() > 0.99


def test_choice_keeps_interpolation_unless_the_selfsr_beats_it_by_the_margin():
    def counts(dice_by_class):
        # overlap, predicted, true: Dice = 2 * overlap / (predicted + true) with 100 + 100 voxels
        return np.array([[100 * d, 100, 100] for d in dice_by_class], np.float64)

    sources = choose_label_sources({INTERPOLATION: counts([1, 0.80, 0.80, 0.80]),
                                    SELFSR: counts([1, 0.80 + SAFETY_MARGIN / 2, 0.80 + 2 * SAFETY_MARGIN, 0.7])},
                                   [1, 2, 3])
    assert sources.chosen == {"1": INTERPOLATION, "2": SELFSR, "3": INTERPOLATION}
    assert sources.selfsr_labels == [2]
    assert sources.scores["2"][SELFSR] == pytest.approx(0.80 + 2 * SAFETY_MARGIN)
    assert LabelSources.from_dict(sources.to_dict()) == sources


class CopiesTheLabelsButDropsOne(torch.nn.Module):
    """A stand-in self-SR that repeats its reference thick slice (nearest) and never predicts class `dropped`: on the
    in-plane task interpolation must win that label."""

    def __init__(self, num_classes=3, r=4, dropped=2):
        super().__init__()
        self.num_classes, self.r, self.window, self.centre, self.divisor = num_classes, r, 4, 1, 1
        self.use_uasr, self.dropped = False, dropped

    def forward(self, batch):
        reference = batch[:, :, self.centre:self.centre + 1].repeat(1, 1, self.r, 1, 1)
        labels = reference[:, 1:].clone()
        labels[:, 0] += labels[:, self.dropped]
        labels[:, self.dropped] = 0
        return {"image": reference[:, :1], "seg": 10 * labels}


@pytest.mark.parametrize("label_context", ["shape-based", "nearest"])
def test_in_plane_task_gives_the_label_the_network_drops_to_interpolation(label_context):
    lr = np.concatenate([blobs((8, 48, 48)), blobs((8, 48, 48))[::-1]], axis=0)
    image = one_hot(lr, 3)[1:2] * 0.5 + one_hot(lr, 3)[2:3] * 0.5
    case = SRCase(image.astype(np.float32), lr)
    counts = in_plane_counts(CopiesTheLabelsButDropsOne(), case, (4.0, 1.0, 1.0), 4, 4.0, "gaussian",
                             torch.device("cpu"), label_context=label_context)
    assert set(counts) == {SELFSR, INTERPOLATION}
    assert counts[SELFSR][:, 2].sum() == counts[INTERPOLATION][:, 2].sum() == lr.size * 4 * 2  # r x the voxels, both axes
    dice = {source: 2 * n[2, 0] / n[2, 1:].sum() for source, n in counts.items()}
    # the dropped label comes back only where the degraded annotation forces it (the consistency step): well below
    assert dice[SELFSR] < dice[INTERPOLATION] - 0.1, dice
    assert choose_label_sources(counts, [1, 2]).chosen["2"] == INTERPOLATION
