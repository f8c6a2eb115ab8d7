"""The lesion benchmark's subjects and scores (benchmarks/lesions.py), on small synthetic volumes."""
import numpy as np
import pytest

from lesions import (ENHANCING, NECROSIS, OEDEMA, add_lesions, lesion_detection, region_scores, regions_to_labels)
from nnunetv2_rehrseg.demo.anatomy import LABELS as TISSUE


def test_lesions_lie_in_the_brain_with_a_core_inside_oedema():
    tissue = np.zeros((60, 60, 60), np.uint8)
    zz, yy, xx = np.mgrid[:60, :60, :60]
    tissue[(zz - 30) ** 2 + (yy - 30) ** 2 + (xx - 30) ** 2 < 28 ** 2] = TISSUE["WM"]
    labels = add_lesions(tissue, np.random.default_rng(3), spacing=2.0)
    assert set(np.unique(labels)) >= {0, OEDEMA, ENHANCING}
    assert not labels[tissue == 0].any()                       # inside the brain only
    core = np.isin(labels, (NECROSIS, ENHANCING))
    # the core is wrapped: no core voxel touches the background along any axis
    for axis in range(3):
        for shift in (-1, 1):
            assert not (core & (np.roll(labels, shift, axis) == 0) & (tissue > 0)).any()


def test_region_rule_and_scores():
    probabilities = np.array([[0.9, 0.9, 0.1], [0.2, 0.8, 0.1], [0.1, 0.7, 0.0]])
    assert regions_to_labels(probabilities).tolist() == [1, 3, 0]
    truth = np.zeros((10, 10, 10), np.uint8)
    truth[2:8, 2:8, 2:8] = OEDEMA
    truth[4:6, 4:6, 4:6] = ENHANCING
    scores = region_scores(truth, truth, (2.0, 2.0, 2.0))
    assert scores["whole tumour"]["Dice"] == 1 and scores["enhancing"]["volume_error"] == 0
    assert scores["tumour core"]["true_volume_ml"] == pytest.approx(8 * 8 / 1000)
    doubled = truth.copy()
    doubled[4:6, 4:6, 6:8] = ENHANCING
    assert region_scores(truth, doubled, (2.0, 2.0, 2.0))["enhancing"]["volume_error"] == pytest.approx(1.0)


def test_lesion_detection_counts_found_missed_small_and_false_positives():
    truth = np.zeros((40, 40, 40), np.uint8)
    truth[5:15, 5:15, 5:15] = ENHANCING          # 20 mm at 2 mm spacing
    truth[30:32, 30:32, 30:32] = ENHANCING       # 4 mm: small
    prediction = np.zeros_like(truth)
    prediction[8:12, 8:12, 8:12] = ENHANCING     # finds the large one
    prediction[20:23, 30:33, 5:8] = NECROSIS     # touches nothing true: a false positive
    counts = lesion_detection(truth, prediction, (2.0, 2.0, 2.0))
    assert counts == {"found": 1, "missed": 0, "found_small": 0, "missed_small": 1, "false_positive": 1}
