import logging

import pytest

from nnunetv2_rehrseg.demo.pipeline import PRESETS, resolve_preset
from nnunetv2_rehrseg.device_budget import DEMO_PRESET, PLANNER, STAGE1_PRESET, default_for


@pytest.mark.parametrize("device, stage1, planner, demo", [
    ("cuda", "default", "ExperimentPlanner", "default"),
    ("cpu", "fast", "REHRSegPlannerCPU", "fast"),
    ("mps", "fast", "REHRSegPlannerCPU", "fast")])
def test_unset_flags_follow_the_device_with_one_log_line_each(caplog, device, stage1, planner, demo):
    with caplog.at_level(logging.INFO, logger="nnunetv2_rehrseg.device_budget"):
        assert default_for(None, STAGE1_PRESET, device, "-preset", "stage 1") == stage1
        assert default_for(None, PLANNER, device, "-pl", "plans") == planner
        assert resolve_preset(None, device) == PRESETS[demo] and DEMO_PRESET[
            "GPU" if device == "cuda" else "CPU"] == demo
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    other = "fast" if stage1 == "default" else "default"
    assert f"-preset {stage1}, the" in lines[0] and f"-preset {other} for the" in lines[0]
    assert f"device {device}" in lines[1]


def test_a_given_value_is_kept_and_not_logged(caplog):
    with caplog.at_level(logging.INFO, logger="nnunetv2_rehrseg.device_budget"):
        assert default_for("default", STAGE1_PRESET, "cpu", "-preset", "stage 1") == "default"
        assert default_for("nnUNetPlannerResEncM", PLANNER, "cuda", "-pl", "plans") == "nnUNetPlannerResEncM"
    assert not caplog.records
