"""A sparsely annotated dataset (the ignore label on every other thick slice) through the real commands: stage 1 keeps
the ignored thick slices ignored, training masks them, prediction writes classes only."""
import json

import numpy as np
import pytest

from conftest import read_array as read
from conftest import train_tiny_and_predict, tree_checksum
from nnunetv2_rehrseg.tools.phantom import SPARSE_IGNORE

pytestmark = pytest.mark.slow   # every test here shares the end-to-end run of the module fixture


@pytest.fixture(scope="module")
def sparse(tmp_path_factory):
    return train_tiny_and_predict(tmp_path_factory.mktemp("sparse"), 984, "sparse")


def test_sparse_annotation_stays_sparse_in_the_pseudo_hr_labels(sparse):
    stage1 = sparse["pre"] / "rehrseg"
    settings = json.loads((stage1 / "settings.json").read_text())
    r = settings["r"]
    for case in ("case00", "case01", "case02"):
        lr = read(sparse["raw"] / "labelsTr" / f"{case}.nii.gz")
        hr = read(stage1 / "pseudo_hr" / "labelsTr" / f"{case}.nii.gz")
        ignored = np.repeat(lr == SPARSE_IGNORE, r, axis=0)       # the thick axis is z (array axis 0)
        np.testing.assert_array_equal(hr == SPARSE_IGNORE, ignored)
    qc = json.loads((stage1 / "qc" / "lr_dice.json").read_text())
    assert set(qc["mean_per_label"]) == {"1", "2"}                # the ignore label is not scored as a class
    assert qc["written_min_per_label"] == {"1": 1.0, "2": 1.0}
    assert tree_checksum(sparse["raw"]) == sparse["checksum"]


def test_sparse_model_predicts_classes_only(sparse):
    seg = read(sparse["out"] / "case03.nii.gz")
    assert set(np.unique(seg)) <= {0, 1, 2}
    probabilities = np.load(sparse["out"] / "case03.npz")["probabilities"]
    assert probabilities.shape == (3, *seg.shape)                 # the ignore label is no output
    np.testing.assert_allclose(probabilities.sum(0), 1, atol=1e-3)
    validation = json.loads((sparse["fold"] / "validation" / "summary.json").read_text())
    assert set(validation["mean"]) == {"1", "2"}
