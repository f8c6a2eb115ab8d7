"""A clinic's thick-slice cohort: training subjects at two slice spacings, one series acquired along another axis, and
test subjects inside and outside the training range (thinner and thicker), through the public commands.

Arms, each scored on every test subject's own HR grid (its slice spacing / its r, the HR truth's grid):
  rehrseg             REHRSeg started from the LR nnU-Net's checkpoint (the demo's protocol)
  rehrseg_scratch     REHRSeg from scratch, the LR nnU-Net's budget
  lr_nnunet_linear    the LR nnU-Net (same topology and budget), softmax linearly resampled to the HR grid
  lr_nnunet_nearest   its LR labels by nearest neighbour
  lr_nnunet_shape     its LR labels by shape-based interpolation
Goal: REHRSeg ahead of the better LR arm on every test subject by >= 2 points of HR Dice.

    python benchmarks/mixed_thickness.py -o DIR [-anatomy mni152] [-seed 0]

DIR holds a self-contained nnU-Net tree, the HR truth, the predictions and results.json / results.md (per subject and
slice spacing: Dice and HD95 of each arm, REHRSeg's lead). A rerun continues where the last one stopped (finished
training is not repeated).
"""
import argparse
import json
import logging
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import SimpleITK as sitk

from nnunetv2_rehrseg.demo.anatomy import ANATOMIES
from nnunetv2_rehrseg.demo.arms import BASELINE_PLANS, DATASET_ID
from nnunetv2_rehrseg.demo.pipeline import PRESETS, Pipeline, argmax_resampled, shape_based_to_hr
from nnunetv2_rehrseg.demo.subjects import DemoDataset, crop_to_multiple, make_subject, simulate_lr
from nnunetv2_rehrseg.evaluation import evaluate_folders, write_metrics
from nnunetv2_rehrseg.geometry import Grid, hr_grid, lr_grid, numpy_axis_of
from nnunetv2_rehrseg.image_io import write_image

logger = logging.getLogger(__name__)

SPACING_MM = 2.0            # the template's (HR) spacing: r = slice spacing / 2 mm
AXIAL, SAGITTAL = 2, 0      # SimpleITK axes of the thick slices
# training: 6 and 8 mm axial series, one 8 mm sagittal series (r, axis)
TRAIN = [(3, AXIAL), (4, AXIAL), (3, AXIAL), (4, AXIAL), (3, AXIAL), (4, SAGITTAL), (3, AXIAL), (4, AXIAL)]
# test: inside the range (6, 8 mm), outside it (4 mm thinner, 10 mm thicker), and a sagittal 6 mm series
TEST = [(3, AXIAL), (4, AXIAL), (2, AXIAL), (5, AXIAL), (3, SAGITTAL)]
ARMS = {"rehrseg": "REHRSeg (started from the LR nnU-Net)", "rehrseg_scratch": "REHRSeg (from scratch)",
        "lr_nnunet_linear": "LR nnU-Net, softmax linear to HR", "lr_nnunet_nearest": "LR nnU-Net, nearest to HR",
        "lr_nnunet_shape": "LR nnU-Net, shape-based to HR"}
SCRATCH_TRAINER = "REHRSegTrainer_fastScratch"
BASELINES = ("lr_nnunet_linear", "lr_nnunet_nearest", "lr_nnunet_shape")


