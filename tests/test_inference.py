"""Inference geometry (LR in, HR out on the derived grid), sliding-window stitching, input checks, evaluation."""
import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nnunetv2.evaluation.evaluate_predictions import compute_metrics
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from conftest import OBLIQUE, phantom
from nnunetv2_rehrseg.degradation import blur_subsample
from nnunetv2_rehrseg.errors import InputError
from nnunetv2_rehrseg.evaluation import evaluate_folders, label_metrics, write_metrics, write_metrics_csv
from nnunetv2_rehrseg.geometry import Grid, lr_grid, numpy_axis_of
from nnunetv2_rehrseg.geometry import axes_swap, swap_array_axes
from nnunetv2_rehrseg.inference.predictor import (REHRSegPredictor, case_geometry, hr_properties,
                                                  resampling_note, slabs, swap_properties)
from nnunetv2_rehrseg.image_io import read_image, write_image
from nnunetv2_rehrseg.planners.plans import REHRSegPlanBlock
from synthetic_model import DATASET_JSON, StandInNetwork, make_plans

class Upsampler(torch.nn.Module):
    """Stand-in network: LR logits = (x, -x), HR logits = the same repeated r times along the LR axis."""

    def __init__(self, r):
        super().__init__()
        self.r = r

    def forward(self, x):
        lr = torch.cat([x, -x, 0 * x], 1)
        return lr, lr.repeat_interleave(self.r, dim=2), None


def _predictor(plans, network=None, mirror_axes=(0, 1, 2), use_gaussian=True):
    manager = PlansManager(plans)
    predictor = REHRSegPredictor(tile_step_size=0.5, use_gaussian=use_gaussian, use_mirroring=bool(mirror_axes),
                                 device=torch.device("cpu"), allow_tqdm=False)
    predictor.manual_initialization(network, manager, manager.get_configuration("3d_fullres"), None, DATASET_JSON,
                                    "REHRSegTrainer", mirror_axes)
    return predictor


@pytest.mark.parametrize("shape", [(5, 13, 30), (13, 40, 17)])   # smaller than the patch on some axes, not multiples
def test_sliding_window_places_lr_and_hr_tiles_exactly(shape):
    plans = make_plans(2, 4, (1.0, 1.0, 1.0), (8, 16, 16))
    data = np.random.default_rng(0).normal(size=(1, *shape)).astype(np.float32)
    # uniform tile weights: nnU-Net's Gaussian underflows its half-precision accumulator at the image corners
    lr, hr = _predictor(plans, Upsampler(4), use_gaussian=False).predict_logits(data)
    assert lr.shape == (3, *shape) and hr.shape == (3, 4 * shape[0], *shape[1:])
    np.testing.assert_allclose(lr[0].numpy(), data[0], atol=5e-3, rtol=5e-3)   # half-precision sums
    np.testing.assert_allclose(hr[1].numpy(), -np.repeat(data[0], 4, axis=0), atol=5e-3, rtol=5e-3)


