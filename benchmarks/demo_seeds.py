"""The demo's run-to-run spread: several finished `rehrseg_demo -o DIR -seed S` runs side by side.

    python benchmarks/demo_seeds.py DIR_SEED0 DIR_SEED1 ... [-o seeds.json]

Per run: every arm's HR mean Dice, HD95 and LR Dice (the run's results.csv), REHRSeg's lead over the better of arm 1
(softmax linear) and arm 1b (shape-based), whether arm 1 learned every label on its validation subject (the report's
check), nnU-Net's model selection and the wall time. Then the mean and standard deviation over the runs. Seeds change
the subjects (deformations) and stage 1's initialisation; CPU training is not bit-reproducible either, so two runs of
one seed differ too.
"""
import argparse
import csv
import json
import statistics
from pathlib import Path

from nnunetv2_rehrseg.demo.pipeline import validation_label_dice
from nnunetv2_rehrseg.demo.report import LEARNED_DICE, missed_labels

LR_ARMS = ("(1) ", "(1b)")         # the arms a user has without REHRSeg that the lead is taken against


def run_summary(folder: Path) -> dict:
    rows = list(csv.DictReader(open(folder / "results.csv")))
    arms = {row["arm"]: {"dice": float(row["mean Dice"]), "hd95": float(row["HD95 mm"]),
                         "lr_dice": float(row["LR Dice"]) if row["LR Dice"] not in ("", "nan") else None}
            for row in rows}
    rehrseg = next(name for name in arms if name.startswith("(5"))
    best_lr = max(v["dice"] for name, v in arms.items() if name.startswith(LR_ARMS) and "nearest" not in name)
    baseline_fold = next((folder / "nnUNet_results").glob("Dataset700_*/nnUNetTrainer_*__*/fold_0"))
    baseline_dice = validation_label_dice(baseline_fold)
    timings = json.loads((folder / "timings.json").read_text())
    selection = json.loads((folder / "model_selection.json").read_text())["all_results"]
    return {"folder": str(folder), "arms": arms, "rehrseg_arm": rehrseg,
            "lead_over_best_of_1_and_1b": arms[rehrseg]["dice"] - best_lr,
            "arm1_validation_dice_per_label": baseline_dice,
            "arm1_missed_labels": missed_labels(baseline_dice, LEARNED_DICE),
            "model_selection": selection, "total_minutes": timings["total"] / 60,
            "peak_rss_gb": timings.get("peak_rss_gb")}


def spread(values) -> dict:
    values = list(values)
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="finished demo folders (report.md written)")
    parser.add_argument("-o", type=Path, help="JSON to write")
    args = parser.parse_args(argv)
    runs = [run_summary(folder) for folder in args.runs]
    arms = list(runs[0]["arms"])
    summary = {name: {key: spread(r["arms"][name][key] for r in runs)
                      for key in ("dice", "hd95", "lr_dice") if runs[0]["arms"][name][key] is not None}
               for name in arms}
    result = {"runs": runs, "over_runs": summary,
              "lead_over_best_of_1_and_1b": spread(r["lead_over_best_of_1_and_1b"] for r in runs),
              "runs_where_arm1_missed_a_label": sum(bool(r["arm1_missed_labels"]) for r in runs)}
    print(f"{'arm':<75} " + "  ".join(f"run {i}" for i in range(len(runs))) + "   mean (std)")
    for name in arms:
        values = [r["arms"][name]["dice"] for r in runs]
        s = summary[name]["dice"]
        print(f"{name[:75]:<75} " + "  ".join(f"{v:.3f}" for v in values) + f"   {s['mean']:.3f} ({s['std']:.3f})")
    lead = result["lead_over_best_of_1_and_1b"]
    print("REHRSeg's lead over the better of 1 and 1b: "
          + ", ".join(f"{100 * r['lead_over_best_of_1_and_1b']:+.1f}" for r in runs)
          + f" points; mean {100 * lead['mean']:+.1f} (std {100 * lead['std']:.1f})")
    for i, r in enumerate(runs):
        print(f"run {i}: arm 1 validation Dice per label "
              + ", ".join(f"{k} {v:.3f}" for k, v in r["arm1_validation_dice_per_label"].items())
              + f"; missed: {r['arm1_missed_labels'] or 'none'}; {r['total_minutes']:.1f} min")
    if args.o:
        args.o.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
