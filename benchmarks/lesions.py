"""Tumours on thick slices: template subjects with lesions of our own making (oedema, necrotic core, enhancing rim;
two contrasts), annotated as nnU-Net regions (whole tumour > tumour core > enhancing), at per-case slice spacings,
through the public commands.

Subjects: the MNI152 template at 2 mm, deformed per subject (demo.subjects.make_subject), with one to three lesions:
one of 20-40 mm, the others 6-18 mm (so some lie under 1 cm), irregular (a smooth random radius), each with an
enhancing rim of 2-4 mm around a necrotic core (lesions of 15 mm and more; smaller ones enhance throughout) inside
oedema reaching 1.4-2x the lesion's radius, within the brain. Two channels: T1c-like (the template's T1, hypointense
oedema and necrosis, bright enhancement) and FLAIR-like (dark CSF, GM above WM, bright oedema). Thick slices by the
slice profile at each subject's own spacing (training 6 and 8 mm with one sagittal 8 mm series; test 6, 8, 4 (thinner
than any training case), 10 (thicker) mm and sagittal 6 mm, then 6 and 8 mm again).

Arms, every test subject scored on its own HR grid (the HR truth's):
  rehrseg              REHRSeg started from the LR nnU-Net's checkpoint (the recommended protocol)
  rehrseg_scratch      REHRSeg from scratch, the LR nnU-Net's budget
  lr_nnunet_linear     the LR nnU-Net, its sigmoid region probabilities linearly resampled to HR
  lr_nnunet_nearest    its LR labels by nearest neighbour
  lr_nnunet_shape      its LR labels by shape-based interpolation
  hr_upper_bound       stock nnU-Net trained and tested on the HR truth (the same subjects, the same budget)
Metrics per region (whole tumour, tumour core, enhancing): Dice, HD95, volume error; lesion-wise detection of the
tumour core's connected components (found / missed / false positive), lesions under 1 cm (equivalent diameter)
counted apart; the review table's head disagreement of each REHRSeg arm against its per-case Dice (Spearman).
Goal: REHRSeg >= the better LR arm (linear or shape-based) + 3 Dice points on every region of every test subject, and
a volume error at most half the nearest-neighbour arm's.

    python benchmarks/lesions.py -o DIR [-seed 0] [--sparse] [--upper_bound] [--report]
    python benchmarks/lesions.py -o DIR_SPARSE --sparse -stage1_vs_full DIR   # stage 1: sparse vs full annotation

--sparse: the same subjects with every other thick slice of each training annotation ignored (nnU-Net's ignore label);
only the LR nnU-Net and REHRSeg from it are trained, to compare with a full-annotation DIR of the same seed.

DIR is resumable: finished stages are skipped on a rerun.
"""
import argparse
import json
import logging
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from scipy.ndimage import binary_erosion, gaussian_filter
from scipy.ndimage import label as connected_components

from nnunetv2_rehrseg.demo.anatomy import ANATOMIES, LABELS as TISSUE
from nnunetv2_rehrseg.demo.arms import BASELINE_PLANS, DATASET_ID
from nnunetv2_rehrseg.demo.pipeline import resample_to
from nnunetv2_rehrseg.demo.subjects import DemoDataset, crop_to_multiple, make_subject, simulate_lr
from nnunetv2_rehrseg.geometry import Grid, lr_grid, numpy_axis_of
from nnunetv2_rehrseg.inference.review import DISAGREEMENT, REVIEW_FOLDER
from nnunetv2_rehrseg.image_io import read_image, write_image
from mixed_thickness import MixedThicknessPipeline

logger = logging.getLogger(__name__)

