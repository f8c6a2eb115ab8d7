"""How much the self-SR's class probabilities say about the HR truth beyond the labels stage 1 writes: the question
behind soft pseudo-HR targets for the HR head (training toward probabilities instead of their argmax).

A target distribution is scored by the truth's mean negative log-likelihood under it (what cross-entropy toward it
rewards), its Brier score and its soft Dice per class. The written (hard) labels are given their best label smoothing
against the truth, an oracle choice that favours them; the soft targets are the class probabilities stage 1 writes
beside its labels (`label_sources.written_targets`: the self-SR's with the volume calibration's per-class offsets
applied, or interpolation's, voxel by voxel as the labels were made), alone and blended with the written labels as
the trainer blends them.
"""
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
