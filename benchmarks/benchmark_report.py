"""The benchmark's report: every arm's HR/LR scores, image quality, time and memory, and the goals checked."""
import json
from typing import Dict, List

from benchmark_arms import BENCHMARK_ARMS, LR_ONLY_ARMS
from nnunetv2_rehrseg.demo.arms import DATASET_ID
from convergence import convergence_rows, plot_learning_curves
from nnunetv2_rehrseg.demo.report import (NAMES, markdown_table, plot_results, score_row, timing_rows, write_csv,
                                          write_montage)


def _rows(results: dict) -> List[dict]:
    return [{"arm": description, "key": arm, **score_row(description, results[arm])}
            for arm, description in BENCHMARK_ARMS.items() if arm in results]


def best_lr_only_arm(results: dict) -> str:
    """The LR-only arm (LR_ONLY_ARMS) with the highest HR mean Dice among those that ran."""
    ran = [a for a in LR_ONLY_ARMS if a in results]
    if not ran:
        raise KeyError("no LR-only arm has run")
    return max(ran, key=lambda a: results[a]["mean"]["Dice"])


def goals(results: dict, commands: Dict[str, float], steps: Dict[str, float], trainer: str,
          baseline_trainer: str) -> List[tuple]:
    """(goal, measured, met: True/False, or None where an arm it needs has not run) for the issue's targets.
    `steps` is keyed '<dataset folder>/<trainer>'; the step ratio compares the two trainers on the REHRSeg dataset."""
    def dice(arm):
        return results[arm]["mean"]["Dice"]

    def label_dice(arm):
        return {k: v["Dice"] for k, v in results[arm]["mean_per_label"].items()}

    def ahead_of_best():
        best = best_lr_only_arm(results)
        return f"{dice('rehrseg'):.3f} vs {dice(best):.3f} ({best})", dice("rehrseg") >= dice(best) + 0.02

    def every_label():
        best = best_lr_only_arm(results)
        ours, theirs = label_dice("rehrseg"), label_dice(best)
        text = ", ".join(f"{NAMES.get(k, k)} {ours[k]:.3f} vs {theirs[k]:.3f}" for k in ours)
        return text, all(ours[k] >= theirs[k] for k in ours)

    def gap():
        best = best_lr_only_arm(results)
        low, high, ours = dice(best), dice("hr_upper_bound"), dice("rehrseg")
        closed = (ours - low) / (high - low)
        return f"{100 * closed:.0f}% ({low:.3f} -> {ours:.3f}, bound {high:.3f})", closed >= 0.7

    def beats(arm):
        return lambda: (f"{dice('rehrseg'):.3f} vs {dice(arm):.3f}", dice("rehrseg") > dice(arm))

    def lr_dice():
        ours, stock = results["rehrseg"]["lr_dice"], results["lr_nnunet_linear"]["lr_dice"]
        return f"{ours:.3f} vs {stock:.3f}", ours >= stock + 0.01

    def hd95():
        ours, stock = results["rehrseg"]["mean"]["HD95"], results["lr_nnunet_linear"]["mean"]["HD95"]
        return f"{ours:.1f} vs {stock:.1f} mm ({ours / stock:.2f}x)", ours <= 0.8 * stock

    def inference():
        ours, sr = commands["rehrseg"], commands["super_resolve"] + commands["sr_then_segment"]
        return f"{ours:.0f} s vs {sr:.0f} s ({ours / sr:.2f}x)", ours <= 0.5 * sr

    def step():
        def of(name):
            return next(v for k, v in steps.items() if k.startswith(f"Dataset{DATASET_ID:03d}_") and
                        k.endswith(f"/{name}"))
        ours, stock = of(trainer), of(baseline_trainer)
        return f"{ours:.2f} vs {stock:.2f} s ({ours / stock:.2f}x)", ours <= 1.2 * stock

    checks = [("HR mean Dice >= best LR-only arm (1, 1b, 1c, 2, 2b) + 0.02", ahead_of_best),
              ("HR Dice >= best LR-only arm on every label", every_label),
              ("closes >= 70% of the gap best LR-only arm -> arm 6", gap),
              ("LR-head Dice >= arm 1 LR Dice + 0.01", lr_dice),
              ("HR HD95 <= 0.8 x arm 1", hd95),
              ("HR Dice beats arm 3 (interpolate-then-segment)", beats("interp_then_segment")),
              ("HR Dice beats arm 4 (SR-then-segment)", beats("sr_then_segment")),
              ("inference <= 0.5 x SR-then-segment (self-SR + HR nnU-Net)", inference),
              ("training step <= 1.2 x nnUNetTrainer (same LR network)", step)]
    rows = []
    for goal, check in checks:
        try:
            rows.append((goal, *check()))
        except (KeyError, StopIteration):
            rows.append((goal, "not run", None))
    return rows


