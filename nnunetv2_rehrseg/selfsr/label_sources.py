"""Where stage 1's written pseudo-HR labels come from, label by label, decided without HR truth.

Two sources per label: the self-SR's class probabilities (volume-calibrated, `pseudo_labels.volume_calibrated_labels`)
or shape-based interpolation of the annotation (`interpolation_probabilities`); either way the written labels are
made consistent with the annotation.

The choice is made on the in-plane self-supervised task, where the annotation is its own truth: each case's LR volume
is made pseudo-isotropic along its thick axis (image: cubic B-spline, as for the self-SR's training pairs; labels:
shape-based interpolation, so the context along that axis is smooth as real anatomy is, not the blocky nearest copy),
then degraded along each in-plane axis with the slice profile (image) and the thick-slice majority (labels). The
self-SR and interpolation each rebuild the annotation from that and are scored per label (Dice pooled over the cases
and both axes). A label takes the self-SR only where it beats interpolation there by `SAFETY_MARGIN`; interpolation,
the safe choice, keeps the rest. The volume calibration is not part of the comparison: the in-plane task's truth is
the annotation itself, whose volumes the thick-slice majority already shrank, so it cannot tell whether restoring
them helps (measured: it ranked the calibration against the HR truth on both development anatomies). The network
runs there without test-time flips (a quarter of the time), which if anything favours interpolation.
"""
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from nnunetv2_rehrseg.interpolation import ABSENT, class_distances, interpolate_along, shape_based_upsample
from nnunetv2_rehrseg.selfsr.pairs import DegradedViews, SRCase, upsample_thick_axis
from nnunetv2_rehrseg.selfsr.pseudo_labels import volume_calibrated_labels

SELFSR, INTERPOLATION = "self-SR", "interpolation"
# (interpolation weight, volume-calibrated) of what each source writes
WRITTEN: Dict[str, Tuple[float, bool]] = {SELFSR: (0.0, True), INTERPOLATION: (1.0, False)}
SAFETY_MARGIN = 0.0025             # Dice on the in-plane task: the self-SR must beat interpolation by a quarter point
SELFSR_ONLY = "self-sr"            # the -label_sources rule that takes the self-SR for every label


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
    """Per class (index = label value): the interpolation's weight in the label probabilities and whether the class
    volume is calibrated; `scores`: per label, each source's Dice on the in-plane task; `chosen`: per label, its
    source."""
    interpolation_weight: List[float]
    calibrate: List[bool]
    scores: Dict[str, Dict[str, float]] = field(default_factory=dict)
    chosen: Dict[str, str] = field(default_factory=dict)

    @classmethod
    def uniform(cls, weight: float, calibrate: bool, num_classes: int) -> "LabelSources":
        return cls([weight] * num_classes, [calibrate] * num_classes)

    @classmethod
    def selfsr_only(cls, num_classes: int) -> "LabelSources":
        return cls.uniform(*WRITTEN[SELFSR], num_classes)

    @classmethod
    def from_dict(cls, d: dict) -> "LabelSources":
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def written_labels(selfsr_probabilities: np.ndarray, interpolated: Optional[np.ndarray], lr_labels: np.ndarray, r: int,
                   sources: LabelSources, implied_axes: Sequence[int] = (1, 2)) -> Tuple[np.ndarray, dict]:
    """The labels stage 1 writes (rZ, Y, X): per class the probabilities `sources` names, consistent with the
    annotation and volume-calibrated where it says so (`volume_calibrated_labels`); returns them and its record.
    `interpolated` (`interpolation_probabilities`) may be None where every class takes the self-SR alone."""
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
                    device: torch.device, tta="none", label_context: str = "shape-based") -> Dict[str, np.ndarray]:
    """Per source, (K, 3) overlap / predicted / true counts of the annotation rebuilt on the in-plane task of one case
    (image (C, Z, Y, X) in [0, 1], labels (Z, Y, X), thick axis first, `spacing` its LR spacing in mm), summed over
    both in-plane axes; both sources made consistent with the degraded annotation, neither volume-calibrated.
    `label_context`: how the labels are made pseudo-isotropic along the thick axis ("shape-based", or "nearest" as
    in the self-SR's training pairs)."""
    from nnunetv2_rehrseg.selfsr.inference import super_resolve_volume

    num_classes = net.num_classes
    if label_context == "nearest":
        views = DegradedViews.self_supervised(case, r, fwhm, profile, num_classes)
    else:
        views = DegradedViews(upsample_thick_axis(case.image, r),
                              shape_based_upsample(case.labels, 0, r, spacing=spacing, mode="3d"), (2, 3), r, fwhm,
                              profile, num_classes)
    view_spacing = [spacing[0] / r, spacing[1], spacing[2]]      # pseudo-isotropic along the thick axis
    totals: Dict[str, np.ndarray] = {}
    for axis in (1, 2):                                          # label axes (image axes + 1)
        if views.hr_labels.shape[axis] < net.window * r:
            continue                                             # too few voxels for windows of degraded slices
        image = np.moveaxis(views.lr_image[axis + 1, 0], axis + 1, 1)
        labels = np.moveaxis(views.lr_labels[axis + 1, 0], axis, 0)
        truth = np.moveaxis(np.take(views.hr_labels, np.arange(r * labels.shape[0]), axis=axis), axis, 0)
        moved_spacing = [view_spacing[axis] * r] + [s for a, s in enumerate(view_spacing) if a != axis]
        probabilities = {SELFSR: super_resolve_volume(net, image, labels, device, tta=tta)["probabilities"],
                         INTERPOLATION: interpolation_probabilities(labels, r, moved_spacing, num_classes)}
        for source, p in probabilities.items():
            pred, _ = volume_calibrated_labels(p, labels, r, calibrate=[False] * num_classes)
            totals[source] = totals.get(source, 0) + _counts(pred, truth, num_classes)
    return totals


