"""How much the self-SR's class probabilities say about the HR truth beyond the labels stage 1 writes: the question
behind soft pseudo-HR targets for the HR head (training toward probabilities instead of their argmax).

A target distribution is scored by the truth's mean negative log-likelihood under it (what cross-entropy toward it
rewards), its Brier score and its soft Dice per class. The written (hard) labels are given their best label smoothing
against the truth, an oracle choice that favours them; the soft targets are the probabilities with the volume
calibration's per-class offsets applied, as stage 1 applies them before taking the argmax.
"""
from typing import Dict, Sequence

import numpy as np

from nnunetv2_rehrseg.degradation import one_hot

SMOOTHING = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2)


def calibrated_probabilities(probabilities: np.ndarray, offsets: Sequence[float]) -> np.ndarray:
    """softmax(log p + offsets): the distribution whose argmax the volume calibration takes."""
    logits = np.log(np.clip(probabilities, 1e-6, None)) + np.asarray(offsets, np.float64)[:, None, None, None]
    logits -= logits.max(0, keepdims=True)
    p = np.exp(logits)
    return (p / p.sum(0, keepdims=True)).astype(np.float32)


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


def soft_target_scores(probabilities: np.ndarray, offsets: Sequence[float], written: np.ndarray,
                       truth: np.ndarray, labels: Sequence[int]) -> Dict[str, dict]:
    """The written labels at their best smoothing (by NLL) against the calibrated soft probabilities, plus where the
    written labels are wrong: the truth's mean probability under each."""
    k = probabilities.shape[0]
    soft = calibrated_probabilities(probabilities, offsets)
    written_one_hot = one_hot(written, k)
    smoothed = {eps: distribution_scores((1 - eps) * written_one_hot + eps / k, truth, labels) for eps in SMOOTHING}
    best = min(smoothed, key=lambda eps: smoothed[eps]["nll"])
    wrong = written != truth
    p_truth_soft = np.take_along_axis(soft, truth[None].astype(np.int64), 0)[0]
    return {"written labels, best smoothing": {**smoothed[best], "smoothing": best,
                                                "truth_probability_where_wrong": float(best / k)},
            "calibrated probabilities": {**distribution_scores(soft, truth, labels),
                                         "truth_probability_where_wrong": float(p_truth_soft[wrong].mean()),
                                         "wrong_fraction": float(wrong.mean())}}
