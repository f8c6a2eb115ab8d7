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

from nnunetv2_rehrseg.degradation import one_hot
from nnunetv2_rehrseg.interpolation import ABSENT, class_distances, interpolate_along, shape_based_upsample
from nnunetv2_rehrseg.selfsr.pairs import DegradedViews, SRCase, upsample_thick_axis
from nnunetv2_rehrseg.selfsr.pseudo_labels import volume_calibrated_labels

SELFSR, INTERPOLATION = "self-SR", "interpolation"
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
    """The labels (values) whose written labels come from the self-SR (the others: from interpolation); `scores`:
    per label, each source's Dice on the in-plane task; `chosen`: per label, its source."""
    selfsr_labels: List[int]
    scores: Dict[str, Dict[str, float]] = field(default_factory=dict)
    chosen: Dict[str, str] = field(default_factory=dict)

    @classmethod
    def selfsr_only(cls, num_classes: int) -> "LabelSources":
        return cls(list(range(1, num_classes)))

    @classmethod
    def from_dict(cls, d: dict) -> "LabelSources":
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    def needs_interpolation(self, num_classes: int) -> bool:
        """Whether some foreground label takes interpolation (else its probabilities need not be made)."""
        return not set(range(1, num_classes)) <= set(self.selfsr_labels)


def written_labels(selfsr_probabilities: np.ndarray, interpolated: Optional[np.ndarray], lr_labels: np.ndarray, r: int,
                   sources: LabelSources, implied_axes: Sequence[int] = (1, 2),
                   fixed: Sequence[int] = ()) -> Tuple[np.ndarray, dict]:
    """The labels stage 1 writes (rZ, Y, X), consistent with the annotation, and the volume record (`written_targets`
    without the class probabilities)."""
    labels, _, record = written_targets(selfsr_probabilities, interpolated, lr_labels, r, sources, implied_axes, fixed)
    return labels, record


def written_targets(selfsr_probabilities: np.ndarray, interpolated: Optional[np.ndarray], lr_labels: np.ndarray,
                    r: int, sources: LabelSources, implied_axes: Sequence[int] = (1, 2),
                    fixed: Sequence[int] = ()) -> Tuple[np.ndarray, np.ndarray, dict]:
    """What stage 1 writes for the HR head: labels (rZ, Y, X) consistent with the annotation, the class probabilities
    they were decided from (K, rZ, Y, X; the soft pseudo-HR targets) and the volume record of
    `volume_calibrated_labels` (the self-SR's where any label takes it, else interpolation's).

    Two complete label maps are made, each consistent with the annotation: the self-SR's (every class
    volume-calibrated, stage 1's rule for the self-SR) and interpolation's. Wherever either map holds a label that
    takes the self-SR, the self-SR's map is written (so such a label keeps the shape the self-SR gives it, and its
    neighbours yield to it), elsewhere interpolation's; a last consistency step settles the thick slices where the
    two meet. The probabilities are, voxel by voxel, those of the source written there: the self-SR's with the volume
    calibration's per-class offsets applied (the distribution whose argmax the calibration takes), or interpolation's.
    They are not made consistent with the annotation (the labels are): a voxel the consistency step switched keeps
    the doubt its source had. `interpolated` (`interpolation_probabilities`) may be None when every label takes the
    self-SR. `fixed`: classes whose volume is not calibrated (the ignore label, whose voxels are decided by the
    annotation alone)."""
    num_classes = selfsr_probabilities.shape[0]
    calibrate = [c not in fixed for c in range(num_classes)]
    if not sources.needs_interpolation(num_classes) or interpolated is None:
        labels, record = volume_calibrated_labels(selfsr_probabilities, lr_labels, r, axes=implied_axes,
                                                  calibrate=calibrate)
        return labels, offset_probabilities(selfsr_probabilities, record["offsets"]), record
    chosen = np.zeros(num_classes, bool)
    chosen[list(sources.selfsr_labels)] = True
    no_calibration = [False] * num_classes
    interpolation_map, interpolation_record = volume_calibrated_labels(interpolated, lr_labels, r,
                                                                       calibrate=no_calibration, axes=implied_axes)
    if not chosen.any():
        return interpolation_map, interpolated, interpolation_record
    selfsr_map, record = volume_calibrated_labels(selfsr_probabilities, lr_labels, r, axes=implied_axes,
                                                  calibrate=calibrate)
    from_selfsr = chosen[selfsr_map] | chosen[interpolation_map]
    shifted = offset_probabilities(selfsr_probabilities, record["offsets"])
    combined = np.where(from_selfsr, selfsr_map, interpolation_map)
    probabilities = np.where(from_selfsr[None], shifted, interpolated)
    # the consistency step starts from the combined map (its argmax) and switches sub-slices in the order of the
    # probabilities of the map each voxel came from
    merged = 0.5 * probabilities + 0.5 * one_hot(combined, num_classes)
    labels, _ = volume_calibrated_labels(merged, lr_labels, r, calibrate=no_calibration)
    return labels, probabilities, record


def offset_probabilities(probabilities: np.ndarray, offsets: Sequence[float]) -> np.ndarray:
    """softmax(log p + offsets) over the classes (K, ...): the distribution whose argmax the volume calibration
    takes (p clipped at 1e-6, so the exponent stays in range)."""
    shift = np.asarray(offsets, np.float32).reshape(-1, *[1] * (probabilities.ndim - 1))
    shifted = np.exp(np.log(np.clip(probabilities, 1e-6, None)) + shift)
    shifted /= shifted.sum(0, keepdims=True)
    return shifted.astype(np.float32, copy=False)


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
    selfsr_labels, scores, chosen = [], {}, {}
    for value in label_values:
        dice = {source: float(2 * n[value, 0] / n[value, 1:].sum()) if n[value, 1:].sum() else float("nan")
                for source, n in counts.items()}
        source = SELFSR if dice[SELFSR] >= dice[INTERPOLATION] + margin else INTERPOLATION
        if source == SELFSR:
            selfsr_labels.append(int(value))
        scores[str(value)] = {k: round(v, 5) for k, v in dice.items()}
        chosen[str(value)] = source
    return LabelSources(selfsr_labels, scores, chosen)


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