def build_mixed_dataset(raw_root: Path, truth_root: Path, anatomy: str, seed: int) -> Tuple[DemoDataset, Dict]:
    """The LR raw dataset (each subject at its own r and axis) and each test subject's HR truth on its own HR grid;
    returns the dataset and {id: (r, axis)}."""
    source = ANATOMIES[anatomy]
    t1, template_labels, grid = source.load(SPACING_MM)
    folder = Path(raw_root) / f"Dataset{DATASET_ID:03d}_MixedThickness"
    train_ids = [f"sub{i:02d}" for i in range(len(TRAIN))]
    test_ids = [f"sub{i:02d}" for i in range(len(TRAIN), len(TRAIN) + len(TEST))]
    plan = dict(zip(train_ids + test_ids, TRAIN + TEST))
    for i, identifier in enumerate(train_ids + test_ids):
        r, axis = plan[identifier]
        image = crop_to_multiple(t1, numpy_axis_of(axis), r)
        labels = crop_to_multiple(template_labels, numpy_axis_of(axis), r)
        hr = Grid(tuple(image.shape[::-1]), grid.spacing, grid.origin, grid.direction)
        lr = lr_grid(hr, axis, r)
        image, labels = make_subject(image, labels, SPACING_MM, seed * 1000 + i)
        lr_image, lr_labels = simulate_lr(image, labels, axis, r, num_classes=len(source.labels))
        split = "Tr" if identifier in train_ids else "Ts"
        write_image(lr_image, lr, folder / f"images{split}" / f"{identifier}_0000.nii.gz")
        if split == "Tr":
            write_image(lr_labels, lr, folder / "labelsTr" / f"{identifier}.nii.gz")
        else:
            write_image(lr_labels, lr, Path(truth_root) / "lr_labels" / f"{identifier}.nii.gz")
            write_image(labels, hr, Path(truth_root) / "labels" / f"{identifier}.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1"}, "labels": source.labels, "numTraining": len(train_ids),
        "file_ending": ".nii.gz", "name": f"{anatomy} subjects at 6 and 8 mm slices, one sagittal series"}, indent=1))
    return DemoDataset(folder, Path(truth_root), train_ids, test_ids), plan


class MixedThicknessPipeline(Pipeline):
    def __init__(self, out: Path, anatomy: str, seed: int):
        super().__init__(out, "cpu", r=0, axis=AXIAL, preset=PRESETS["fast"], seed=seed)
        self.anatomy = anatomy
        self.plan_of: Dict[str, Tuple[int, int]] = {}
        from research_trainers import with_research_trainers

        self.env["nnUNet_extTrainer"] = with_research_trainers(self.env.get("nnUNet_extTrainer", ""))

    def build_data(self):
        data, self.plan_of = build_mixed_dataset(self.out / "nnUNet_raw", self.out / "truth", self.anatomy, self.seed)
        return data

    def arm_names(self) -> Dict[str, str]:
        return dict(ARMS)

    def plan(self) -> None:
        if (self.out / "nnUNet_preprocessed" / self.data.raw_folder.name / f"{BASELINE_PLANS}_3d_fullres").is_dir():
            return      # a rerun: stage 1, planning and both preprocessings are done
        super().plan()

    def train(self, trainer: str, plans: str, dataset_id: int = DATASET_ID, *flags: str) -> None:
        name = next((self.out / "nnUNet_raw").glob(f"Dataset{dataset_id:03d}_*")).name
        fold = self.out / "nnUNet_results" / name / f"{trainer}__{plans}__3d_fullres" / "fold_0"
        if not (fold / "checkpoint_final.pth").is_file():
            super().train(trainer, plans, dataset_id, *flags)

    def predict(self) -> None:
        self.predict_rehrseg(self.trainer, "rehrseg")
        self.predict_rehrseg(SCRATCH_TRAINER, "rehrseg_scratch")
        self.predict_stock(str(self.data.raw_folder / "imagesTs"), "lr_nnunet_lr", DATASET_ID, self.baseline_trainer,
                           BASELINE_PLANS, probabilities=True)
        for identifier in self.data.test_ids:
            self._baseline_to_own_hr_grid(identifier)

    def _baseline_to_own_hr_grid(self, identifier: str) -> None:
        r, axis = self.plan_of[identifier]
        preds = self.out / "predictions"
        lr_seg = sitk.ReadImage(str(preds / "lr_nnunet_lr" / f"{identifier}.nii.gz"))
        lr = Grid.of(lr_seg)
        hr = hr_grid(lr, axis, r)
        probabilities = np.load(preds / "lr_nnunet_lr" / f"{identifier}.npz")["probabilities"]
        write_image(self.labels_of_resampled(probabilities, lr, hr), hr,
                    preds / "lr_nnunet_linear" / f"{identifier}.nii.gz")
        labels = sitk.GetArrayFromImage(lr_seg)
        write_image(np.repeat(labels, r, axis=numpy_axis_of(axis)).astype(np.uint8), hr,
                    preds / "lr_nnunet_nearest" / f"{identifier}.nii.gz")
        write_image(shape_based_to_hr(labels, lr, axis, r), hr, preds / "lr_nnunet_shape" / f"{identifier}.nii.gz")

    def labels_of_resampled(self, probabilities: np.ndarray, lr: Grid, hr: Grid) -> np.ndarray:
        """The LR nnU-Net's probabilities linearly resampled to the HR grid, then its labels (argmax)."""
        return argmax_resampled(probabilities, lr, hr)

    def evaluate(self) -> Dict[str, dict]:
        results = {}
        for arm in ARMS:
            result = evaluate_folders(str(self.out / "truth" / "labels"), str(self.out / "predictions" / arm))
            write_metrics(result, str(self.out / f"metrics_{arm}.json"))
            results[arm] = result
        return results

    def __call__(self) -> Dict[str, dict]:
        self.data = self.timed("build subjects", self.build_data)
        self.timed("stage 1 + planning + preprocessing", self.plan)
        self.timed("train LR nnU-Net", self.train, self.baseline_trainer, BASELINE_PLANS)
        self.timed("train REHRSeg", self.train_rehrseg)
        self.timed("train REHRSeg from scratch", self.train, SCRATCH_TRAINER, "REHRSegPlans")
        self.timed("predict test subjects", self.predict)
        results = self.timed("evaluate", self.evaluate)
        (self.out / "timings.json").write_text(json.dumps(self.timings, indent=1))
        write_results(self.out, results)
        return results


