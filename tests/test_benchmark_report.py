"""The benchmark's goal checks on made-up scores: each goal is computed from the right arms, a missing arm reads
'not run' instead of failing the report."""
from benchmark_report import goals


def summary(dice, hd95=10.0, lr_dice=None, csf=None):
    labels = {"1": dice if csf is None else csf, "2": dice, "3": dice}
    s = {"mean": {"Dice": dice, "HD95": hd95, "ASSD": 1.0}, "mean_per_label": {k: {"Dice": v} for k, v in labels.items()}}
    if lr_dice is not None:
        s["lr_dice"] = lr_dice
    return s


RESULTS = {"lr_nnunet_linear": summary(0.60, 10.0, 0.75), "lr_nnunet_shape": summary(0.62),
           "label_round_trip": summary(0.70, csf=0.80),
           "interp_then_segment": summary(0.66), "sr_then_segment": summary(0.69),
           "hr_upper_bound": summary(0.80), "rehrseg": summary(0.75, 7.0, 0.77)}
COMMANDS = {"rehrseg": 20.0, "super_resolve": 30.0, "sr_then_segment": 25.0}
STEPS = {"Dataset700_X/REHRSegTrainer_1500steps": 1.4, "Dataset700_X/REHRSegTrainer_noKD_1500steps": 1.0,
         "Dataset700_X/nnUNetTrainer_rehrseg1500StepsBudget": 1.0, "Dataset703_HR/nnUNetTrainer_rehrseg1500StepsBudget": 3.0}
TRAINERS = ("REHRSegTrainer_1500steps", "nnUNetTrainer_rehrseg1500StepsBudget")


def test_goals_are_computed_from_the_right_arms():
    rows = {goal: (measured, met) for goal, measured, met in goals(RESULTS, COMMANDS, STEPS, *TRAINERS)}
    # the best LR-only arm is the label round trip (0.70 among 0.60 / 0.62 / 0.70)
    ahead, met = rows["HR mean Dice >= best LR-only arm (1, 1b, 1c, 2, 2b) + 0.02"]
    assert "label_round_trip" in ahead and met                 # 0.75 >= 0.72
    per_label, met = rows["HR Dice >= best LR-only arm on every label"]
    assert "CSF 0.750 vs 0.800" in per_label and not met       # the round trip's CSF is ahead
    gap, met = rows["closes >= 70% of the gap best LR-only arm -> arm 6"]
    assert gap.startswith("50%") and not met                   # (0.75 - 0.70) / (0.80 - 0.70)
    assert rows["HR Dice beats arm 4 (SR-then-segment)"][1]
    assert rows["LR-head Dice >= arm 1 LR Dice + 0.01"][1]     # 0.77 >= 0.76
    assert rows["HR HD95 <= 0.8 x arm 1"][1]                   # 7.0 <= 0.8 x 10.0
    inference, met = rows["inference <= 0.5 x SR-then-segment (self-SR + HR nnU-Net)"]
    assert "0.36x" in inference and met                        # 20 / (30 + 25)
    step, met = rows["training step <= 1.2 x nnUNetTrainer (same LR network)"]
    assert "1.40x" in step and not met                         # the full trainer, not the ablation or arm 6


def test_missing_arms_read_not_run():
    partial = {k: v for k, v in RESULTS.items() if k != "hr_upper_bound"}
    rows = {goal: (measured, met) for goal, measured, met in goals(partial, {}, {}, *TRAINERS)}
    assert rows["closes >= 70% of the gap best LR-only arm -> arm 6"] == ("not run", None)
    assert rows["inference <= 0.5 x SR-then-segment (self-SR + HR nnU-Net)"] == ("not run", None)
    assert rows["HR Dice beats arm 3 (interpolate-then-segment)"][1] is True


def test_presets_follow_the_device_and_overrides():
    from benchmark import resolve_benchmark_preset
    from nnunetv2_rehrseg.demo.pipeline import resolve_preset

    assert resolve_preset(None, "cuda").trainer == "REHRSegTrainer_50epochs"
    cpu = resolve_preset(None, "cpu", n_train=3, trainer=None)
    assert cpu.planner == "REHRSegPlannerCPU" and cpu.n_train == 3 and cpu.trainer == "REHRSegTrainer_fast"
    assert cpu.rehrseg_from_baseline and not resolve_preset("fast", "cpu", rehrseg_from_baseline=False).rehrseg_from_baseline
    bench = resolve_benchmark_preset("fast", "cpu")
    assert bench.demo.trainer == "REHRSegTrainer_1500steps" and bench.demo.baseline_trainer.endswith("1500StepsBudget")
    assert bench.demo.n_test == 4 and resolve_benchmark_preset("default", "cuda").demo.n_test == 4
    assert all(t.endswith("_1500steps") for t in bench.ablations.values()) and bench.from_lr_trainer.endswith("_1500steps")
    converged = resolve_benchmark_preset("converged", "cpu")
    assert converged.demo.trainer == "REHRSegTrainer_3000steps" and converged.ablations.keys() == bench.ablations.keys()
    assert all(t.endswith("_3000steps") for t in (*converged.ablations.values(), converged.from_lr_trainer))
    import research_trainers
    from benchmark import BENCHMARK_PRESETS

    import nnunetv2_rehrseg.trainers as trainers

    named = {t for p in BENCHMARK_PRESETS.values()
             for t in (p.demo.trainer, p.demo.baseline_trainer, p.from_lr_trainer, *p.ablations.values())}
    findable = set(trainers.__all__) | set(research_trainers.__all__)   # the plugin's and the benchmark's shim
    assert {t for t in named if not t.startswith("nnUNetTrainer_") or "rehrseg" in t} <= findable


