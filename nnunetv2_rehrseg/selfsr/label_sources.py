"""Where stage 1's written pseudo-HR labels come from, label by label, decided without HR truth.

Each label's candidates: the self-SR's class probabilities, shape-based interpolation of the annotation (as
probabilities, `interpolation_probabilities`), or an even blend of the two; each with or without the volume
calibration of `pseudo_labels.volume_calibrated_labels`, and always made consistent with the annotation.

The choice is made on the in-plane self-supervised task, where the annotation is its own truth: each case's LR volume,
made pseudo-isotropic along its thick axis as the self-SR's training pairs are, is degraded along each in-plane axis
with the slice profile (image) and the thick-slice majority (labels); every candidate rebuilds the annotation from that
and is scored per label (Dice pooled over the cases and both axes). The self-SR was trained on such pairs, so its
score there is optimistic: plain interpolation, the safe choice, keeps a label unless another candidate beats it
there by `SAFETY_MARGIN`. The network runs there without test-time flips (a quarter of the time), which if anything
favours interpolation.
"""
import itertools
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from nnunetv2_rehrseg.interpolation import ABSENT, class_distances, interpolate_along
from nnunetv2_rehrseg.selfsr.pairs import DegradedViews, SRCase
from nnunetv2_rehrseg.selfsr.pseudo_labels import volume_calibrated_labels

INTERPOLATION_WEIGHTS = (0.0, 0.5, 1.0)
SAFE = (1.0, False)                # interpolation, volumes as interpolated
SAFETY_MARGIN = 0.005              # Dice on the in-plane task
# the self-SR only (network probabilities, every class volume-calibrated): stage 1's rule before the safeguard
SELFSR_ONLY = "self-sr"
Candidate = Tuple[float, bool]     # (interpolation weight, volume-calibrated)
CANDIDATES: List[Candidate] = list(itertools.product(INTERPOLATION_WEIGHTS, (False, True)))


def candidate_name(candidate: Candidate) -> str:
    weight, calibrated = candidate
    source = {0.0: "self-SR", 1.0: "interpolation"}.get(weight, f"self-SR + {weight:g} x interpolation")
    return f"{source}{', volume-calibrated' if calibrated else ''}"


