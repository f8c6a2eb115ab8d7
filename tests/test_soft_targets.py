import numpy as np

from nnunetv2_rehrseg.selfsr.label_sources import offset_probabilities
from soft_targets import soft_target_scores


def test_calibration_offsets_move_the_argmax_as_the_volume_calibration_does():
    p = np.array([0.5, 0.4, 0.1], np.float32)[:, None, None, None] * np.ones((3, 2, 2, 2), np.float32)
    assert (offset_probabilities(p, [0, 0, 0]).argmax(0) == 0).all()
    shifted = offset_probabilities(p, [0, np.log(2), 0])
    np.testing.assert_allclose(shifted.sum(0), 1, rtol=1e-6)
    assert (shifted.argmax(0) == 1).all()


def test_soft_targets_that_keep_the_truth_probable_score_above_wrong_hard_labels():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, (4, 5, 6))
    p = np.full((3, 4, 5, 6), 0.1, np.float32)
    np.put_along_axis(p, truth[None], 0.8, 0)
    written = truth.copy()
    written[0] = (written[0] + 1) % 3          # a quarter of the hard labels wrong
    scores = soft_target_scores(p, written, truth, [1, 2], blends=(0.5,))
    soft, hard = scores["soft probabilities"], scores["written labels, best smoothing"]
    assert soft["wrong_fraction"] == 0.25
    np.testing.assert_allclose(soft["nll"], -np.log(0.8), rtol=1e-5)
    np.testing.assert_allclose(soft["truth_probability_where_wrong"], 0.8, rtol=1e-5)
    assert hard["nll"] > soft["nll"] and hard["brier"] > soft["brier"]
    assert hard["truth_probability_where_wrong"] == hard["smoothing"] / 3
    # half soft, half the (partly wrong) written labels: the truth keeps 0.4 where the label is wrong
    np.testing.assert_allclose(scores["blend 0.5 soft + 0.5 written"]["truth_probability_where_wrong"], 0.4,
                               rtol=1e-5)