SPACING_MM = 2.0
AXIAL, SAGITTAL = 2, 0
TRAIN = [(3, AXIAL), (4, AXIAL), (3, AXIAL), (4, AXIAL), (3, AXIAL), (4, SAGITTAL), (3, AXIAL), (4, AXIAL)]
TEST = [(3, AXIAL), (4, AXIAL), (2, AXIAL), (5, AXIAL), (3, SAGITTAL), (3, AXIAL), (4, AXIAL), (3, AXIAL)]
LESION_LABELS = {"background": 0, "whole tumour": [1, 2, 3], "tumour core": [2, 3], "enhancing": [3]}
REGIONS = {"whole tumour": (1, 2, 3), "tumour core": (2, 3), "enhancing": (3,)}
REGIONS_CLASS_ORDER = [1, 2, 3]        # oedema, necrosis, enhancing: the plain labels the regions are built from
OEDEMA, NECROSIS, ENHANCING = 1, 2, 3
IGNORE = 4
HR_ID = DATASET_ID + 1
SMALL_MM = 10.0
ARMS = {"rehrseg": "REHRSeg (from the LR nnU-Net)", "rehrseg_scratch": "REHRSeg (from scratch)",
        "lr_nnunet_linear": "LR nnU-Net, probabilities linear to HR", "lr_nnunet_nearest": "LR nnU-Net, nearest",
        "lr_nnunet_shape": "LR nnU-Net, shape-based", "hr_upper_bound": "nnU-Net on the HR truth (upper bound)"}
BASELINES = ("lr_nnunet_linear", "lr_nnunet_shape")
SCRATCH_TRAINER = "REHRSegTrainer_fastScratch"
STOCK_PLANNER, STOCK_PLANS = "nnUNetPlannerCPU", "nnUNetPlans_rehrsegCPU"


# ---------------------------------------------------------------------------------------------------- subjects
def _smooth_field(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    field = gaussian_filter(rng.normal(size=shape), sigma)
    return field / (np.abs(field).max() + 1e-12)


def add_lesions(tissue: np.ndarray, rng: np.random.Generator, spacing: float) -> np.ndarray:
    """Lesion labels (0 none, 1 oedema, 2 necrosis, 3 enhancing) inside the brain of a tissue label map."""
    brain = tissue > 0
    inner = binary_erosion(brain, iterations=int(12 / spacing))
    candidates = np.argwhere(inner & (tissue == TISSUE["WM"]))
    labels = np.zeros(tissue.shape, np.uint8)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in tissue.shape], indexing="ij"))
    diameters = [rng.uniform(20, 40)] + list(rng.uniform(6, 18, size=rng.integers(0, 3)))
    for diameter in diameters:
        centre = candidates[rng.integers(len(candidates))]
        stretch = rng.uniform(0.8, 1.25, 3)
        offset = (grid - centre[:, None, None, None]) * spacing / stretch[:, None, None, None]
        distance = np.sqrt((offset ** 2).sum(0))
        radius = diameter / 2
        box = distance < 2.5 * radius
        shape_noise = np.zeros(tissue.shape, np.float32)
        shape_noise[box] = _smooth_field(rng, tissue.shape, max(1.0, radius / spacing / 2))[box]
        lesion = distance < radius * (1 + 0.35 * shape_noise)
        oedema = (distance < radius * rng.uniform(1.4, 2.0) * (1 + 0.5 * shape_noise)) & brain
        labels[oedema & (labels == 0)] = OEDEMA
        labels[lesion] = ENHANCING
        if diameter >= 15:
            rim = rng.uniform(2, 4)
            labels[distance < (radius - rim) * (1 + 0.35 * shape_noise)] = NECROSIS
    return labels


def lesion_contrasts(t1: np.ndarray, tissue: np.ndarray, lesions: np.ndarray, rng: np.random.Generator,
                     spacing: float) -> np.ndarray:
    """(2, z, y, x): T1c-like and FLAIR-like images of a subject (lesion edges softened by half a voxel)."""
    wm = float(np.median(t1[tissue == TISSUE["WM"]]))

    def blend(image, mask, value):
        soft = gaussian_filter(mask.astype(np.float32), 0.6)
        return (1 - soft) * image + soft * value

    t1c = t1.copy()
    t1c = blend(t1c, lesions == OEDEMA, 0.8 * t1)
    t1c = blend(t1c, lesions == ENHANCING, 1.45 * wm)
    t1c = blend(t1c, lesions == NECROSIS, 0.35 * wm)
    levels = np.zeros(max(TISSUE.values()) + 1, np.float32)
    levels[[TISSUE["CSF"], TISSUE["GM"], TISSUE["WM"], TISSUE["ventricles"]]] = [0.12, 0.8, 0.6, 0.05]
    flair = gaussian_filter(levels[tissue] * wm, 0.6 / 1.0)
    flair = flair * (t1 / np.maximum(gaussian_filter(t1, 3.0), 1e-3)) ** 0.3     # the T1's texture
    flair = blend(flair, lesions == OEDEMA, 1.35 * wm)
    flair = blend(flair, lesions == ENHANCING, 1.05 * wm)
    flair = blend(flair, lesions == NECROSIS, 0.9 * wm)
    flair *= np.exp(0.15 * _smooth_field(rng, t1.shape, 30.0 / spacing))
    noise = 0.02 * wm
    return np.stack([t1c + noise * rng.normal(size=t1.shape), flair + noise * rng.normal(size=t1.shape)]
                    ).clip(0, None).astype(np.float32)


