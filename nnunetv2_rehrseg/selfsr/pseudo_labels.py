"""Stage 1's pseudo-HR labels: the self-SR's class probabilities made consistent with the annotation.

Two rules, both pure numpy on (K, rZ, Y, X) probabilities and (Z, Y, X) annotated LR labels (LR axis first, phase 0):
- consistency: the thick-slice majority of the HR labels reproduces the annotated LR label exactly;
- volume calibration: each class's HR volume matches the volume the annotation implies (`implied_hr_volumes`).
  A network that under-predicts a thin class (the demo's CSF, docs/results-stage1.md) is then not
  kept at the minimum the majority allows: per-class offsets on the log-probabilities, found by a few damped
  updates, shift every decision toward the classes it under-predicts before the consistency step.
"""
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from nnunetv2_rehrseg.degradation import majority_labels

GAIN = 2.0   # volumes respond less than proportionally to an offset; measured to converge in a few steps
# bounds of the estimated shrink factor of a class under the thick-slice majority: a class that all but vanishes
# in-plane (smaller than r voxels across) would otherwise be given an unbounded volume
SHRINK_BOUNDS = (0.5, 2.0)


def labels_consistent_with_lr(probabilities: np.ndarray, lr_labels: np.ndarray, r: int) -> np.ndarray:
    """HR labels (rZ, Y, X) whose thick-slice majority reproduces the annotated LR labels (Z, Y, X) exactly.

    Starts from argmax(probabilities) (K, rZ, Y, X); where the majority over a thick slice's r sub-slices disagrees
    with the LR label, the fewest sub-slices needed are switched to the LR label, those most probable for it first.
    Sub-slice detail that agrees with the annotation is kept; labels that contradict it on the very slices the
    annotator drew are not (the LR axis is axis 0, phase 0).
    """
    k, n_hr = probabilities.shape[:2]
    if n_hr != r * lr_labels.shape[0]:
        raise ValueError(f"{n_hr} HR slices do not make {lr_labels.shape[0]} thick slices of r={r}")
    hr = probabilities.argmax(0).astype(lr_labels.dtype)
    columns = hr.reshape(lr_labels.shape[0], r, *lr_labels.shape[1:])          # (Z, r, Y, X)
    target = lr_labels[:, None]
    p_target = np.take_along_axis(probabilities.reshape(k, lr_labels.shape[0], r, *lr_labels.shape[1:]),
                                  target[None].astype(np.int64), 0)[0]        # (Z, r, Y, X)
    order = np.argsort(-p_target, axis=1, kind="stable")                     # most probable sub-slice first
    todo = majority_labels(hr, 0, r, num_classes=k) != lr_labels
    result = columns.copy()
    candidate = columns.copy()
    for n_switched in range(1, r + 1):
        if not todo.any():
            break
        np.put_along_axis(candidate, order[:, n_switched - 1:n_switched], target, axis=1)
        fixed = todo & (majority_labels(candidate.reshape(hr.shape), 0, r, num_classes=k) == lr_labels)
        result = np.where(fixed[:, None], candidate, result)
        todo &= ~fixed
    return result.reshape(hr.shape)


def keep_ignored_ignored(probabilities: np.ndarray, lr_labels: np.ndarray, r: int, ignore_label: int) -> np.ndarray:
    """Probabilities (K, rZ, Y, X) under which the written labels keep the annotator's ignore label exactly where it
    was drawn: every sub-slice of an ignored thick voxel is certain to be ignored (no class the annotator did not draw
    appears there), and no annotated voxel can be turned into the ignore label (its annotation is kept)."""
    ignored = np.repeat(lr_labels == ignore_label, r, axis=0)
    out = probabilities.copy()
    out[ignore_label] = 0
    out /= np.maximum(out.sum(0, keepdims=True), 1e-12)
    out[:, ignored] = 0
    out[ignore_label, ignored] = 1
    return out


