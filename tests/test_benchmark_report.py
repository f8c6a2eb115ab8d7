"""The benchmark's goal checks on made-up scores: each goal is computed from the right arms, a missing arm reads
'not run' instead of failing the report."""
from nnunetv2_rehrseg.demo.benchmark_report import goals


def summary(dice, hd95=10.0, lr_dice=None):
    s = {"mean": {"Dice": dice, "HD95": hd95, "ASSD": 1.0}, "mean_per_label": {}}
    if lr_dice is not None:
        s["lr_dice"] = lr_dice
    return s


RESULTS = {"lr_nnunet_linear": summary(0.60, 10.0, 0.75), "label_round_trip": summary(0.70),
           "interp_then_segment": summary(0.66), "sr_then_segment": summary(0.69),
           "hr_upper_bound": summary(0.80), "rehrseg": summary(0.75, 7.0, 0.77)}
COMMANDS = {"rehrseg": 20.0, "super_resolve": 30.0, "sr_then_segment": 25.0}
STEPS = {"Dataset700_X/REHRSegTrainer_quick": 1.4, "Dataset700_X/REHRSegTrainer_noKD_quick": 1.0,
         "Dataset700_X/nnUNetTrainer_rehrsegQuickBudget": 1.0, "Dataset703_HR/nnUNetTrainer_rehrsegQuickBudget": 3.0}
TRAINERS = ("REHRSegTrainer_quick", "nnUNetTrainer_rehrsegQuickBudget")


def test_goals_are_computed_from_the_right_arms():
    rows = {goal: (measured, met) for goal, measured, met in goals(RESULTS, COMMANDS, STEPS, *TRAINERS)}
    gap, met = rows["HR Dice closes >= 70% of the gap arm 1 -> arm 6"]
    assert gap.startswith("75%") and met                       # (0.75 - 0.60) / (0.80 - 0.60)
    assert rows["HR Dice beats arm 2 (label round trip)"][1]
    assert rows["HR Dice beats arm 4 (SR-then-segment)"][1]
    assert rows["LR-head Dice >= arm 1 LR Dice + 0.01"][1]     # 0.77 >= 0.76
    assert rows["HR HD95 <= 0.8 x arm 1"][1]                   # 7.0 <= 0.8 x 10.0
    inference, met = rows["inference <= 0.5 x SR-then-segment (self-SR + HR nnU-Net)"]
    assert "0.36x" in inference and met                        # 20 / (30 + 25)
    step, met = rows["training step <= 1.5 x nnUNetTrainer (same LR network)"]
    assert "1.40x" in step and met                             # the full trainer, not the ablation or arm 6


def test_missing_arms_read_not_run():
    partial = {k: v for k, v in RESULTS.items() if k != "hr_upper_bound"}
    rows = {goal: (measured, met) for goal, measured, met in goals(partial, {}, {}, *TRAINERS)}
    assert rows["HR Dice closes >= 70% of the gap arm 1 -> arm 6"] == ("not run", None)
    assert rows["inference <= 0.5 x SR-then-segment (self-SR + HR nnU-Net)"] == ("not run", None)
    assert rows["HR Dice beats arm 2 (label round trip)"][1] is True


def test_presets_follow_the_device_and_overrides():
    from nnunetv2_rehrseg.demo.benchmark import resolve_benchmark_preset
    from nnunetv2_rehrseg.demo.pipeline import resolve_preset

    assert resolve_preset(None, "cuda").trainer == "REHRSegTrainer_50epochs"
    cpu = resolve_preset(None, "cpu", n_train=3, trainer=None)
    assert cpu.planner == "REHRSegPlannerCPU" and cpu.n_train == 3 and cpu.trainer == "REHRSegTrainer_fast"
    bench = resolve_benchmark_preset("fast", "cpu")
    assert bench.demo.trainer == "REHRSegTrainer_quick" and bench.demo.baseline_trainer.endswith("QuickBudget")
    assert bench.demo.n_test == 4 and resolve_benchmark_preset("default", "cuda").demo.n_test == 4
    assert all(t.endswith("_quick") for t in bench.ablations.values())