def choose_label_sources(counts: Dict[str, np.ndarray], label_values: Sequence[int],
                         margin: float = SAFETY_MARGIN) -> LabelSources:
    """Per label the self-SR where its in-plane Dice (pooled counts) beats interpolation's by `margin`, else
    interpolation (also for a label without voxels on the task)."""
    num_classes = next(iter(counts.values())).shape[0]
    weights, calibrate = [WRITTEN[INTERPOLATION][0]] * num_classes, [WRITTEN[INTERPOLATION][1]] * num_classes
    scores, chosen = {}, {}
    for value in label_values:
        dice = {source: float(2 * n[value, 0] / n[value, 1:].sum()) if n[value, 1:].sum() else float("nan")
                for source, n in counts.items()}
        source = SELFSR if dice[SELFSR] >= dice[INTERPOLATION] + margin else INTERPOLATION
        weights[value], calibrate[value] = WRITTEN[source]
        scores[str(value)] = {k: round(v, 5) for k, v in dice.items()}
        chosen[str(value)] = source
    return LabelSources(weights, calibrate, scores, chosen)


def decide_label_sources(net, cases: Sequence[SRCase], spacings: Sequence[Sequence[float]], r: int, fwhm: float,
                         profile: str, label_values: Sequence[int], device: torch.device,
                         progress: Optional[object] = None, **task) -> LabelSources:
    """The per-label choice for a dataset: in-plane task counts pooled over its cases (`in_plane_counts`, with the
    `task` options)."""
    pooled: Dict[str, np.ndarray] = {}
    for case, spacing in zip(cases, spacings):
        for source, n in in_plane_counts(net, case, spacing, r, fwhm, profile, device, **task).items():
            pooled[source] = pooled.get(source, 0) + n
        if progress is not None:
            progress.update()
    return choose_label_sources(pooled, label_values)
