"""A review table of a prediction folder: per case, the HR volume of each label (or region) and how much the
network's two heads disagree, so a team reads the cases most likely to be wrong first.

The disagreement figure: the LR head segments the thick slices directly, the HR head segments the thin grid; where both
are right, the HR segmentation's thick-slice majority (the annotator's rule) equals the LR head's segmentation. Where
they differ, one of them is wrong, and it is the structures that thick slices blur (small, thin, partial-volume ones)
where they differ most. Figure = 1 - the mean over foreground labels (or regions) present in either of Dice(LR head,
HR head's thick-slice majority), computed on the model's grid before export (no resampling in between).

Each written case leaves `review/<case>.json` beside its segmentation (a run split over parts or continued keeps every
part's); `write_review_summary` gathers them into `review_summary.csv` and `.json`, the most disagreeing case first.
"""
import csv
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from nnunetv2_rehrseg.degradation import majority_labels

REVIEW_FOLDER = "review"
SUMMARY_STEM = "review_summary"
DISAGREEMENT = "head_disagreement"


def label_masks(segmentation: np.ndarray, label_dict: dict) -> List[Tuple[str, np.ndarray]]:
    """(name, mask) per foreground label or region of dataset.json's `labels` (a region: any of its labels)."""
    return [(name, np.isin(segmentation, [int(v) for v in np.atleast_1d(value)]))
            for name, value in label_dict.items() if name not in ("background", "ignore")]


def head_disagreement(lr_segmentation: np.ndarray, hr_segmentation: np.ndarray, r: int, label_manager) -> float:
    """1 - mean Dice(LR head, the HR head's thick-slice majority) over the foreground labels (regions) present in
    either; 0 when neither holds any. Arrays on the model's grids, thick axis first (HR: r x the LR slices)."""
    values = list(label_manager.all_labels)
    back = majority_labels(np.asarray(hr_segmentation), 0, r, num_classes=int(max(values)) + 1)
    lr = np.asarray(lr_segmentation)[:back.shape[0]]
    scores = []
    for (_, a), (_, b) in zip(label_masks(lr, label_manager.label_dict), label_masks(back, label_manager.label_dict)):
        total = a.sum() + b.sum()
        if total:
            scores.append(2 * np.logical_and(a, b).sum() / total)
    return float(1 - np.mean(scores)) if scores else 0.0


def case_record(identifier: str, hr_file: Path, disagreement: float, label_manager) -> dict:
    """The review record of one written case: its HR volumes (ml, from the written file's own spacing)."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(hr_file))
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    segmentation = sitk.GetArrayViewFromImage(image)
    volumes = {name: round(float(mask.sum()) * voxel_ml, 4) for name, mask in
               label_masks(segmentation, label_manager.label_dict)}
    return {"case": identifier, DISAGREEMENT: round(disagreement, 5), "volumes_ml": volumes}


def write_case_record(record: dict, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{record['case']}.json").write_text(json.dumps(record, indent=1))


def write_review_summary(output_folder: Path, cases: Optional[Sequence[str]] = None) -> Optional[Path]:
    """review_summary.csv/.json of the records in OUTPUT/review/ (only `cases`, if given), the most disagreeing case
    first; None when there are no records."""
    folder = Path(output_folder) / REVIEW_FOLDER
    records: Dict[str, dict] = {}
    for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        record = json.loads(f.read_text())
        if cases is None or record["case"] in cases:
            records[record["case"]] = record
    if not records:
        return None
    ordered = sorted(records.values(), key=lambda rec: -rec[DISAGREEMENT])
    names = list(dict.fromkeys(name for rec in ordered for name in rec["volumes_ml"]))
    csv_file = Path(output_folder) / f"{SUMMARY_STEM}.csv"
    with open(csv_file, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case", DISAGREEMENT, *[f"volume_ml_{n}" for n in names]])
        for rec in ordered:
            writer.writerow([rec["case"], rec[DISAGREEMENT], *[rec["volumes_ml"].get(n, "") for n in names]])
    (Path(output_folder) / f"{SUMMARY_STEM}.json").write_text(json.dumps(
        {"order": "most disagreeing first", "cases": ordered}, indent=1))
    return csv_file