@pytest.mark.parametrize("lr_axis", [1, 2])
def test_phantom_from_lr_lands_on_the_derived_hr_grid_at_the_right_world_coordinates(tmp_path, lr_axis):
    r = 4
    hr_spacing = (0.9, 0.9, 0.9)
    hr_shape_zyx = [20, 20, 20]
    hr_shape_zyx[numpy_axis_of(lr_axis)] = 32
    hr_image, hr_labels = phantom(tuple(hr_shape_zyx), 3)
    hr = Grid(tuple(hr_shape_zyx[::-1]), hr_spacing, (12.0, -40.0, 7.5), OBLIQUE)
    lr = lr_grid(hr, lr_axis, r)
    lr_image = blur_subsample(hr_image, numpy_axis_of(lr_axis), r, float(r))
    write_image(lr_image.astype(np.float32), lr, tmp_path / "case_0000.nii.gz")
    plans = make_plans(lr_axis, r, hr_spacing, (8, 16, 16))
    predictor = _predictor(plans)
    data, properties = predictor.preprocess([str(tmp_path / "case_0000.nii.gz")])
    assert data.shape[1] == lr_image.shape[numpy_axis_of(lr_axis)]     # the LR axis went first
    # oracle HR logits: the phantom's HR labels, in the network's (transposed) layout
    oracle = np.eye(3, dtype=np.float32)[hr_labels.transpose(plans["transpose_forward"])].transpose(3, 0, 1, 2)
    predictor.export(torch.zeros(3, *data.shape[1:]), torch.from_numpy(10 * oracle), properties,
                     str(tmp_path / "hr" / "case"), str(tmp_path / "lr" / "case"))
    written, grid = read_image(tmp_path / "hr" / "case.nii.gz")
    assert grid.size == hr.size
    np.testing.assert_allclose(grid.spacing, hr.spacing, atol=1e-6)
    np.testing.assert_allclose(grid.origin, hr.origin, atol=1e-5)
    np.testing.assert_allclose(grid.direction, hr.direction, atol=1e-6)
    np.testing.assert_array_equal(written, hr_labels)
    centre = np.argwhere(written == 2).mean(0)[::-1]            # index (x, y, z)
    expected = np.argwhere(hr_labels == 2).mean(0)[::-1]
    np.testing.assert_allclose(grid.index_to_world(centre), hr.index_to_world(expected), atol=1e-5)
    lr_written, lr_written_grid = read_image(tmp_path / "lr" / "case.nii.gz")
    assert lr_written_grid.size == lr.size and np.allclose(lr_written_grid.origin, lr.origin)


def test_a_case_too_big_for_the_logits_budget_is_predicted_in_slabs_with_the_same_result(tmp_path):
    """max_logits_gb below the case's logits: three slabs along the last axis, only labels kept; the written LR and
    HR segmentations (geometry included) match the whole-volume prediction."""
    r, lr_axis = 4, 2
    hr = Grid((40, 20, 32), (0.9, 0.9, 0.9), (12.0, -40.0, 7.5), OBLIQUE)
    image, _ = phantom((32, 20, 40), 3)
    write_image(blur_subsample(image, numpy_axis_of(lr_axis), r, float(r)).astype(np.float32),
                lr_grid(hr, lr_axis, r), tmp_path / "in" / "case_0000.nii.gz")
    plans = make_plans(lr_axis, r, (0.9, 0.9, 0.9), (8, 16, 16))
    written = {}
    for name, budget in (("whole", 10.0), ("slabs", 1e-6)):
        predictor = _predictor(plans, StandInNetwork(r), mirror_axes=None)
        predictor.max_logits_gb, predictor.lr_output = budget, True
        data, properties = predictor.preprocess([str(tmp_path / "in" / "case_0000.nii.gz")])
        assert predictor.needs_slabs(data.shape[1:], properties, False) == (name == "slabs")
        assert not predictor.needs_slabs(data.shape[1:], properties, True)     # probabilities: always whole
        failures = predictor.predict_from_files([[str(tmp_path / "in" / "case_0000.nii.gz")]],
                                                [str(tmp_path / name / "case")], num_processes_preprocessing=1,
                                                num_processes_segmentation_export=1)
        assert failures == {}
        written[name] = [read_image(tmp_path / name / sub / "case.nii.gz") for sub in ("", "lr")]
    assert [len(b) for b in slabs(40, 16, 8)] == [4, 4, 4]
    assert slabs(40, 16, 8) == [(0, 16, 0, 24), (16, 32, 8, 40), (32, 40, 24, 40)]
    for (whole, whole_grid), (sliced, sliced_grid) in zip(written["whole"], written["slabs"]):
        assert whole_grid == sliced_grid and len(np.unique(whole)) >= 2
        # the same logits at every voxel; only half-precision sums over differently laid out tiles can part them
        assert (whole == sliced).mean() > 0.999
    assert written["whole"][0][0].shape == (32, 20, 40) and len(np.unique(written["whole"][0][0])) == 3