def build_lesion_dataset(raw_root: Path, truth_root: Path, seed: int, sparse: bool = False
                         ) -> Tuple[DemoDataset, Dict]:
    """The LR raw dataset (two channels, region labels, each subject at its own r and axis), the test subjects' HR
    truth (labels, images) and the training subjects' HR truth (the upper bound's data). `sparse`: every other thick
    slice of the training annotations is ignored."""
    t1, tissue, grid = ANATOMIES["mni152"].load(SPACING_MM)
    folder = Path(raw_root) / f"Dataset{DATASET_ID:03d}_Lesions"
    train_ids = [f"sub{i:02d}" for i in range(len(TRAIN))]
    test_ids = [f"sub{i:02d}" for i in range(len(TRAIN), len(TRAIN) + len(TEST))]
    plan = dict(zip(train_ids + test_ids, TRAIN + TEST))
    for i, identifier in enumerate(train_ids + test_ids):
        r, axis = plan[identifier]
        rng = np.random.default_rng(seed * 1000 + 500 + i)
        image, subject_tissue = make_subject(t1, tissue, SPACING_MM, seed * 1000 + i)
        lesions = add_lesions(subject_tissue, rng, SPACING_MM)
        channels = lesion_contrasts(image, subject_tissue, lesions, rng, SPACING_MM)
        channels = np.stack([crop_to_multiple(c, numpy_axis_of(axis), r) for c in channels])
        lesions = crop_to_multiple(lesions, numpy_axis_of(axis), r)
        hr = Grid(tuple(lesions.shape[::-1]), grid.spacing, grid.origin, grid.direction)
        lr = lr_grid(hr, axis, r)
        lr_channels = [simulate_lr(channel, lesions, axis, r, num_classes=4)[0] for channel in channels]
        lr_labels = simulate_lr(channels[0], lesions, axis, r, num_classes=4)[1]
        split = "Tr" if identifier in train_ids else "Ts"
        for c, lr_image in enumerate(lr_channels):
            write_image(lr_image, lr, folder / f"images{split}" / f"{identifier}_{c:04d}.nii.gz")
        truth = Path(truth_root) / ("train" if split == "Tr" else "")
        if split == "Tr":
            if sparse:
                lr_labels = lr_labels.copy()
                np.moveaxis(lr_labels, numpy_axis_of(axis), 0)[1::2] = IGNORE
            write_image(lr_labels, lr, folder / "labelsTr" / f"{identifier}.nii.gz")
        else:
            write_image(lr_labels, lr, truth / "lr_labels" / f"{identifier}.nii.gz")
        write_image(lesions, hr, truth / "labels" / f"{identifier}.nii.gz")
        for c, channel in enumerate(channels):
            write_image(channel, hr, truth / "images" / f"{identifier}_{c:04d}.nii.gz")
    labels = {**LESION_LABELS, **({"ignore": IGNORE} if sparse else {})}
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1c", "1": "FLAIR"}, "labels": labels,
        "regions_class_order": REGIONS_CLASS_ORDER, "numTraining": len(train_ids), "file_ending": ".nii.gz",
        "name": "MNI152 subjects with tumours at 6 and 8 mm slices, one sagittal series"}, indent=1))
    return DemoDataset(folder, Path(truth_root), train_ids, test_ids), plan


