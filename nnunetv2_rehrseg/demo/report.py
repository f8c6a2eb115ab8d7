"""The demo's report: a markdown table, a CSV, a bar plot and one QC montage per test subject."""
import csv
import json
from pathlib import Path
from typing import List

import numpy as np

from nnunetv2_rehrseg.demo.anatomy import LABELS
from nnunetv2_rehrseg.geometry import numpy_axis_of
from nnunetv2_rehrseg.image_io import read_image
from nnunetv2_rehrseg.qc import save_montage

NAMES = {str(v): k for k, v in LABELS.items() if v}
# a label the baseline scores below this on its validation subject it has not learned (a missed structure scores 0;
# the thinnest label a learned model gets is far above it)
LEARNED_DICE = 0.1


def score_row(description: str, summary: dict) -> dict:
    """One arm's row of the results table and CSV, from its evaluation summary (`with_spread`, `lr_dice`)."""
    spread = summary.get("std", {})
    return {"arm": description, "mean Dice": summary["mean"]["Dice"], "mean Dice std": spread.get("Dice", float("nan")),
            **{f"Dice {NAMES[k]}": v["Dice"] for k, v in summary["mean_per_label"].items()},
            "HD95 mm": summary["mean"]["HD95"], "HD95 mm std": spread.get("HD95", float("nan")),
            "ASSD mm": summary["mean"]["ASSD"], "LR Dice": summary.get("lr_dice", float("nan"))}


def _rows(pipeline, results):
    for arm, description in pipeline.arm_names().items():
        yield score_row(description, results[arm])


