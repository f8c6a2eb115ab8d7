"""Stage 1's written labels over seeds and development anatomies: the self-SRs that `benchmarks/selfsr.py` trained
(one folder per anatomy and seed) rescored with this version's label rules, and summarised per anatomy as the mean
over seeds, the seed spread (max - min of the mean label Dice) and each label against shape-based interpolation.

    python benchmarks/label_sources_seeds.py DIR [DIR ...] [-o summary.json] [-device cpu] [-ensemble]

Each DIR is a `benchmarks/selfsr.py -anatomy A -seed S -o DIR` output. Rescoring runs only the UASR model's inference
and the label rules (kept in DIR/label_sources_scores.json: delete it to rescore); the HR truth scores, never the
choice. -ensemble adds, per anatomy, the seeds' networks as one ensemble (label probabilities as a normalised geometric
mean, images averaged): what training several seeds would buy, at that many times the training.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from nnunetv2_rehrseg.demo.anatomy import ANATOMIES
from nnunetv2_rehrseg.selfsr.inference import super_resolve_volume
from nnunetv2_rehrseg.selfsr.pairs import SRCase
from nnunetv2_rehrseg.selfsr.stage1 import intensity_range, to_unit
from nnunetv2_rehrseg.selfsr.training import FINAL, load_network
from nnunetv2_rehrseg.interpolation import shape_based_upsample
from selfsr import development_volume, label_scores, label_source_rows

SHAPE_BASED = "shape-based interpolation of the LR labels (3d)"
WRITTEN = "self-SR UASR, as written (each label's source chosen on the in-plane task)"


class SeedEnsemble(torch.nn.Module):
    """Several self-SR networks as one: mean image, label log-probabilities averaged (their softmax is the normalised
    geometric mean of the members' probabilities)."""

    def __init__(self, members):
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        first = members[0]
        self.num_classes, self.r, self.window, self.centre = first.num_classes, first.r, first.window, first.centre
        self.divisor, self.use_uasr = first.divisor, False

    def forward(self, x):
        outputs = [m(x) for m in self.members]
        return {"image": torch.stack([o["image"].float() for o in outputs]).mean(0),
                "seg": torch.stack([torch.log_softmax(o["seg"].float(), 1) for o in outputs]).mean(0)}


def rescore(folder: Path, device: torch.device, ensemble_of=None) -> dict:
    """One run's label rows; with `ensemble_of` (folders of the same anatomy), the ensemble of their networks."""
    run = json.loads((folder / "selfsr_benchmark.json").read_text())
    anatomy, r = run.get("anatomy", "mni152"), run["config"]["r"]
    names = ANATOMIES[anatomy].labels
    hr, hr_labels, lr, lr_labels, fwhm, _ = development_volume(anatomy, r)
    spacing = ANATOMIES[anatomy].spacing_mm
    case = SRCase(to_unit(lr[None], intensity_range(lr[None])), lr_labels)
    net, config = load_network(folder / "selfsr" / FINAL, device)
    if ensemble_of:
        net = SeedEnsemble([load_network(Path(f) / "selfsr" / FINAL, device)[0] for f in ensemble_of]).eval()
    probabilities = super_resolve_volume(net, case.image, case.labels, device)["probabilities"]
    rows = {SHAPE_BASED: label_scores(shape_based_upsample(lr_labels, 0, r, spacing=(spacing * r, spacing, spacing),
                                                           mode="3d"), hr_labels)}
    label_rows, sources = label_source_rows(net, case, probabilities, hr_labels, r, fwhm, spacing, len(names), device,
                                            lambda labels: {})
    rows.update(label_rows)
    # label keys as JSON writes them, so fresh and cached results read alike
    result = json.loads(json.dumps({"anatomy": anatomy, "seed": config.seed, "names": names, "rows": rows,
                                    "label_sources": sources}))
    if ensemble_of:
        result.update(seed="ensemble", members=[str(f) for f in ensemble_of])
    else:
        (folder / "label_sources_scores.json").write_text(json.dumps(result, indent=1))
    return result


def summarise(results) -> dict:
    summary = {}
    for anatomy in sorted({r["anatomy"] for r in results}):
        runs = [r for r in results if r["anatomy"] == anatomy and r["seed"] != "ensemble"]
        names = {str(v): k for k, v in runs[0]["names"].items() if v}
        methods = {}
        for method in runs[0]["rows"]:
            means = [r["rows"][method]["mean_dice"] for r in runs]
            per_label = {k: float(np.mean([r["rows"][method]["dice"][k] for r in runs])) for k in names}
            methods[method] = {"mean": float(np.mean(means)), "spread": float(np.ptp(means)), "per_label": per_label,
                               "per_seed": means}
        shape = methods[SHAPE_BASED]
        written = methods[WRITTEN]
        per_seed_below = [{names[k]: round(r["rows"][WRITTEN]["dice"][k] - r["rows"][SHAPE_BASED]["dice"][k], 4)
                           for k in names if r["rows"][WRITTEN]["dice"][k] < r["rows"][SHAPE_BASED]["dice"][k]}
                          for r in runs]
        summary[anatomy] = {
            "seeds": [r["seed"] for r in runs], "names": names, "methods": methods,
            "written_minus_shape_based": written["mean"] - shape["mean"],
            "labels_below_shape_based_per_seed": per_seed_below,
            "written_min_lr_dice": min(min(r["rows"][WRITTEN]["lr_dice_of_written"].values()) for r in runs),
            "chosen_per_seed": [r["label_sources"]["chosen"] for r in runs]}
        ensemble = [r for r in results if r["anatomy"] == anatomy and r["seed"] == "ensemble"]
        if ensemble:
            summary[anatomy]["ensemble"] = {"rows": ensemble[0]["rows"], "chosen": ensemble[0]["label_sources"]["chosen"],
                                            "members": ensemble[0]["members"]}
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+")
    parser.add_argument("-o", default=None, help="summary JSON")
    parser.add_argument("-device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("-ensemble", action="store_true", help="also the ensemble of each anatomy's seeds")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    results = []
    for folder in args.folders:
        t = time.time()
        scores = Path(folder) / "label_sources_scores.json"
        results.append(json.loads(scores.read_text()) if scores.is_file() else rescore(Path(folder), device))
        print(f"{folder}: rescored in {time.time() - t:.0f} s", flush=True)
    if args.ensemble:
        for anatomy in sorted({r["anatomy"] for r in results}):
            folders = [f for f, r in zip(args.folders, results) if r["anatomy"] == anatomy]
            if len(folders) > 1:
                results.append(rescore(Path(folders[0]), device, ensemble_of=folders))
    summary = summarise(results)
    for anatomy, s in summary.items():
        names = s["names"]
        print(f"\n{anatomy}, seeds {s['seeds']}: written - shape-based = {100 * s['written_minus_shape_based']:+.2f} "
              f"points; lowest LR Dice of the written labels {s['written_min_lr_dice']:.4f}")
        print("| labels (mean over seeds) | mean Dice | seed spread | " + " | ".join(names.values()) + " |")
        print("|---|---|---|" + "---|" * len(names))
        for method, m in s["methods"].items():
            print(f"| {method} | {m['mean']:.4f} | {100 * m['spread']:.2f} | "
                  + " | ".join(f"{m['per_label'][k]:.3f}" for k in names) + " |")
        print("labels below shape-based, per seed:", s["labels_below_shape_based_per_seed"])
        print("chosen per seed:", s["chosen_per_seed"])
        if "ensemble" in s:
            e = s["ensemble"]["rows"]
            print(f"ensemble of {len(s['ensemble']['members'])} seeds: written {e[WRITTEN]['mean_dice']:.4f} ("
                  + "/".join(f"{e[WRITTEN]['dice'][k]:.3f}" for k in names) + f"), chosen {s['ensemble']['chosen']}")
    if args.o:
        Path(args.o).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