def write_results(out: Path, results: Dict[str, dict]) -> None:
    """results.json and results.md from the arms' metrics."""
    plan_of = dict(zip([f"sub{i:02d}" for i in range(len(TRAIN) + len(TEST))], TRAIN + TEST))
    test_ids = sorted(results["rehrseg"]["per_case"])
    rows = per_subject_rows(results, plan_of, test_ids)
    (out / "results.json").write_text(json.dumps({"rows": rows, "train": TRAIN, "test": TEST}, indent=1))
    (out / "results.md").write_text(results_table(rows))
    print(results_table(rows))


def per_subject_rows(results: Dict[str, dict], plan_of: Dict[str, Tuple[int, int]], test_ids: List[str]) -> List[dict]:
    trained = {r for r, _ in TRAIN}
    rows = []
    for identifier in test_ids:
        r, axis = plan_of[identifier]
        row = {"subject": identifier, "slice_spacing_mm": r * SPACING_MM, "plane": "sagittal" if axis == SAGITTAL
               else "axial", "in_training_range": min(trained) <= r <= max(trained)}
        for arm, result in results.items():
            case = result["per_case"][identifier]["mean"]
            row[f"{arm}_dice"], row[f"{arm}_hd95"] = case["Dice"], case["HD95"]
        best_baseline = max(row[f"{b}_dice"] for b in BASELINES)
        row["lead_points"] = 100 * (row["rehrseg_dice"] - best_baseline)
        if "rehrseg_scratch_dice" in row:
            row["scratch_lead_points"] = 100 * (row["rehrseg_scratch_dice"] - best_baseline)
        rows.append(row)
    return rows


def results_table(rows: List[dict]) -> str:
    arms = [a for a in ARMS if f"{a}_dice" in rows[0]]
    header = ("| subject | slice spacing | plane | in training range | " +
              " | ".join(f"{ARMS[a]} Dice / HD95" for a in arms) + " | REHRSeg lead (points) |")
    header += " from scratch: lead |"
    lines = [header, "|" + "---|" * (6 + len(arms))]
    for row in rows:
        lines.append(f"| {row['subject']} | {row['slice_spacing_mm']:g} mm | {row['plane']} | "
                     f"{'yes' if row['in_training_range'] else 'no'} | " +
                     " | ".join(f"{row[f'{a}_dice']:.3f} / {row[f'{a}_hd95']:.1f}" for a in arms) +
                     f" | {row['lead_points']:+.1f} | {row.get('scratch_lead_points', float('nan')):+.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", required=True, help="output folder (resumable)")
    parser.add_argument("-anatomy", default="mni152", choices=sorted(ANATOMIES))
    parser.add_argument("-seed", type=int, default=0)
    parser.add_argument("--report", action="store_true", help="only rewrite results.json/.md from DIR's metrics")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    out = Path(args.o)
    out.mkdir(parents=True, exist_ok=True)
    if args.report:
        write_results(out, {arm: json.loads((out / f"metrics_{arm}.json").read_text()) for arm in ARMS
                            if (out / f"metrics_{arm}.json").is_file()})
        return
    MixedThicknessPipeline(out, args.anatomy, args.seed)()


if __name__ == "__main__":
    main()
