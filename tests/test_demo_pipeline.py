"""A miniature rehrseg_demo end to end (coarse template, few iterations, two-step trainers): every file of the
report is written and the numbers are sane; the label round trip beats chance."""
import csv
import json

import pytest

from nnunetv2_rehrseg.cli.demo import demo_entry
from nnunetv2_rehrseg.demo.arms import BASELINE_PLANS
from nnunetv2_rehrseg.demo.report import LEARNED_DICE, baseline_check


@pytest.mark.slow
def test_miniature_demo_writes_the_report(tmp_path, monkeypatch):
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(name, str(tmp_path / "unused"))   # the demo sets its own; restored afterwards
    monkeypatch.delenv("nnUNet_extTrainer", raising=False)
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    out = tmp_path / "demo"
    demo_entry(["-o", str(out), "-spacing", "5", "-n_train", "3", "-n_test", "1", "-iterations", "40",
                "-tr", "REHRSegTrainer_tiny", "-tr_baseline", "nnUNetTrainer_rehrsegTinyBudget"])
    for name in ("report.md", "results.csv", "results.png", "montage_sub03.png", "timings.json",
                 "metrics_rehrseg.json", "predictions/rehrseg/sub03.nii.gz", "predictions/rehrseg/lr/sub03.nii.gz",
                 "predictions/lr_nnunet_linear/sub03.nii.gz", "predictions/label_round_trip/sub03.nii.gz",
                 "predictions/lr_nnunet_shape/sub03.nii.gz", "predictions/label_round_trip_shape/sub03.nii.gz"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 6 and all(0 <= float(r["mean Dice"]) <= 1 for r in rows)
    oracle = {r["arm"][:4]: float(r["mean Dice"]) for r in rows}
    assert oracle["(2) "] > 0.4 and oracle["(2b)"] > 0.4     # HR truth -> LR -> nearest / shape-based
    assert json.loads((out / "timings.json").read_text())["total"] > 0
    lr_scores = json.loads((out / "metrics_rehrseg_lr.json").read_text())["summary"]   # per label, on the LR grid
    assert set(lr_scores["mean_per_label"]) >= {"1", "2", "3"}
    assert float(rows[-1]["LR Dice"]) == pytest.approx(lr_scores["mean"]["Dice"])
    # the preset's REHRSeg starts from arm 1's final checkpoint, and the report says so
    assert rows[-1]["arm"].startswith("(5b)") and "starts from arm 1's final checkpoint" in (out / "report.md").read_text()
    # arm 1's plans came from rehrseg_plan_and_preprocess -stock_lr_plans: stock plans with REHRSeg's LR topology,
    # preprocessed by nnU-Net
    pre = next((out / "nnUNet_preprocessed").glob("Dataset700_*"))
    stock = json.loads((pre / f"{BASELINE_PLANS}.json").read_text())["configurations"]["3d_fullres"]
    ours = json.loads((pre / "REHRSegPlans.json").read_text())["configurations"]["3d_fullres"]
    assert "rehrseg" not in stock and stock["patch_size"] == ours["rehrseg"]["lr_patch_size"]
    assert stock["architecture"]["arch_kwargs"]["features_per_stage"] == ours["architecture"]["arch_kwargs"][
        "features_per_stage"]
    assert list((pre / f"{BASELINE_PLANS}_3d_fullres").glob("sub*"))
    # nnU-Net's model selection ranked both models (and their ensemble) by the same LR-grid validation Dice
    selection = json.loads((out / "model_selection.json").read_text())["all_results"]
    names = list(selection)
    assert any(n.startswith("REHRSegTrainer_tiny__REHRSegPlans") for n in names)
    assert any(n.startswith("nnUNetTrainer_rehrsegTinyBudget__") for n in names)
    assert any(n.startswith("ensemble___") for n in names) and all(0 <= v <= 1 for v in selection.values())
    assert "model selection" in (out / "report.md").read_text()
    # the report says whether arm 1 learned every label before it was compared (its validation subject)
    validation = json.loads(next((out / "nnUNet_results").glob(
        "Dataset700_*/nnUNetTrainer_rehrsegTinyBudget__*/fold_0/validation/summary.json")).read_text())["mean"]
    learned = all(v["Dice"] >= LEARNED_DICE for v in validation.values())
    report = (out / "report.md").read_text()
    assert ("Arm 1 learned every label" in report) == learned and ("has not learned" in report) == (not learned)


def test_the_report_names_labels_the_baseline_missed():
    assert baseline_check({"1": 0.61, "2": 0.82}, LEARNED_DICE).startswith("Arm 1 learned every label")
    missed = baseline_check({"1": 0.61, "4": 0.0}, LEARNED_DICE)
    assert "has not learned ventricles" in missed and "ventricles 0.000" in missed and "CSF 0.610" in missed


def test_the_cpu_preset_trains_arm_1_twice_as_long_and_the_report_says_how_long():
    from nnunetv2_rehrseg.demo.pipeline import PRESETS
    from nnunetv2_rehrseg.demo.report import steps
    from nnunetv2_rehrseg.trainers.REHRSegTrainer_variants import training_steps

    fast = PRESETS["fast"]
    assert fast.rehrseg_from_baseline      # REHRSeg's own steps come on top of arm 1's
    assert training_steps(fast.baseline_trainer) == 2 * training_steps(fast.trainer) == 1600
    assert steps(fast.trainer) == ", 800 steps" and steps("MyOwnTrainer") == ""