def _plane(volume: np.ndarray, sitk_axis: int) -> np.ndarray:
    """A plane that contains the LR axis, LR axis vertical with index 0 at the bottom; 1/12 of the width off the
    middle, so that on a brain it cuts a hemisphere and a lateral ventricle rather than the midline fissure."""
    lr = numpy_axis_of(sitk_axis)
    other = max(a for a in range(3) if a != lr)
    plane = np.take(volume, volume.shape[other] // 2 - volume.shape[other] // 12, axis=other)
    return np.flipud(plane if lr == 0 else plane.T)


def write_montage(pipeline, identifier: str) -> None:
    """The QC montage of one test subject; panels whose volume a partial benchmark run (-arms) has not made are left
    out."""
    out, axis, r = pipeline.out, pipeline.axis, pipeline.r
    lr_image, _ = read_image(pipeline.data.raw_folder / "imagesTs" / f"{identifier}_0000.nii.gz")
    panels = {"pseudo-HR image": out / "pseudo_hr_test" / f"{identifier}_0000.nii.gz",
              "uncertainty": out / "pseudo_hr_test" / "uncertainty" / f"{identifier}.nii.gz",
              "HR truth labels": out / "truth" / "labels" / f"{identifier}.nii.gz",
              "REHRSeg labels": out / "predictions" / "rehrseg" / f"{identifier}.nii.gz",
              "LR nnU-Net labels (linear)": out / "predictions" / "lr_nnunet_linear" / f"{identifier}.nii.gz"}
    row = {"LR input (nearest)": _plane(np.repeat(lr_image, r, axis=numpy_axis_of(axis)), axis),
           **{name: _plane(read_image(path)[0], axis) for name, path in panels.items() if path.is_file()}}
    save_montage([row], [identifier], out / f"montage_{identifier}.png",
                 title=f"{identifier}: plane through the thick-slice axis (vertical)", label_max=len(LABELS) - 1,
                 label_names={v: k for k, v in LABELS.items()})


def plot_results(rows, path: Path) -> None:
    """Every arm by its full name: mean HR Dice and HD95 with their values and error bars (std over the test subjects,
    when the rows carry it), and Dice per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["arm"] for r in rows][::-1]
    rows = rows[::-1]
    labels = [k for k in rows[0] if k.startswith("Dice ")]
    y = np.arange(len(rows))
    fig, axes = plt.subplots(1, 3, figsize=(19, 1.2 + 0.42 * len(rows)), sharey=True,
                             gridspec_kw={"width_ratios": [1, 1.4, 1]})
    for ax, key, colour, label in ((axes[0], "mean Dice", "tab:green", "HR Dice, mean over labels (higher is better)"),
                                   (axes[2], "HD95 mm", "tab:red", "HR HD95 in mm (lower is better)")):
        values = [r[key] for r in rows]
        errors = [r.get(f"{key} std", 0.0) for r in rows]
        ax.barh(y, values, xerr=errors, color=colour, alpha=0.8, capsize=3)
        for yi, v, e in zip(y, values, errors):
            if np.isfinite(v):   # the value right of its error bar
                ax.text(v + (e if np.isfinite(e) else 0), yi, f"  {v:.3f}" if key == "mean Dice" else f"  {v:.1f}",
                        va="center", fontsize=8)
        ax.set_xlabel(label)
    axes[0].set_xlim(0, 1.1)
    height = 0.8 / max(1, len(labels))
    for i, key in enumerate(labels):
        values = [r[key] for r in rows]
        axes[1].barh(y + (i - (len(labels) - 1) / 2) * height, values, height=height, label=key[5:])
        for yi, v in zip(y, values):
            axes[1].text(v, yi + (i - (len(labels) - 1) / 2) * height, f" {v:.2f}", va="center", fontsize=6)
    axes[1].set_xlim(0, 1.1)
    axes[1].set_xlabel("HR Dice per label")
    axes[1].legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(labels), fontsize=8, frameon=False)
    axes[0].set_yticks(y, names, fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".partial.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)


def timing_rows(pipeline) -> str:
    def peak(stage):
        return f"{pipeline.peak_rss_gb[stage]:.1f} GB" if stage in pipeline.peak_rss_gb else "-"
    return "\n".join(f"| {k} | {v:.0f} s | {peak(k)} |" for k, v in pipeline.timings.items())


def markdown_table(rows: List[dict]) -> str:
    """score_row rows as a table a reader takes in at once: each std in brackets after its mean, distances to 0.1 mm
    (ASSD 0.01), Dice to 0.001, an empty cell where an arm has no such output (no LR grid)."""
    def cell(name: str, value) -> str:
        if isinstance(value, str):
            return value
        if np.isnan(value):
            return ""
        return f"{value:.1f}" if name.startswith("HD95") else f"{value:.2f}" if name.startswith("ASSD") else f"{value:.3f}"

    columns = [c for c in rows[0] if not c.endswith(" std")]
    header = "| " + " | ".join(f"{c} (std)" if f"{c} std" in rows[0] else c for c in columns) + " |\n|"

    def with_std(r: dict, c: str) -> str:
        std = cell(c, r[f"{c} std"]) if f"{c} std" in r else ""
        return cell(c, r[c]) + (f" ({std})" if std else "")

    lines = ["| " + " | ".join(with_std(r, c) for c in columns) + " |\n" for r in rows]
    return header + "---|" * len(columns) + "\n" + "".join(lines)


def write_csv(rows: List[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def missed_labels(label_dice: dict, learned_dice: float = LEARNED_DICE) -> List[str]:
    """The labels (as keyed in `label_dice`) the baseline has not learned."""
    return [k for k, v in label_dice.items() if v < learned_dice]


def steps(trainer: str) -> str:
    """", N steps" for a trainer whose budget the plugin declares, else nothing."""
    from nnunetv2_rehrseg.trainers.REHRSegTrainer_variants import training_steps

    n = training_steps(trainer)
    return f", {n} steps" if n else ""


def baseline_check(label_dice: dict, learned_dice: float) -> str:
    """The report's sentence on whether arm 1 learned every label before it is compared (fold 0's validation
    subject, LR grid)."""
    scores = ", ".join(f"{NAMES.get(k, k)} {v:.3f}" for k, v in label_dice.items())
    missed = [NAMES.get(k, k) for k in missed_labels(label_dice, learned_dice)]
    if not missed:
        return f"Arm 1 learned every label before the comparison (validation Dice per label, LR grid: {scores})."
    return (f"**Arm 1 has not learned {', '.join(missed)}** (validation Dice per label, LR grid: {scores}): in this "
            f"run the comparison with it says more about the baseline's run than about REHRSeg. Rerun with another "
            f"-seed, or a longer budget for both (-tr_baseline, -tr).")


def write_report(pipeline, results: dict, peak_gb: float) -> None:
    out = pipeline.out
    rows = list(_rows(pipeline, results))
    write_csv(rows, out / "results.csv")
    plot_results(rows, out / "results.png")
    for identifier in pipeline.data.test_ids:
        write_montage(pipeline, identifier)
    (out / "timings.json").write_text(json.dumps({**pipeline.timings, "peak_rss_gb": peak_gb,
                                                  "peak_rss_gb_per_stage": pipeline.peak_rss_gb}, indent=1))
    table = markdown_table(rows)
    timings = timing_rows(pipeline)
    started = ("; REHRSeg starts from arm 1's final checkpoint (-pretrained_weights: encoder, decoder and the LR "
               "segmentation layers; the HR head fresh) and trains its budget on top" if pipeline.preset.rehrseg_from_baseline
               else "; REHRSeg from scratch")
    montages = "\n".join(f"![{i}](montage_{i}.png)" for i in pipeline.data.test_ids)
    check = baseline_check(pipeline.baseline_dice, LEARNED_DICE) if pipeline.baseline_dice else ""
    selection = "\n".join(f"| {name} | {dice:.3f} |" for name, dice in
                           sorted(pipeline.model_selection.items(), key=lambda item: -item[1]))
    (out / "report.md").write_text(f"""# REHRSeg demo report

MNI152 T1 ({pipeline.spacing_mm} mm) subjects, thick slices simulated at r={pipeline.r} along axis {pipeline.axis}
(SimpleITK order); {pipeline.n_train} training subjects (fold 0: last one validates), {pipeline.n_test} test
subjects scored on their HR truth. Trainers: `{pipeline.trainer}` (REHRSeg{steps(pipeline.trainer)}) and
`{pipeline.baseline_trainer}` (arm 1{steps(pipeline.baseline_trainer)}), the same LR network
(`{pipeline.preset.planner}`){started}. Device: {pipeline.device}.

{check}

{table}
LR Dice: the LR-grid output against the LR labels of the test subjects (majority rule). HD95/ASSD in mm on the HR
grid; means over the test subjects and the labels ({", ".join(NAMES.values())}); a label missing from a
prediction gets Dice 0 and no surface distance (left out of the HD95/ASSD means).

![results](results.png)

{montages}

nnU-Net's model selection (`nnUNetv2_find_best_configuration`'s number: fold 0's validation subject, LR-grid output
against the LR labels, for every model alike; `model_selection.json`):

| model | cross-validation Dice (LR grid) |
|---|---|
{selection}

| stage | wall time | peak memory (largest process) |
|---|---|---|
{timings}

Peak memory (largest process): {peak_gb:.1f} GB.

Limits: template-derived subjects (one anatomy, random deformations, bias and contrast), thick slices simulated by
the same slice-profile model the method assumes, a CPU budget of minutes (quality is far from converged).
""")