def class_volumes(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(labels.ravel().astype(np.int64), minlength=num_classes)[:num_classes].astype(np.float64)


def implied_hr_volumes(lr_labels: np.ndarray, r: int, num_classes: int, axes: Sequence[int] = (1, 2)) -> np.ndarray:
    """Per-class HR voxel counts the annotation (Z, Y, X), LR axis first) implies.

    r x the LR count under-counts what is thin across the thick slices: such a structure loses the majority vote on
    most of them (MNI152 at 2 mm, r = 4: the true CSF volume is 1.26x r x its annotated count, WM 1.22x, GM 0.92x).
    The in-plane axes show how much, the anatomy being alike in every direction: majority-degrading the annotation
    along an in-plane axis (both axes, every phase) shrinks class c by a factor s_c, as the thick axis shrank the
    truth. Estimate: r x LR count / s_c (s_c within SHRINK_BOUNDS), rescaled to the volume's total (MNI152: CSF
    1.07x, GM 0.94x, WM 1.23x). `axes`: the fine axes to read the shrink factors on."""
    counts = class_volumes(lr_labels, num_classes)
    shrink = []
    for axis in axes:
        for phase in range(r):
            degraded = majority_labels(lr_labels, axis, r, phase, num_classes)
            covered = np.take(lr_labels, np.arange(phase, phase + r * degraded.shape[axis]), axis=axis)
            shrink.append(r * class_volumes(degraded, num_classes) / np.maximum(class_volumes(covered, num_classes), 1))
    factor = np.clip(np.mean(shrink, axis=0), *SHRINK_BOUNDS)
    implied = np.where(counts > 0, r * counts / factor, 0.0)
    return implied * (r * counts.sum() / implied.sum())


def volume_calibrated_labels(probabilities: np.ndarray, lr_labels: np.ndarray, r: int, iterations: int = 12,
                             tolerance: float = 0.01, calibrate: Optional[Sequence[bool]] = None,
                             axes: Sequence[int] = (1, 2)) -> Tuple[np.ndarray, Dict[str, list]]:
    """HR labels consistent with the annotation whose per-class volumes match the implied HR volumes
    (`implied_hr_volumes` read on `axes`; within `tolerance`, or as close as `iterations` damped updates get).
    `calibrate`: per class, whether its volume is calibrated (default: all; a class left out keeps offset 0).
    Returns the labels and a record: the offsets, the implied volumes relative to r x the LR counts, and the volume
    ratios HR / implied of the raw argmax, the consistency step alone and the calibrated result."""
    k = probabilities.shape[0]
    target = implied_hr_volumes(lr_labels, r, k, axes)
    annotated = target > 0
    present = annotated if calibrate is None else annotated & np.asarray(calibrate, bool)
    log_p = np.log(np.clip(probabilities, 1e-6, None))

    def labels_for(offsets: np.ndarray) -> np.ndarray:
        shifted = np.exp(log_p + offsets[:, None, None, None])
        return labels_consistent_with_lr(shifted, lr_labels, r)

    def ratios(labels: np.ndarray) -> np.ndarray:
        return np.where(annotated, class_volumes(labels, k) / np.maximum(target, 1), np.nan)

    offsets = np.zeros(k)
    labels = labels_for(offsets)
    record = {"implied_to_lr_count": (target / np.maximum(r * class_volumes(lr_labels, k), 1)).tolist(),
              "raw_argmax": ratios(probabilities.argmax(0)).tolist(), "consistent_only": ratios(labels).tolist()}
    for _ in range(iterations):
        ratio = ratios(labels)
        if np.all(np.abs(ratio[present] - 1) <= tolerance):
            break
        offsets[present] -= GAIN * np.log(np.clip(ratio[present], 1e-3, None))
        labels = labels_for(offsets)
    record.update(calibrated=ratios(labels).tolist(), offsets=offsets.tolist())
    return labels, record
