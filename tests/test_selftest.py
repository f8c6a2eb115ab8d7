"""rehrseg_selftest on the CPU (tiny sizes), as on a user's machine: every check passes, the JSON is written; a
failing check or stage gives a non-zero exit. The pure checks on hand-made inputs."""
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunetv2_rehrseg.cli.selftest import selftest_entry
from nnunetv2_rehrseg.geometry import Grid
from nnunetv2_rehrseg.tools.selftest import SelfTest, grid_mismatch, losses_finite_and_falling, same_state
from nnunetv2_rehrseg.tools.step_timing import seconds_per_step


@pytest.fixture
def isolated_env(monkeypatch, tmp_path):
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(name, str(tmp_path / "unused"))   # the self-check sets its own
    monkeypatch.delenv("nnUNet_extTrainer", raising=False)


@pytest.mark.slow
def test_selftest_on_cpu_passes_and_writes_json(tmp_path, isolated_env, capsys):
    out = tmp_path / "check"
    selftest_entry(["-o", str(out), "-device", "cpu"])       # returns (no SystemExit) only when every check passed
    result = json.loads((out / "selftest.json").read_text())
    assert result["passed"] and result["device"] == "cpu" and not result["not_run"]
    names = {c["name"] for c in result["checks"]}
    for term in ("train_loss_lr", "train_loss_hr", "train_kd_spatial"):
        assert f"REHRSeg: {term} falling" in names
    assert "REHRSeg: train_kd_correlation finite" in names and "REHRSeg: train_kd_correlation" in result["trends"]
    assert "resume (--c) restores the saved state" in names and "stock nnU-Net: train_losses falling" in names
    # compile, AMP and DDP are nnU-Net's CUDA paths: named as not run here, not counted as passed
    assert len(result["skipped"]) == 3 and all("CUDA" in why for why in result["skipped"].values())
    assert not names & set(result["skipped"])
    timings = result["timings"]
    for key in ("self-SR iterations/s", "REHRSeg s/step, with data loading", "stock nnU-Net s/step, no data loading",
                "REHRSeg / stock step time, no data loading",
                "inference s/case (rehrseg_predict with TTA, start-up included)"):
        assert timings[key] > 0, key
    assert (out / "predictions" / "case04.nii.gz").is_file() and (out / "predictions" / "lr" / "case04.nii.gz").is_file()
    assert "PASSED" in capsys.readouterr().out
    # what the CUDA rows compare: the trained network, rebuilt from the fold's plans and checkpoint, on an LR patch
    check = SelfTest(out, torch.device("cpu"), 8)
    fold = check.fold(check.size.trainer, "REHRSegPlans")
    network, x = check.trained_network(fold)
    with torch.no_grad():
        lr, hr, _ = network(x)
    block = json.loads((fold.parent / "plans.json").read_text())["configurations"]["3d_fullres"]["rehrseg"]
    assert hr.shape[2] == block["r"] * x.shape[2] and torch.isfinite(hr).all()


def test_a_failing_stage_exits_nonzero_and_says_what_did_not_run(tmp_path, isolated_env, monkeypatch):
    def broken(self):
        raise RuntimeError("no planner today")

    monkeypatch.setattr(SelfTest, "stage1_and_planning", broken)
    out = tmp_path / "check"
    with pytest.raises(SystemExit) as exit_info:
        selftest_entry(["-o", str(out), "-device", "cpu"])
    assert exit_info.value.code == 1
    result = json.loads((out / "selftest.json").read_text())
    assert not result["passed"] and result["not_run"][0] == "train_rehrseg"
    failed = [c for c in result["checks"] if not c["passed"]]
    assert failed[0]["name"] == "stage stage1_and_planning runs" and "no planner today" in failed[0]["detail"]


def test_loss_check_flags_rising_and_non_finite_terms():
    verdicts = losses_finite_and_falling({"a": [2.0, 1.0, 0.5], "b": [1.0, 1.2], "c": [1.0, np.nan, 0.1]},
                                         ("a", "b", "c", "absent"))
    assert verdicts["a"][:2] == (True, True)
    assert verdicts["b"][:2] == (True, False)
    assert verdicts["c"][0] is False and "absent" not in verdicts


def test_state_comparison_and_grid_and_step_time():
    state = {"network_weights": {"w": torch.ones(3)}, "current_epoch": 4, "logging": {"x": [1.0, float("nan")]}}
    same = {"network_weights": {"w": torch.ones(3)}, "current_epoch": 4, "logging": {"x": [1.0, float("nan")]}}
    assert same_state(state, same, ("network_weights", "current_epoch", "logging")) == []
    moved = {**same, "network_weights": {"w": torch.tensor([1.0, 1.0, 1.0 + 1e-7])}}
    assert same_state(state, moved, ("network_weights", "current_epoch")) == ["network_weights"]

    image = sitk.Image(4, 5, 6, sitk.sitkUInt8)
    image.SetSpacing((1.0, 1.0, 1.0))
    grid = Grid.of(image)
    assert grid_mismatch(image, grid) is None
    assert "spacing" in grid_mismatch(image, Grid(grid.size, (1.0, 1.0, 2.0), grid.origin, grid.direction))
    assert "size" in grid_mismatch(image, Grid((4, 5, 7), grid.spacing, grid.origin, grid.direction))

    logged = {"epoch_start_timestamps": [0.0, 10.0, 13.0, 16.5], "epoch_end_timestamps": [10.0, 13.0, 16.5, 19.5]}
    assert seconds_per_step(logged, 10) == pytest.approx(0.3)    # median of 3, 3.5, 3 (the first epoch left out)
