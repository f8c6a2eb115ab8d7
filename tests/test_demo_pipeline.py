"""A miniature rehrseg_demo end to end (coarse template, few iterations, two-step trainers): every file of the
report is written and the numbers are sane; the label round trip beats chance."""
import csv
import json

import pytest

from nnunetv2_rehrseg.cli.demo import demo_entry


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
    # nnU-Net's model selection ranked both models (and their ensemble) by the same LR-grid validation Dice
    selection = json.loads((out / "model_selection.json").read_text())["all_results"]
    names = list(selection)
    assert any(n.startswith("REHRSegTrainer_tiny__REHRSegPlans") for n in names)
    assert any(n.startswith("nnUNetTrainer_rehrsegTinyBudget__") for n in names)
    assert any(n.startswith("ensemble___") for n in names) and all(0 <= v <= 1 for v in selection.values())
    assert "model selection" in (out / "report.md").read_text()