def test_the_model_takes_any_slice_spacing_and_axis_and_refuses_only_what_has_no_thick_axis():
    block = REHRSegPlanBlock.from_configuration(make_plans(2, 4, (1.0, 1.0, 1.0), (8, 16, 16))
                                                ["configurations"]["3d_fullres"])
    ok = case_geometry(Grid((10, 10, 5), (1.0, 1.0, 4.0), (0, 0, 0), OBLIQUE), block, "x")
    assert (ok.axis, ok.r) == (2, 4) and resampling_note(ok, block, "x") is None
    thinner = case_geometry(Grid((10, 10, 5), (1.0, 1.0, 2.0), (0, 0, 0), OBLIQUE), block, "x")
    assert thinner.r == 2 and "r=2" in resampling_note(thinner, block, "x")
    assert case_geometry(Grid((10, 10, 5), (1.0, 1.0, 4.4), (0, 0, 0), OBLIQUE), block, "x").r == 4
    sideways = case_geometry(Grid((5, 10, 10), (7.0, 1.0, 1.0), (0, 0, 0), OBLIQUE), block, "x")
    assert (sideways.axis, sideways.r, sideways.hr_spacing) == (0, 7, 1.0)
    with pytest.raises(InputError, match="isotropic"):
        case_geometry(Grid((10, 10, 5), (1.0, 1.0, 1.2), (0, 0, 0), OBLIQUE), block, "a.nii.gz")
    # the HR properties of a case carry its own r, from its own spacing
    properties = {"spacing": [2.0, 1.0, 1.0], "shape_before_cropping": [5, 10, 10],
                  "shape_after_cropping_and_before_resampling": [5, 10, 10], "bbox_used_for_cropping": [[0, 5], [0, 10],
                                                                                                       [0, 10]]}
    hr = hr_properties(properties, block, [0, 1, 2])
    assert hr["shape_after_cropping_and_before_resampling"] == (10, 10, 10) and hr["spacing"] == [1.0, 1.0, 1.0]


def test_swapped_outputs_keep_their_world_geometry():
    grid = Grid((6, 7, 8), (1.0, 1.0, 4.0), (3.0, -2.0, 5.0), OBLIQUE)
    swapped = axes_swap(grid, 0, 2)
    assert swapped.size == (8, 7, 6) and swapped.spacing == (4.0, 1.0, 1.0)
    array = np.random.default_rng(0).random((8, 7, 6))
    moved = swap_array_axes(array, 0, 2)
    # the same voxel sits at the same world position under both index orders
    for index in ((1, 2, 3), (5, 6, 7)):
        np.testing.assert_allclose(grid.index_to_world(index), swapped.index_to_world(index[::-1]))
        assert array[index[2], index[1], index[0]] == moved[index[0], index[1], index[2]]
    properties = {"spacing": [4.0, 1.0, 1.0], "shape_before_cropping": [8, 7, 6],
                  "sitk_stuff": {"spacing": grid.spacing, "origin": grid.origin, "direction": grid.direction}}
    back = swap_properties(properties, 0, 2)
    assert back["spacing"] == [1.0, 1.0, 4.0] and back["shape_before_cropping"] == [6, 7, 8]
    assert back["sitk_stuff"]["spacing"] == swapped.spacing


def test_metrics_on_hand_computed_cases():
    ref = np.zeros((10, 12, 12), bool)
    ref[4, 2:10, 2:10] = True                                   # a one-voxel-thick plate
    shifted = np.roll(ref, 1, axis=0)
    m = label_metrics(ref, shifted, (2.5, 1.0, 1.0))
    assert m["Dice"] == 0 and m["HD95"] == pytest.approx(2.5) and m["ASSD"] == pytest.approx(2.5)
    same = label_metrics(ref, ref, (2.5, 1.0, 1.0))
    assert same == {"Dice": 1.0, "HD95": 0.0, "ASSD": 0.0}
    empty = np.zeros_like(ref)
    assert label_metrics(ref, empty, (1, 1, 1))["Dice"] == 0 and np.isnan(label_metrics(ref, empty, (1, 1, 1))["HD95"])
    both = label_metrics(empty, empty, (1, 1, 1))
    assert both["Dice"] == 1 and np.isnan(both["ASSD"])
    rng = np.random.default_rng(0)
    a, b = rng.random((8, 9, 10)) > 0.5, rng.random((8, 9, 10)) > 0.4
    assert label_metrics(a, b, (1, 1, 1))["Dice"] == pytest.approx(
        2 * (a & b).sum() / (a.sum() + b.sum()))