def interpolation_probabilities(lr_labels: np.ndarray, r: int, spacing: Sequence[float],
                                num_classes: int) -> np.ndarray:
    """Shape-based interpolation of the annotation (Z, Y, X), thick axis first, LR spacing in mm per axis) as class
    probabilities (K, rZ, Y, X): a softmax over the classes' interpolated signed distances in units of the finest
    spacing, so its argmax is `interpolation.shape_based_upsample(..., mode="3d")` and a voxel one spacing inside a
    boundary is about 3:1 for its side."""
    z, y, x = lr_labels.shape
    scale = float(min(spacing))
    logits = np.full((num_classes, r * z, y, x), -ABSENT / scale, np.float32)
    for value in np.unique(lr_labels):
        distances = class_distances(lr_labels, 0, int(value), spacing, "3d")
        logits[int(value)] = -interpolate_along(distances, 0, r) / scale
    logits -= logits.max(0, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(0, keepdims=True)
    return logits


@dataclass
class LabelSources:
    """Per class (index = label value): the interpolation's weight in the blend and whether its volume is
    calibrated; `scores`: per label, each candidate's Dice on the in-plane task; `chosen`: per label, its name."""
    interpolation_weight: List[float]
    calibrate: List[bool]
    scores: Dict[str, Dict[str, float]] = field(default_factory=dict)
    chosen: Dict[str, str] = field(default_factory=dict)

    @classmethod
    def uniform(cls, candidate: Candidate, num_classes: int) -> "LabelSources":
        return cls([candidate[0]] * num_classes, [candidate[1]] * num_classes)

    @classmethod
    def selfsr_only(cls, num_classes: int) -> "LabelSources":
        return cls.uniform((0.0, True), num_classes)

    @classmethod
    def from_dict(cls, d: dict) -> "LabelSources":
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def written_labels(selfsr_probabilities: np.ndarray, interpolated: Optional[np.ndarray], lr_labels: np.ndarray, r: int,
                   sources: LabelSources, implied_axes: Sequence[int] = (1, 2)) -> Tuple[np.ndarray, dict]:
    """The labels stage 1 writes (rZ, Y, X): per class the blend `sources` names, consistent with the annotation and
    volume-calibrated where it says so (`volume_calibrated_labels`); returns them and its record. `interpolated`
    (`interpolation_probabilities`) may be None where every class takes the self-SR alone."""
    weight = np.asarray(sources.interpolation_weight, np.float32)[:, None, None, None]
    if np.all(weight == 0):
        blend = selfsr_probabilities
    elif np.all(weight == 1):
        blend = interpolated
    else:
        blend = (1 - weight) * selfsr_probabilities + weight * interpolated
        blend /= np.maximum(blend.sum(0, keepdims=True), 1e-12)
    return volume_calibrated_labels(blend, lr_labels, r, calibrate=sources.calibrate, axes=implied_axes)


def _counts(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, 3): per class the overlap, the predicted and the true voxel counts."""
    joint = np.bincount(truth.ravel().astype(np.int64) * num_classes + pred.ravel(),
                        minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    return np.stack([np.diag(joint), joint.sum(0), joint.sum(1)], axis=1).astype(np.float64)


def in_plane_counts(net, case: SRCase, spacing: Sequence[float], r: int, fwhm: float, profile: str,
                    device: torch.device, tta="none", candidates: Iterable[Candidate] = CANDIDATES) -> Dict:
    """Per candidate, (K, 3) overlap / predicted / true counts of the annotation rebuilt on the in-plane task of one
    case (image (C, Z, Y, X) in [0, 1], labels (Z, Y, X), thick axis first, `spacing` its LR spacing in mm), summed
    over both in-plane axes."""
    from nnunetv2_rehrseg.selfsr.inference import super_resolve_volume

    num_classes = net.num_classes
    views = DegradedViews.self_supervised(case, r, fwhm, profile, num_classes)
    view_spacing = [spacing[0] / r, spacing[1], spacing[2]]      # pseudo-isotropic along the thick axis
    totals: Dict[Candidate, np.ndarray] = {}
    for axis in (1, 2):                                          # label axes (image axes + 1)
        if views.hr_labels.shape[axis] < net.window * r:
            continue                                             # too few voxels for windows of degraded slices
        image = np.moveaxis(views.lr_image[axis + 1, 0], axis + 1, 1)
        labels = np.moveaxis(views.lr_labels[axis + 1, 0], axis, 0)
        truth = np.moveaxis(np.take(views.hr_labels, np.arange(r * labels.shape[0]), axis=axis), axis, 0)
        moved_spacing = [view_spacing[axis] * r] + [s for a, s in enumerate(view_spacing) if a != axis]
        probabilities = super_resolve_volume(net, image, labels, device, tta=tta)["probabilities"]
        interpolated = interpolation_probabilities(labels, r, moved_spacing, num_classes)
        for candidate in candidates:
            pred, _ = written_labels(probabilities, interpolated, labels, r,
                                     LabelSources.uniform(candidate, num_classes), implied_axes=(2,))
            totals[candidate] = totals.get(candidate, 0) + _counts(pred, truth, num_classes)
    return totals


def choose_label_sources(counts: Dict[Candidate, np.ndarray], label_values: Sequence[int],
                         margin: float = SAFETY_MARGIN) -> LabelSources:
    """Per label the candidate with the best in-plane Dice (pooled counts), interpolation unless another beats it
    by `margin`; a class without voxels on the task keeps the safe choice."""
    num_classes = next(iter(counts.values())).shape[0]
    weights, calibrate = [SAFE[0]] * num_classes, [SAFE[1]] * num_classes
    scores, chosen = {}, {}
    for value in label_values:
        dice = {c: float(2 * n[value, 0] / n[value, 1:].sum()) if n[value, 1:].sum() else float("nan")
                for c, n in counts.items()}
        best = SAFE
        for candidate, score in dice.items():
            if score > dice.get(best, -1.0) and score >= dice.get(SAFE, -1.0) + margin:
                best = candidate
        weights[value], calibrate[value] = best
        scores[str(value)] = {candidate_name(c): round(d, 5) for c, d in dice.items()}
        chosen[str(value)] = candidate_name(best)
    return LabelSources(weights, calibrate, scores, chosen)


def decide_label_sources(net, cases: Sequence[SRCase], spacings: Sequence[Sequence[float]], r: int, fwhm: float,
                         profile: str, label_values: Sequence[int], device: torch.device, tta="none",
                         progress: Optional[object] = None) -> LabelSources:
    """The per-label choice for a dataset: in-plane task counts pooled over its cases (`in_plane_counts`)."""
    pooled: Dict[Candidate, np.ndarray] = {}
    for case, spacing in zip(cases, spacings):
        for candidate, n in in_plane_counts(net, case, spacing, r, fwhm, profile, device, tta).items():
            pooled[candidate] = pooled.get(candidate, 0) + n
        if progress is not None:
            progress.update()
    return choose_label_sources(pooled, label_values)