# ---------------------------------------------------------------------------------------------------- pipeline
class LesionPipeline(MixedThicknessPipeline):
    """The mixed-thickness benchmark's pipeline (per-case geometry, resumable training) on the lesion subjects."""

    def __init__(self, out: Path, seed: int, sparse: bool = False):
        super().__init__(out, "mni152", seed)
        self.sparse = sparse

    def build_data(self):
        marker = self.out / "truth" / "plan.json"
        if marker.is_file():
            self.plan_of = {k: tuple(v) for k, v in json.loads(marker.read_text()).items()}
            folder = next((self.out / "nnUNet_raw").glob(f"Dataset{DATASET_ID:03d}_*"))
            return DemoDataset(folder, self.out / "truth", [k for k in self.plan_of if k < f"sub{len(TRAIN):02d}"],
                               [k for k in self.plan_of if k >= f"sub{len(TRAIN):02d}"])
        data, self.plan_of = build_lesion_dataset(self.out / "nnUNet_raw", self.out / "truth", self.seed, self.sparse)
        marker.write_text(json.dumps(self.plan_of))
        return data

    def upper_bound(self) -> None:
        """Stock nnU-Net on the HR truth of the same training subjects, the same planner budget and steps."""
        from nnunetv2_rehrseg.planners import rehrseg_planner

        folder = self.out / "nnUNet_raw" / f"Dataset{HR_ID:03d}_LesionsHR"
        if not (folder / "dataset.json").is_file():
            truth = self.out / "truth"
            for identifier in self.data.train_ids:
                for c in range(2):
                    source = truth / "train" / "images" / f"{identifier}_{c:04d}.nii.gz"
                    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
                    (folder / "imagesTr" / source.name).write_bytes(source.read_bytes())
                (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
                (folder / "labelsTr" / f"{identifier}.nii.gz").write_bytes(
                    (truth / "train" / "labels" / f"{identifier}.nii.gz").read_bytes())
            for identifier in self.data.test_ids:
                for c in range(2):
                    source = truth / "images" / f"{identifier}_{c:04d}.nii.gz"
                    (folder / "imagesTs").mkdir(parents=True, exist_ok=True)
                    (folder / "imagesTs" / source.name).write_bytes(source.read_bytes())
            dataset_json = json.loads((self.data.raw_folder / "dataset.json").read_text())
            dataset_json["name"] = "the lesion subjects' HR truth"
            (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=1))
        if not (self.out / "nnUNet_preprocessed" / folder.name / f"{STOCK_PLANS}_3d_fullres").is_dir():
            self.run("nnUNetv2_extract_fingerprint", "-d", str(HR_ID), "-np", "2")
            rehrseg_planner.plan_dataset(HR_ID, getattr(rehrseg_planner, STOCK_PLANNER))
            self.run("nnUNetv2_preprocess", "-d", str(HR_ID), "-plans_name", STOCK_PLANS, "-c", "3d_fullres", "-np",
                     "2")
            self.write_splits(HR_ID)
        self.train(self.baseline_trainer, STOCK_PLANS, HR_ID)
        if not (self.out / "predictions" / "hr_upper_bound" / f"{self.data.test_ids[-1]}.nii.gz").is_file():
            self.predict_stock(str(folder / "imagesTs"), "hr_upper_bound", HR_ID, self.baseline_trainer, STOCK_PLANS)

    def predict_arm(self, trainer: str, arm: str) -> None:
        if not (self.out / "predictions" / arm / f"{self.data.test_ids[-1]}.nii.gz").is_file():
            self.predict_rehrseg(trainer, arm)

    def predict_baselines(self) -> None:
        if not (self.out / "predictions" / "lr_nnunet_lr" / f"{self.data.test_ids[-1]}.nii.gz").is_file():
            self.predict_stock(str(self.data.raw_folder / "imagesTs"), "lr_nnunet_lr", DATASET_ID,
                               self.baseline_trainer, BASELINE_PLANS, probabilities=True)
        for identifier in self.data.test_ids:
            self._baseline_to_own_hr_grid(identifier)

    def labels_of_resampled(self, probabilities: np.ndarray, lr: Grid, hr: Grid) -> np.ndarray:
        """Region probabilities linearly resampled to the HR grid, then nnU-Net's rule for region outputs."""
        return regions_to_labels(np.stack([resample_to(p, lr, hr) for p in probabilities]))

    def __call__(self) -> dict:
        self.data = self.timed("build subjects", self.build_data)
        self.timed("stage 1 + planning + preprocessing", self.plan)
        self.timed("train LR nnU-Net", self.train, self.baseline_trainer, BASELINE_PLANS)
        self.timed("train REHRSeg from the LR nnU-Net", self.train_rehrseg)
        self.timed("predict", self._predict_first)
        report(self.out)            # the main comparison as soon as it exists
        if self.sparse:
            return report(self.out)
        self.timed("train REHRSeg from scratch", self.train, SCRATCH_TRAINER, "REHRSegPlans")
        self.timed("predict from scratch", self.predict_arm, SCRATCH_TRAINER, "rehrseg_scratch")
        self.timed("HR upper bound", self.upper_bound)
        timings = self.out / "timings.json"
        previous = json.loads(timings.read_text()) if timings.is_file() else {}
        timings.write_text(json.dumps({**previous, **self.timings}, indent=1))
        return report(self.out)

    def _predict_first(self) -> None:
        self.predict_arm(self.trainer, "rehrseg")
        self.predict_baselines()