def test_arm_5b_starts_from_arm_1_and_arm_1c_writes_hr_labels(tmp_path):
    """Arm 5b trains REHRSeg with nnU-Net's -pretrained_weights pointing at arm 1's final checkpoint; arm 1c writes
    arm 1's LR segmentation, contour-interpolated, on the HR grid."""
    import numpy as np
    import pytest

    from benchmark import Benchmark, resolve_benchmark_preset
    from nnunetv2_rehrseg.demo.subjects import DemoDataset
    from nnunetv2_rehrseg.geometry import Grid, hr_grid
    from nnunetv2_rehrseg.image_io import read_image, write_image

    bench = Benchmark(tmp_path, "cpu", 4, 2, resolve_benchmark_preset("fast", "cpu"), seed=0)
    bench.data = DemoDataset(tmp_path / "nnUNet_raw" / "Dataset700_MNIThickSlices", tmp_path / "truth", ["a"], ["t"])
    commands = []
    bench.run = lambda *command: commands.append(command) or 1.0
    bench.rehrseg_from_lr_arm()
    train = commands[0]
    assert train[:6] == ("rehrseg_train", "700", "3d_fullres", "0", "-tr", "REHRSegTrainer_fromLR_1500steps")
    weights = train[train.index("-pretrained_weights") + 1]
    assert weights.endswith("Dataset700_MNIThickSlices/nnUNetTrainer_rehrseg1500StepsBudget__nnUNetPlans_rehrsegLR__"
                            "3d_fullres/fold_0/checkpoint_final.pth")
    assert commands[1][0] == "rehrseg_predict" and "predictions/rehrseg_from_lr" in " ".join(commands[1])
    # interrupted after a checkpoint: the rerun continues from it (--c) instead of loading arm 1's weights again
    fold = (tmp_path / "nnUNet_results" / "Dataset700_MNIThickSlices" /
            "REHRSegTrainer_fromLR_1500steps__REHRSegPlans__3d_fullres" / "fold_0")
    fold.mkdir(parents=True)
    (fold / "checkpoint_latest.pth").write_bytes(b"")
    commands.clear()
    bench.rehrseg_from_lr_arm()
    assert "--c" in commands[0] and "-pretrained_weights" not in commands[0]
    assert commands[0][:6] == train[:6]

    pytest.importorskip("itk")
    lr = Grid((20, 18, 5), (1.0, 1.0, 4.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    labels = np.zeros((5, 18, 20), np.uint8)
    labels[1:4, 4:12, 5:15] = 1
    write_image(labels, lr, tmp_path / "predictions" / "lr_nnunet_lr" / "t.nii.gz")
    bench.contour_interpolation_arm()
    hr_labels, grid = read_image(tmp_path / "predictions" / "lr_nnunet_mci" / "t.nii.gz")
    assert grid == hr_grid(lr, 2, 4) and hr_labels.shape == (20, 18, 20) and set(np.unique(hr_labels)) == {0, 1}


def test_pseudo_hr_labels_are_scored_beside_interpolation_of_the_annotation(tmp_path):
    """Stage 1's labels of the training subjects against their HR truth, next to nearest and shape-based
    interpolation of the same annotation; nothing before stage 1 has run."""
    import numpy as np

    from nnunetv2_rehrseg.degradation import majority_labels
    from benchmark import Benchmark, resolve_benchmark_preset
    from benchmark_report import pseudo_label_rows
    from nnunetv2_rehrseg.demo.subjects import DemoDataset
    from nnunetv2_rehrseg.geometry import Grid, hr_grid
    from nnunetv2_rehrseg.image_io import write_image

    bench = Benchmark(tmp_path, "cpu", 4, 2, resolve_benchmark_preset("fast", "cpu"), seed=0)
    raw = tmp_path / "nnUNet_raw" / "Dataset700_MNIThickSlices"
    bench.data = DemoDataset(raw, tmp_path / "truth", ["a"], ["t"])
    assert bench.pseudo_label_scores() == {}
    lr = Grid((20, 18, 5), (1.0, 1.0, 4.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    truth = np.zeros((20, 18, 20), np.uint8)
    truth[3:14, 4:12, 5:15] = 1                      # a block whose ends fall inside thick slices
    truth[5:9, 6:10, 7:11] = 2
    write_image(truth, hr_grid(lr, 2, 4), tmp_path / "truth" / "train" / "labels" / "a.nii.gz")
    write_image(majority_labels(truth, 0, 4), lr, raw / "labelsTr" / "a.nii.gz")
    stage1 = tmp_path / "nnUNet_preprocessed" / raw.name / "rehrseg" / "pseudo_hr" / "labelsTr"
    write_image(truth, hr_grid(lr, 2, 4), stage1 / "a.nii.gz")        # perfect pseudo-HR labels
    scores = bench.pseudo_label_scores()
    assert list(scores) == ["stage-1 pseudo-HR labels", "nearest", "shape-based (3d)"]
    assert scores["stage-1 pseudo-HR labels"]["mean"]["Dice"] == 1.0
    assert scores["nearest"]["mean"]["Dice"] < 1.0
    rows = pseudo_label_rows(scores).splitlines()
    assert rows[0].startswith("| stage-1 pseudo-HR labels | 1.000 (0.000) | 1.000 | 1.000 |")


def test_results_table_puts_each_std_beside_its_mean_and_leaves_missing_outputs_empty():
    from nnunetv2_rehrseg.demo.report import markdown_table, score_row

    with_lr = score_row("(5) ours", {**summary(0.75, 5.21, 0.8154), "std": {"Dice": 0.0031, "HD95": 0.12}})
    without = score_row("(1b) theirs", summary(0.7))
    table = markdown_table([with_lr, without]).splitlines()
    assert table[0] == ("| arm | mean Dice (std) | Dice CSF | Dice GM | Dice WM | HD95 mm (std) | ASSD mm | LR Dice |")
    assert table[1] == "|" + "---|" * 8
    assert table[2] == "| (5) ours | 0.750 (0.003) | 0.750 | 0.750 | 0.750 | 5.2 (0.1) | 1.00 | 0.815 |"
    assert table[3] == "| (1b) theirs | 0.700 | 0.700 | 0.700 | 0.700 | 10.0 | 1.00 |  |"   # no std: no brackets


def test_selected_arms_run_only_the_stages_they_need(tmp_path):
    """-arms: stage 1 always; an ablation alone trains nothing else; arm 5b brings arm 1's stage with it; a typo is
    refused with the list of arms."""
    import pytest

    from benchmark import Benchmark, resolve_benchmark_preset

    def stages_of(arms):
        bench = Benchmark(tmp_path, "cpu", 4, 2, resolve_benchmark_preset("converged", "cpu"), seed=0, arms=arms)
        names = []
        bench.stage = lambda name, fn, *args: names.append(name)
        bench.run_stages()
        return names

    assert stages_of(["rehrseg_kdEveryStep"]) == ["stage 1 + planning + preprocessing",
                                                   "train + predict rehrseg_kdEveryStep"]
    assert stages_of(["rehrseg_from_lr"]) == ["stage 1 + planning + preprocessing",
                                              "train LR nnU-Net (arm 1) + predict all demo arms",
                                              "train + predict rehrseg_from_lr"]
    assert stages_of(["rehrseg_wrong_profile"])[1:] == ["stage 1 + planning (wrong slice profile)",
                                                        "train + predict rehrseg_wrong_profile"]
    every = stages_of(None)
    assert len(every) == 20 and every[-1] == "train + predict rehrseg_wrong_profile"
    with pytest.raises(ValueError, match="rehrseg_kdEveryStep"):
        Benchmark(tmp_path, "cpu", 4, 2, resolve_benchmark_preset("converged", "cpu"), seed=0, arms=["rehrseg_kd"])


def test_montage_of_a_partial_run_leaves_out_the_panels_it_has_not_made(tmp_path, monkeypatch):
    """A -arms run without arm 1 and arm 4 (no LR nnU-Net prediction, no pseudo-HR test images) still gets its QC
    montage: the LR input, the HR truth and REHRSeg."""
    import numpy as np

    from nnunetv2_rehrseg.demo import report
    from benchmark import Benchmark, resolve_benchmark_preset
    from nnunetv2_rehrseg.demo.subjects import DemoDataset
    from nnunetv2_rehrseg.geometry import Grid, hr_grid
    from nnunetv2_rehrseg.image_io import write_image

    bench = Benchmark(tmp_path, "cpu", 4, 2, resolve_benchmark_preset("fast", "cpu"), seed=0)
    raw = tmp_path / "nnUNet_raw" / "Dataset700_MNIThickSlices"
    bench.data = DemoDataset(raw, tmp_path / "truth", ["a"], ["t"])
    lr = Grid((20, 18, 5), (1.0, 1.0, 4.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    write_image(np.random.default_rng(0).random((5, 18, 20)).astype(np.float32), lr, raw / "imagesTs" / "t_0000.nii.gz")
    labels = np.zeros((20, 18, 20), np.uint8)
    labels[4:16, 4:12, 5:15] = 2
    for folder in ("truth/labels", "predictions/rehrseg"):
        write_image(labels, hr_grid(lr, 2, 4), tmp_path / folder / "t.nii.gz")
    panels = {}
    monkeypatch.setattr(report, "save_montage", lambda rows, names, path, **kw: panels.update(rows[0]))
    report.write_montage(bench, "t")
    assert list(panels) == ["LR input (nearest)", "HR truth labels", "REHRSeg labels"]
    assert all(p.shape == (20, 18) for p in panels.values())   # 20 HR slices (vertical) x 18 rows
