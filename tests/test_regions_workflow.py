"""A region-based dataset (nnU-Net regions with regions_class_order) through the real commands: stage 1, planning,
training with final validation, rehrseg_predict (labels, probabilities, the review table), nnU-Net's model selection.
(tests/test_sparse_workflow.py: the same for the ignore label.)"""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import TINY_TRAINER as TRAINER
from conftest import read_array as read
from conftest import run_command_line as run
from conftest import train_tiny_and_predict, tree_checksum

pytestmark = pytest.mark.slow   # every test here shares the end-to-end run of the module fixture


@pytest.fixture(scope="module")
def regions(tmp_path_factory):
    return train_tiny_and_predict(tmp_path_factory.mktemp("regions"), 983, "regions")


def test_region_model_trains_validates_and_predicts_regions(regions):
    stage1 = regions["pre"] / "rehrseg"
    # stage 1 super-resolves the plain labels the regions are built from
    assert set(np.unique(read(stage1 / "pseudo_hr" / "labelsTr" / "case00.nii.gz"))) <= {0, 1, 2}
    dataset_json = json.loads((stage1 / "pseudo_hr" / "dataset.json").read_text())
    assert dataset_json["labels"]["whole"] == [1, 2] and dataset_json["regions_class_order"] == [1, 2]
    # final validation scores the regions (nnU-Net's keys), on both grids
    for summary in (regions["fold"] / "validation" / "summary.json",
                    regions["fold"] / "validation_hr" / "summary_vs_pseudo_hr_labels.json"):
        assert set(json.loads(summary.read_text())["mean"]) == {"(1, 2)", "(2,)"}
    # region probabilities (sigmoid, one per region); labels painted through regions_class_order
    seg = read(regions["out"] / "case03.nii.gz")
    probabilities = np.load(regions["out"] / "case03.npz")["probabilities"]
    assert probabilities.shape == (2, *seg.shape) and probabilities.min() >= 0 and probabilities.max() <= 1
    expected = np.zeros(seg.shape, np.uint8)
    for p, value in zip(probabilities, [1, 2]):
        expected[p > 0.5] = value
    assert np.mean(expected == seg) > 0.99       # resampled in float32 vs half-precision export: borders may differ
    assert set(np.unique(read(regions["out"] / "lr" / "case03.nii.gz"))) <= {0, 1, 2}
    rows = list(csv.reader(open(regions["out"] / "review_summary.csv")))
    assert rows[0] == ["case", "head_disagreement", "volume_ml_whole", "volume_ml_inner"]
    assert rows[1][0] == "case03" and 0 <= float(rows[1][1]) <= 1
    voxel_ml = np.prod(sitk.ReadImage(str(regions["out"] / "case03.nii.gz")).GetSpacing()) / 1000
    assert float(rows[1][2]) == pytest.approx((seg > 0).sum() * voxel_ml, rel=1e-3)
    assert float(rows[1][3]) == pytest.approx((seg == 2).sum() * voxel_ml, rel=1e-3)
    assert tree_checksum(regions["raw"]) == regions["checksum"]


def test_find_best_configuration_takes_the_region_model(regions):
    run("nnUNetv2_find_best_configuration", 983, "-c", "3d_fullres", "-tr", TRAINER, "-p", "REHRSegPlans", "-f", 0,
        "-np", 1, env=regions["env"])
    results = regions["env"]["nnUNet_results"]
    info = json.loads((Path(results) / regions["raw"].name / "inference_information.json").read_text())
    assert list(info["all_results"]) == [f"{TRAINER}__REHRSegPlans__3d_fullres"]
    merged = regions["fold"].parent / "crossval_results_folds_0"
    assert set(json.loads((merged / "summary.json").read_text())["mean"]) == {"(1, 2)", "(2,)"}
    assert (merged / "postprocessing.pkl").is_file()


def test_rehrseg_evaluate_scores_the_regions_of_a_region_model(regions):
    out = regions["out"]
    metrics = out.parent / "metrics.json"
    run("rehrseg_evaluate", "-ref", out, "-pred", out, "-o", metrics, env=regions["env"])
    summary = json.loads(metrics.read_text())["summary"]
    assert set(summary["mean_per_label"]) == {"(1, 2)", "(2,)"}
    assert summary["mean"]["Dice"] == 1.0
    assert "(1, 2)" in (out.parent / "metrics.csv").read_text()