def regions_to_labels(region_probabilities: np.ndarray) -> np.ndarray:
    """nnU-Net's rule for region outputs: each region above 0.5 paints its class of regions_class_order, in order."""
    labels = np.zeros(region_probabilities.shape[1:], np.uint8)
    for probability, value in zip(region_probabilities, REGIONS_CLASS_ORDER):
        labels[probability > 0.5] = value
    return labels


# ---------------------------------------------------------------------------------------------------- scoring
def region_scores(truth: np.ndarray, prediction: np.ndarray, spacing_zyx) -> Dict[str, dict]:
    from medpy.metric.binary import hd95

    voxel_ml = float(np.prod(spacing_zyx)) / 1000
    scores = {}
    for name, values in REGIONS.items():
        t, p = np.isin(truth, values), np.isin(prediction, values)
        total = t.sum() + p.sum()
        dice = 2 * np.logical_and(t, p).sum() / total if total else 1.0
        distance = float(hd95(p, t, voxelspacing=spacing_zyx)) if t.any() and p.any() else float("nan")
        volume_true, volume_pred = t.sum() * voxel_ml, p.sum() * voxel_ml
        scores[name] = {"Dice": float(dice), "HD95": distance, "volume_ml": float(volume_pred),
                        "true_volume_ml": float(volume_true),
                        "volume_error": float(abs(volume_pred - volume_true) / volume_true) if volume_true else
                        float("nan")}
    return scores


def lesion_detection(truth: np.ndarray, prediction: np.ndarray, spacing_zyx) -> Dict[str, int]:
    """Tumour-core components (26-connected) of the truth found (any overlap) or missed, split at SMALL_MM equivalent
    diameter; predicted components touching no true core are false positives."""
    structure = np.ones((3, 3, 3), bool)
    t_core, p_core = np.isin(truth, REGIONS["tumour core"]), np.isin(prediction, REGIONS["tumour core"])
    t_components, n_t = connected_components(t_core, structure)
    p_components, n_p = connected_components(p_core, structure)
    voxel = float(np.prod(spacing_zyx))
    counts = {"found": 0, "missed": 0, "found_small": 0, "missed_small": 0, "false_positive": 0}
    for k in range(1, n_t + 1):
        component = t_components == k
        diameter = (6 * component.sum() * voxel / np.pi) ** (1 / 3)
        found = bool(p_core[component].any())
        key = ("found" if found else "missed") + ("_small" if diameter < SMALL_MM else "")
        counts[key] += 1
    for k in range(1, n_p + 1):
        if not t_core[p_components == k].any():
            counts["false_positive"] += 1
    return counts