def pseudo_label_rows(scores: Dict[str, dict]) -> str:
    """Markdown rows: method, mean Dice (std over the subjects), Dice per label."""
    return "\n".join(f"| {method} | {s['mean']['Dice']:.3f} ({s['std']['Dice']:.3f}) | "
                     + " | ".join(f"{v['Dice']:.3f}" for v in s["mean_per_label"].values()) + " |"
                     for method, s in scores.items())


def write_benchmark_report(bench, results: dict, quality: dict, curves: Dict[str, dict],
                           pseudo_labels: Dict[str, dict]) -> None:
    out = bench.out
    steps = {k: v["s_per_step"] for k, v in curves.items()}
    plot_learning_curves(curves, out / "benchmark_learning_curves.png")
    rows = _rows(results)
    write_csv(rows, out / "benchmark_results.csv")
    table_rows = [{k: v for k, v in r.items() if k != "key"} for r in rows]
    plot_results(table_rows, out / "benchmark_results.png")
    for identifier in bench.data.test_ids:
        write_montage(bench, identifier)
    goal_rows = goals(results, bench.command_seconds, steps, bench.trainer, bench.baseline_trainer)
    (out / "benchmark_timings.json").write_text(json.dumps({
        "stages_s": bench.timings, "peak_rss_gb_per_stage": bench.peak_rss_gb, "commands_s": bench.command_seconds,
        "s_per_training_step": steps, "image_quality": quality, "learning_curves": curves,
        "pseudo_hr_labels": pseudo_labels}, indent=1))
    quality_rows = "\n".join(f"| {k} | {v['PSNR dB']:.2f} | {v['SSIM']:.4f} |" for k, v in quality.items())
    step_rows = "\n".join(f"| {k} | {v:.2f} |" for k, v in steps.items())
    command_rows = "\n".join(f"| {k} | {v:.0f} s |" for k, v in bench.command_seconds.items())
    verdict = {True: "met", False: "**missed**", None: "not run"}
    goal_table = "\n".join(f"| {g} | {m} | {verdict[ok]} |" for g, m, ok in goal_rows)
    demo = bench.preset
    montages = "\n".join(f"![{i}](montage_{i}.png)" for i in bench.data.test_ids)
    (out / "benchmark_report.md").write_text(f"""# REHRSeg benchmark report

MNI152 T1 ({demo.spacing_mm} mm) subjects, thick slices simulated at r={bench.r} along axis {bench.axis} (SimpleITK
order, Gaussian slice profile); {demo.n_train} training subjects (fold 0: the last one validates), {demo.n_test} test
subjects scored on their HR truth. Every learned arm: the same network width and nnU-Net patch search budget
(`{demo.planner}` / `{bench.benchmark.stock_planner}`), the same iteration budget (`{demo.trainer}`,
`{demo.baseline_trainer}`). Device: {bench.device}.

{markdown_table(table_rows)}
HR Dice/HD95/ASSD on the HR grid (mm), means over the test subjects and the labels ({", ".join(NAMES.values())};
every subject and label: benchmark_per_subject.csv);
LR Dice: the LR-grid output against the test subjects' LR labels. A label missing from a prediction gets Dice 0 and
no surface distance (left out of the HD95/ASSD means).

![results](benchmark_results.png)

{montages}

## Convergence

Validation Dice of every learned arm (fold 0's validation subject, never a test subject; nnU-Net's online patch
Dice per epoch): an arm counts as converged when a least-squares line through the last quarter of its epochs moves
by less than 0.01 over that quarter (`demo/convergence.py`; nnU-Net's EMA, dotted in the picture, lags the curve by
about ten epochs). A result from an arm that has not converged is not a result.

| dataset / trainer | steps | final validation Dice | change over the last quarter (fitted) | converged |
|---|---|---|---|---|
{chr(10).join(convergence_rows(curves))}

![learning curves](benchmark_learning_curves.png)

## Goals

| goal | measured | |
|---|---|---|
{goal_table}

## Pseudo-HR labels of the training subjects (stage 1, {demo.selfsr_iterations or "the preset's"} self-SR iterations)

What the HR head is trained toward, against the training subjects' HR truth, beside interpolating the same annotation:

| labels vs HR truth | mean Dice (std) | {" | ".join(f"Dice {n}" for n in NAMES.values())} |
|---|---|{"---|" * len(NAMES)}
{pseudo_label_rows(pseudo_labels) if pseudo_labels else "| stage 1 has not run | | |"}

## Pseudo-HR image quality (test subjects, whole volume, data range of the HR truth)

| method | PSNR dB | SSIM |
|---|---|---|
{quality_rows}

## Time and memory

| stage | wall time | peak memory (largest process) |
|---|---|---|
{timing_rows(bench)}

Prediction commands (all test subjects, process start included):

| command | wall time |
|---|---|
{command_rows}

Seconds per training step (median epoch time / iterations; the epoch's validation iterations included):

| dataset / trainer | s per step |
|---|---|
{step_rows}
""")