def test_evaluate_folders_agrees_with_nnunet_and_resamples_other_grids(tmp_path):
    grid = Grid((12, 12, 10), (1.0, 1.0, 2.0), (3.0, 4.0, 5.0), OBLIQUE)
    rng = np.random.default_rng(1)
    for case in ("a", "b"):
        ref = (rng.random((10, 12, 12)) > 0.5).astype(np.uint8) + (rng.random((10, 12, 12)) > 0.7)
        pred = np.where(rng.random(ref.shape) > 0.8, 0, ref).astype(np.uint8)
        write_image(ref, grid, tmp_path / "ref" / f"{case}.nii.gz")
        write_image(pred, grid, tmp_path / "pred" / f"{case}.nii.gz")
    result = evaluate_folders(str(tmp_path / "ref"), str(tmp_path / "pred"))
    for case in ("a", "b"):
        theirs = compute_metrics(str(tmp_path / "ref" / f"{case}.nii.gz"), str(tmp_path / "pred" / f"{case}.nii.gz"),
                                 SimpleITKIO(), [1, 2])["metrics"]
        for label in (1, 2):
            assert result["per_case"][case][str(label)]["Dice"] == pytest.approx(theirs[label]["Dice"])
    write_metrics(result, str(tmp_path / "m.json"))
    assert json.loads((tmp_path / "m.json").read_text())["summary"]["labels"] == [1, 2]
    # the summary is plain JSON as it is (reports embed it without write_metrics' cleaning)
    assert type(result["summary"]["undefined_surface_distances"]) is int
    assert (tmp_path / "m.csv").read_text().startswith("case,label,Dice,HD95,ASSD")
    # several arms in one CSV: an arm column, every case and label of each, then its means
    write_metrics_csv({"x": result, "y": result}, tmp_path / "arms.csv")
    rows = list(csv.DictReader(open(tmp_path / "arms.csv")))
    assert [r["arm"] for r in rows].count("x") == len(rows) // 2 and rows[0]["case"] == "a"
    assert {(r["case"], r["label"]) for r in rows} >= {("a", "1"), ("b", "2"), ("mean", "mean")}
    assert float(rows[0]["Dice"]) == pytest.approx(result["per_case"]["a"][rows[0]["label"]]["Dice"])
    # a prediction on a finer grid is resampled (nearest) onto the reference
    fine = sitk.Resample(sitk.ReadImage(str(tmp_path / "pred" / "a.nii.gz")), [24, 24, 20], sitk.Transform(),
                         sitk.sitkNearestNeighbor, grid.origin, (0.5, 0.5, 1.0), OBLIQUE, 0)
    (tmp_path / "pred2").mkdir()
    sitk.WriteImage(fine, str(tmp_path / "pred2" / "a.nii.gz"))
    (tmp_path / "ref2").mkdir()
    (tmp_path / "ref2" / "a.nii.gz").write_bytes((tmp_path / "ref" / "a.nii.gz").read_bytes())
    resampled = evaluate_folders(str(tmp_path / "ref2"), str(tmp_path / "pred2"))
    assert resampled["per_case"]["a"]["1"]["Dice"] == pytest.approx(result["per_case"]["a"]["1"]["Dice"], abs=0.05)
    with pytest.raises(InputError, match="prediction missing"):
        evaluate_folders(str(tmp_path / "ref"), str(tmp_path / "pred2"))
    assert evaluate_folders(str(tmp_path / "ref"), str(tmp_path / "pred2"), chill=True)["summary"]["cases"] == 1