def spearman(x: List[float], y: List[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic) if len(x) > 2 else float("nan")


def report(out: Path) -> dict:
    """results.json and results.md from the predictions present (arms not predicted yet are left out)."""
    plan_of = {k: tuple(v) for k, v in json.loads((out / "truth" / "plan.json").read_text()).items()}
    test_ids = sorted(k for k in plan_of if k >= f"sub{len(TRAIN):02d}")
    rows, detection = {}, {}
    for arm in ARMS:
        folder = out / "predictions" / arm
        if not all((folder / f"{i}.nii.gz").is_file() for i in test_ids):
            continue
        rows[arm], detection[arm] = {}, {}
        for identifier in test_ids:
            truth, grid = read_image(out / "truth" / "labels" / f"{identifier}.nii.gz")
            prediction, _ = read_image(folder / f"{identifier}.nii.gz")
            spacing = grid.spacing[::-1]
            rows[arm][identifier] = region_scores(truth, prediction, spacing)
            detection[arm][identifier] = lesion_detection(truth, prediction, spacing)
    review = {}
    for arm in ("rehrseg", "rehrseg_scratch"):
        folder = out / "predictions" / arm / REVIEW_FOLDER
        if arm in rows and folder.is_dir():
            disagreement = [json.loads((folder / f"{i}.json").read_text())[DISAGREEMENT] for i in test_ids]
            dice = [float(np.mean([rows[arm][i][n]["Dice"] for n in REGIONS])) for i in test_ids]
            review[arm] = {"spearman_disagreement_vs_dice": spearman(disagreement, dice),
                           "disagreement": dict(zip(test_ids, disagreement)), "mean_dice": dict(zip(test_ids, dice))}
    result = {"test": {i: {"slice_spacing_mm": plan_of[i][0] * SPACING_MM,
                           "plane": "sagittal" if plan_of[i][1] == SAGITTAL else "axial"} for i in test_ids},
              "scores": rows, "detection": detection, "review": review, "goals": goals(rows, test_ids)}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "results.md").write_text(results_markdown(result, test_ids))
    print(results_markdown(result, test_ids))
    return result


def goals(rows: Dict[str, dict], test_ids: List[str]) -> Dict[str, dict]:
    """Per REHRSeg arm: the lead over the better LR arm per subject and region (Dice points), whether >= 3 everywhere,
    and the mean volume error against the nearest-neighbour arm's."""
    if not all(b in rows for b in BASELINES + ("lr_nnunet_nearest",)):
        return {}
    out = {}
    for arm in ("rehrseg", "rehrseg_scratch"):
        if arm not in rows:
            continue
        lead = {i: {n: 100 * (rows[arm][i][n]["Dice"] - max(rows[b][i][n]["Dice"] for b in BASELINES))
                    for n in REGIONS} for i in test_ids}
        volume = {n: float(np.nanmean([rows[arm][i][n]["volume_error"] for i in test_ids])) for n in REGIONS}
        nearest = {n: float(np.nanmean([rows["lr_nnunet_nearest"][i][n]["volume_error"] for i in test_ids]))
                   for n in REGIONS}
        out[arm] = {"lead_points": lead, "min_lead_points": float(min(v for d in lead.values() for v in d.values())),
                    "dice_goal_met": all(v >= 3 for d in lead.values() for v in d.values()),
                    "mean_volume_error": volume, "nearest_mean_volume_error": nearest,
                    "volume_goal_met": all(volume[n] <= 0.5 * nearest[n] for n in REGIONS)}
    return out


