"""Segmentation metrics in millimetres: Dice, HD95 and ASSD per label (surface distances by MedPy, spacing-aware).

Conventions for empty masks: Dice is 1 when reference and prediction are both empty (0 when only one is); HD95 and
ASSD are undefined when either is empty and reported as NaN, with the number of such (case, label) pairs counted
in the summary; means skip NaN.
"""
import csv
import json
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk
from medpy.metric.binary import assd, hd95

from nnunetv2_rehrseg.errors import InputError
from nnunetv2_rehrseg.image_io import read_image
from nnunetv2_rehrseg.raw_dataset import grids_match

logger = logging.getLogger(__name__)
METRICS = ("Dice", "HD95", "ASSD")


def label_metrics(reference: np.ndarray, prediction: np.ndarray, spacing_zyx: Sequence[float]) -> Dict[str, float]:
    """Metrics of two boolean masks (z, y, x) with voxel spacing in mm (same order)."""
    ref, pred = reference.astype(bool), prediction.astype(bool)
    n_ref, n_pred = int(ref.sum()), int(pred.sum())
    if n_ref == 0 and n_pred == 0:
        return {"Dice": 1.0, "HD95": float("nan"), "ASSD": float("nan")}
    dice = 2.0 * np.logical_and(ref, pred).sum() / (n_ref + n_pred)
    if n_ref == 0 or n_pred == 0:
        return {"Dice": float(dice), "HD95": float("nan"), "ASSD": float("nan")}
    return {"Dice": float(dice), "HD95": float(hd95(pred, ref, voxelspacing=spacing_zyx)),
            "ASSD": float(assd(pred, ref, voxelspacing=spacing_zyx))}


def _prediction_on_reference_grid(pred_path: Path, ref_image: sitk.Image, source: str) -> np.ndarray:
    pred_image = sitk.ReadImage(str(pred_path))
    logger.warning("%s: prediction grid differs from the reference; resampled onto it (nearest neighbour)", source)
    return sitk.GetArrayFromImage(sitk.Resample(pred_image, ref_image, sitk.Transform(), sitk.sitkNearestNeighbor, 0))


def evaluate_folders(reference_folder: str, prediction_folder: str,
                     labels: Optional[List[Union[int, Tuple[int, ...]]]] = None, file_ending: str = ".nii.gz",
                     chill: bool = False) -> dict:
    """labels: label values, or regions (tuples of values, scored as their union and keyed as nnU-Net keys them,
    "(1, 2)"); default every non-zero value found. chill: score only the references that have a prediction (as
    nnU-Net's -chill), instead of refusing."""
    ref_folder, pred_folder = Path(reference_folder), Path(prediction_folder)
    for folder, flag in ((ref_folder, "-ref"), (pred_folder, "-pred")):
        if not folder.is_dir():
            raise InputError(f"{folder}: folder not found; check {flag}")
    references = sorted(ref_folder.glob(f"*{file_ending}"))
    if not references:
        raise InputError(f"{ref_folder}: no *{file_ending} reference segmentations")
    missing = [r.name for r in references if not (pred_folder / r.name).is_file()]
    if missing and chill:
        references = [r for r in references if r.name not in missing]
    if missing and (not chill or not references):
        raise InputError(f"{pred_folder / missing[0]}: prediction missing for {len(missing)} reference case(s); "
                         f"predict them, remove them from -ref or pass --chill")
    loaded = {}
    for ref_path in references:
        ref, ref_grid = read_image(str(ref_path))
        pred, pred_grid = read_image(str(pred_folder / ref_path.name))
        if not grids_match(ref_grid, pred_grid):
            pred = _prediction_on_reference_grid(pred_folder / ref_path.name, sitk.ReadImage(str(ref_path)),
                                                 str(pred_folder / ref_path.name))
        loaded[ref_path.name[:-len(file_ending)]] = (np.rint(ref).astype(int), np.rint(pred).astype(int),
                                                     tuple(ref_grid.spacing[::-1]))
    if labels is None:
        labels = sorted({int(v) for ref, pred, _ in loaded.values() for v in np.union1d(np.unique(ref),
                                                                                         np.unique(pred)) if v != 0})
    per_case = {}
    for case, (ref, pred, spacing) in loaded.items():
        metrics = {str(label): label_metrics(mask_of(ref, label), mask_of(pred, label), spacing) for label in labels}
        metrics["mean"] = {m: _nanmean([v[m] for v in metrics.values()]) for m in METRICS}
        per_case[case] = metrics
    summary = {"labels": labels, "cases": len(per_case),
               "mean_per_label": {str(label): {m: _nanmean([c[str(label)][m] for c in per_case.values()])
                                               for m in METRICS} for label in labels},
               "undefined_surface_distances": int(sum(np.isnan(c[str(label)]["HD95"]) for c in per_case.values()
                                                      for label in labels))}
    summary["mean"] = {m: _nanmean([v[m] for v in summary["mean_per_label"].values()]) for m in METRICS}
    return {"summary": summary, "per_case": per_case}


def mask_of(segmentation: np.ndarray, label: Union[int, Tuple[int, ...]]) -> np.ndarray:
    return np.isin(segmentation, label) if isinstance(label, tuple) else segmentation == label


def regions_of(dataset_json_file: Path) -> Optional[List[Tuple[int, ...]]]:
    """The foreground regions of a region-based model's dataset.json (as rehrseg_predict writes beside its outputs),
    else None."""
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    if not Path(dataset_json_file).is_file():
        return None
    dataset_json = json.loads(Path(dataset_json_file).read_text())
    manager = LabelManager(dataset_json["labels"], dataset_json.get("regions_class_order"))
    if not manager.has_regions:
        return None
    return [tuple(int(v) for v in np.atleast_1d(region)) for region in manager.foreground_regions]


def _nanmean(values) -> float:
    values = np.asarray(values, dtype=float)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def write_metrics(result: dict, json_path: str, csv_path: Optional[str] = None) -> None:
    """JSON (NaN written as null) and a CSV with one row per case and label, atomically."""
    def clean(obj):
        if isinstance(obj, dict):
            return {k: clean(v) for k, v in obj.items()}
        if isinstance(obj, float) and not np.isfinite(obj):
            return None
        return int(obj) if isinstance(obj, np.integer) else obj

    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = json_path.with_name(json_path.name + ".partial")
    tmp.write_text(json.dumps(clean(result), indent=1))
    os.replace(tmp, json_path)
    write_metrics_csv({"": result}, Path(csv_path) if csv_path else json_path.with_suffix(".csv"))


def metric_rows(result: dict):
    """[case, label, Dice, HD95, ASSD] of an evaluate_folders result: every case and label (with the case's mean),
    then the mean of each label over the cases and the overall mean."""
    for case, metrics in result["per_case"].items():
        for label, values in metrics.items():
            yield [case, label, *[values[m] for m in METRICS]]
    for label, values in result["summary"]["mean_per_label"].items():
        yield ["mean", label, *[values[m] for m in METRICS]]
    yield ["mean", "mean", *[result["summary"]["mean"][m] for m in METRICS]]


def write_metrics_csv(results: Dict[str, dict], csv_path: Path) -> None:
    """metric_rows of one or more evaluate_folders results in one CSV, atomically; with an 'arm' column first
    unless the only key is ''."""
    named = list(results) != [""]
    tmp = csv_path.with_name(csv_path.name + ".partial")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*(["arm"] if named else []), "case", "label", *METRICS])
        for arm, result in results.items():
            writer.writerows([*([arm] if named else []), *row] for row in metric_rows(result))
    os.replace(tmp, csv_path)
