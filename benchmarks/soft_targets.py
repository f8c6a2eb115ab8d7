"""How much the self-SR's class probabilities say about the HR truth beyond the labels stage 1 writes: the question
behind soft pseudo-HR targets for the HR head (training toward probabilities instead of their argmax).

A target distribution is scored by the truth's mean negative log-likelihood under it (what cross-entropy toward it
rewards), its Brier score and its soft Dice per class. The written (hard) labels are given their best label smoothing
against the truth, an oracle choice that favours them; the soft targets are the class probabilities stage 1 writes
beside its labels (`label_sources.written_targets`: the self-SR's with the volume calibration's per-class offsets
applied, or interpolation's, voxel by voxel as the labels were made), alone and blended with the written labels as
the trainer blends them.

    python benchmarks/soft_targets.py -stage1 nnUNet_preprocessed/DATASET/rehrseg -truth TRUTH_LABELS [-o JSON]

scores what a stage-1 folder wrote (labels and class probabilities of every training case) against HR truth labels of
the same cases (e.g. a benchmark's DIR/truth/train/labels); the mean over the cases is printed.
"""
import argparse
import json
from pathlib import Path
from typing import Dict, Sequence

import numpy as np

from nnunetv2_rehrseg.degradation import one_hot

SMOOTHING = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
BLENDS = (0.25, 0.5, 0.75)


def distribution_scores(target: np.ndarray, truth: np.ndarray, labels: Sequence[int]) -> dict:
    """target (K, ...) probabilities, truth (...) labels: NLL of the truth, Brier score, soft Dice per label."""
    k = target.shape[0]
    p_truth = np.take_along_axis(target, truth[None].astype(np.int64), 0)[0]
    truth_one_hot = one_hot(truth, k)
    soft_dice = {int(c): float(2 * (target[c] * truth_one_hot[c]).sum() / (target[c].sum() + truth_one_hot[c].sum()))
                 for c in labels}
    return {"nll": float(-np.log(np.clip(p_truth, 1e-6, None)).mean()),
            "brier": float(((target - truth_one_hot) ** 2).sum(0).mean()),
            "soft_dice": soft_dice, "mean_soft_dice": float(np.mean(list(soft_dice.values())))}


def soft_target_scores(soft: np.ndarray, written: np.ndarray, truth: np.ndarray, labels: Sequence[int],
                       blends: Sequence[float] = BLENDS) -> Dict[str, dict]:
    """The written labels at their best smoothing (by NLL), the soft probabilities `soft` (K, ...), and the HR head's
    target at each blend weight a, (1 - a) one_hot(written) + a soft (REHRSegTrainer.soft_target_weight), scored
    against the truth; plus, where the written labels are wrong, the truth's mean probability under each."""
    k = soft.shape[0]
    written_one_hot = one_hot(written, k)
    smoothed = {eps: distribution_scores((1 - eps) * written_one_hot + eps / k, truth, labels) for eps in SMOOTHING}
    best = min(smoothed, key=lambda eps: smoothed[eps]["nll"])
    wrong = written != truth

    def scored(target: np.ndarray) -> dict:
        p_truth = np.take_along_axis(target, truth[None].astype(np.int64), 0)[0]
        return {**distribution_scores(target, truth, labels),
                "truth_probability_where_wrong": float(p_truth[wrong].mean()) if wrong.any() else float("nan")}
    scores = {"written labels, best smoothing": {**smoothed[best], "smoothing": best,
                                                 "truth_probability_where_wrong": float(best / k)},
              "soft probabilities": {**scored(soft), "wrong_fraction": float(wrong.mean())}}
    for a in blends:
        scores[f"blend {a:g} soft + {1 - a:g} written"] = scored((1 - a) * written_one_hot + a * soft)
    return scores


def stage1_folder_scores(stage1_root: Path, truth_folder: Path) -> Dict[str, dict]:
    """soft_target_scores of every case a stage-1 folder wrote (labels + class probabilities) against the truth
    labels of the same name; {target: {score: mean over the cases}} plus the cases' names."""
    import torch

    from nnunetv2_rehrseg.class_probabilities import dequantise, soft_target
    from nnunetv2_rehrseg.image_io import read_image
    from nnunetv2_rehrseg.layout import Stage1Folder

    stage1 = Stage1Folder(Path(stage1_root))
    per_case = {}
    for label_file in sorted(stage1.pseudo_hr_labels.glob("*.nii.gz")):
        identifier = label_file.name[:-len(".nii.gz")]
        written, _ = read_image(label_file)
        truth, _ = read_image(Path(truth_folder) / label_file.name)
        k = int(max(written.max(), truth.max())) + 1
        files = stage1.pseudo_hr_probabilities(identifier, k)
        levels = np.stack([read_image(f)[0] for f in files])
        # as the loader makes its targets: renormalised, the written label where (padding) no mass was stored
        soft = soft_target(dequantise(levels), torch.from_numpy(written[None].astype(np.int64)), k).numpy()
        per_case[identifier] = soft_target_scores(soft, written, truth, list(range(1, k)))
    first = next(iter(per_case.values()))
    mean = {target: {score: float(np.mean([c[target][score] for c in per_case.values()]))
                     for score, value in first[target].items() if isinstance(value, float)}
            for target in first}
    return {"mean_over_cases": mean, "cases": sorted(per_case)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-stage1", required=True, help="a stage-1 folder (nnUNet_preprocessed/<dataset>/rehrseg)")
    parser.add_argument("-truth", required=True, help="folder of HR truth labels named as the training cases")
    parser.add_argument("-o", default=None, help="JSON to write")
    args = parser.parse_args(argv)
    scores = stage1_folder_scores(Path(args.stage1), Path(args.truth))
    for target, values in scores["mean_over_cases"].items():
        print(f"{target:45s} NLL {values['nll']:.4f}  Brier {values['brier']:.4f}  soft Dice "
              f"{values['mean_soft_dice']:.4f}  truth's probability where the label is wrong "
              f"{values['truth_probability_where_wrong']:.3f}")
    if args.o:
        Path(args.o).write_text(json.dumps(scores, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