def results_markdown(result: dict, test_ids: List[str]) -> str:
    rows, lines = result["scores"], []
    arms = list(rows)
    lines.append("Dice per region (whole tumour / tumour core / enhancing), per test subject:\n")
    lines.append("| subject | slices | " + " | ".join(ARMS[a] for a in arms) + " |")
    lines.append("|---|---|" + "---|" * len(arms))
    for i in test_ids:
        info = result["test"][i]
        cells = [" / ".join(f"{rows[a][i][n]['Dice']:.3f}" for n in REGIONS) for a in arms]
        lines.append(f"| {i} | {info['slice_spacing_mm']:g} mm {info['plane']} | " + " | ".join(cells) + " |")
    lines.append("\nMean over the test subjects: Dice, HD95 (mm), volume error (|V - V_true| / V_true):\n")
    lines.append("| arm | " + " | ".join(f"{n} Dice / HD95 / vol. err." for n in REGIONS) + " |")
    lines.append("|---|" + "---|" * len(REGIONS))
    for a in arms:
        cells = []
        for n in REGIONS:
            values = [rows[a][i][n] for i in test_ids]
            cells.append(f"{np.mean([v['Dice'] for v in values]):.3f} / {np.nanmean([v['HD95'] for v in values]):.1f}"
                         f" / {np.nanmean([v['volume_error'] for v in values]):.2f}")
        lines.append(f"| {ARMS[a]} | " + " | ".join(cells) + " |")
    lines.append("\nLesion-wise detection of the tumour core (all test subjects): found / missed / false positives; "
                 f"lesions under {SMALL_MM:g} mm apart:\n")
    lines.append("| arm | found | missed | found (< 1 cm) | missed (< 1 cm) | false positives |")
    lines.append("|---|---|---|---|---|---|")
    for a in arms:
        total = {k: sum(result["detection"][a][i][k] for i in test_ids) for k in result["detection"][a][test_ids[0]]}
        lines.append(f"| {ARMS[a]} | {total['found']} | {total['missed']} | {total['found_small']} | "
                     f"{total['missed_small']} | {total['false_positive']} |")
    for arm, g in result["goals"].items():
        lines.append(f"\n{ARMS[arm]}: smallest lead over the better LR arm {g['min_lead_points']:+.1f} Dice points "
                     f"(goal +3 on every region of every subject: {'met' if g['dice_goal_met'] else 'NOT met'}); "
                     "mean volume error " + ", ".join(f"{n} {g['mean_volume_error'][n]:.2f} vs nearest "
                                                      f"{g['nearest_mean_volume_error'][n]:.2f}" for n in REGIONS) +
                     f" (goal at most half: {'met' if g['volume_goal_met'] else 'NOT met'})")
    for arm, r in result["review"].items():
        lines.append(f"\nReview table, {ARMS[arm]}: Spearman(head disagreement, mean Dice) = "
                     f"{r['spearman_disagreement_vs_dice']:+.2f} over {len(test_ids)} subjects (negative: the most "
                     f"disagreeing cases are the worst)")
    return "\n".join(lines) + "\n"


def sparse_stage1_scores(full: Path, sparse: Path) -> dict:
    """Stage 1's pseudo-HR labels of a full and a --sparse run (same seed) against the training subjects' HR truth,
    Dice per region on the voxels the sparse annotation labels (mean over the subjects)."""
    per_subject = {}
    stage1 = f"nnUNet_preprocessed/Dataset{DATASET_ID:03d}_Lesions/rehrseg/pseudo_hr/labelsTr"
    for identifier in [f"sub{i:02d}" for i in range(len(TRAIN))]:
        truth, _ = read_image(full / "truth" / "train" / "labels" / f"{identifier}.nii.gz")
        labels = {run: read_image(folder / stage1 / f"{identifier}.nii.gz")[0]
                  for run, folder in (("full", full), ("sparse", sparse))}
        annotated = labels["sparse"] != IGNORE
        row = {"annotated_fraction": float(annotated.mean())}
        for name, values in REGIONS.items():
            t = np.isin(truth, values)[annotated]
            for run, array in labels.items():
                p = np.isin(array, values)[annotated]
                row[f"{name}/{run}"] = float(2 * (t & p).sum() / max(t.sum() + p.sum(), 1))
        per_subject[identifier] = row
    mean = {k: float(np.mean([r[k] for r in per_subject.values()])) for k in next(iter(per_subject.values()))}
    return {"per_subject": per_subject, "mean": mean}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", required=True, help="output folder (resumable)")
    parser.add_argument("-seed", type=int, default=0)
    parser.add_argument("--sparse", action="store_true", help="every other annotated thick slice ignored")
    parser.add_argument("--upper_bound", action="store_true",
                        help="only the HR upper bound (a second process beside a running full one)")
    parser.add_argument("--report", action="store_true", help="only rewrite results.json/.md from DIR's predictions")
    parser.add_argument("-stage1_vs_full", default=None,
                        help="with --sparse: score DIR's stage-1 labels and those of this full run's DIR against the "
                             "HR truth (DIR/sparse_stage1.json)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    out = Path(args.o)
    out.mkdir(parents=True, exist_ok=True)
    if args.stage1_vs_full:
        scores = sparse_stage1_scores(Path(args.stage1_vs_full), out)
        (out / "sparse_stage1.json").write_text(json.dumps(scores, indent=1))
        print(json.dumps(scores["mean"], indent=1))
        return
    if args.report:
        report(out)
        return
    pipeline = LesionPipeline(out, args.seed, args.sparse)
    if args.upper_bound:
        pipeline.data = pipeline.build_data()
        pipeline.timed("HR upper bound", pipeline.upper_bound)
        report(out)
        return
    pipeline()


if __name__ == "__main__":
    main()
