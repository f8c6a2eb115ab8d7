"""The demo: REHRSeg on MNI152-derived subjects with simulated thick slices, against the LR nnU-Net baseline
(arm 1) and the label round-trip oracle (arm 2), through the public commands, with a report.

DIR/
  nnUNet_raw, nnUNet_preprocessed, nnUNet_results   a self-contained nnU-Net tree (dataset 700)
  truth/                                            HR images and labels of the test subjects (scoring only);
                                                    truth/train: the training subjects' (validation fold scores:
                                                    benchmarks/validation_fold.py)
  predictions/<arm>/                                HR segmentations of the test subjects per arm
  report.md, results.csv, results.png, montage_<subject>.png, metrics_<arm>.json, timings.json
"""
import json
import logging
import resource
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import SimpleITK as sitk

from nnunetv2_rehrseg.tools.commands import nnunet_tree, run_command
from nnunetv2_rehrseg.demo.arms import ARMS, BASELINE_PLANS, DATASET_ID, REHRSEG_FROM_BASELINE
from nnunetv2_rehrseg.demo.report import missed_labels, write_report
from nnunetv2_rehrseg.demo.subjects import build_demo_dataset
from nnunetv2_rehrseg.evaluation import evaluate_folders, write_metrics
from nnunetv2_rehrseg.geometry import Grid, hr_grid
from nnunetv2_rehrseg.image_io import read_image, write_image

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoPreset:
    spacing_mm: float           # HR spacing of the template
    n_train: int
    n_test: int
    planner: str                # -pl of rehrseg_plan_and_preprocess (the LR segmenter's width and patch)
    selfsr_preset: str
    selfsr_iterations: Optional[int]   # None: the self-SR preset's own budget
    trainer: str                # REHRSeg
    baseline_trainer: str       # arm 1 (stock nnU-Net): a budget at which it learns every label
    # REHRSeg starts from arm 1's final checkpoint (-pretrained_weights, the paper's protocol and the documented
    # recommendation for users who have an LR nnU-Net) and trains its own budget on top; False: from scratch
    rehrseg_from_baseline: bool = False


PRESETS = {
    # 2 CPU cores, <= 30 minutes: 16..128 features, arm 1 32 x 50 steps, REHRSeg 16 x 50 on top of it, 300 self-SR
    # iterations
    "fast": DemoPreset(2.0, 6, 2, "REHRSegPlannerCPU", "fast", 300, "REHRSegTrainer_fast",
                       "nnUNetTrainer_rehrsegDemoBaselineBudget", rehrseg_from_baseline=True),
    # a GPU: nnU-Net's default width, 1 mm template, full self-SR preset, 50 epochs x 250 steps per learned arm
    "default": DemoPreset(1.0, 8, 2, "ExperimentPlanner", "default", None, "REHRSegTrainer_50epochs",
                          "nnUNetTrainer_50epochs", rehrseg_from_baseline=True),
}


def resolve_preset(name: Optional[str], device: str, **overrides) -> DemoPreset:
    """The named preset (default: 'default' on CUDA, 'fast' elsewhere) with the given non-None fields replaced."""
    from nnunetv2_rehrseg.device_budget import DEMO_PRESET, default_for

    preset = PRESETS[default_for(name, DEMO_PRESET, device, "-preset", "the demo")]
    return replace(preset, **{k: v for k, v in overrides.items() if v is not None})


def validation_label_dice(fold: Path) -> Dict[str, float]:
    """Dice per label of a trained fold's final validation (nnU-Net's validation/summary.json), in label order."""
    per_label = json.loads((fold / "validation" / "summary.json").read_text())["mean"]
    return {label: float(per_label[label]["Dice"]) for label in sorted(per_label, key=int)}


class Pipeline:
    def __init__(self, out: Path, device: str, r: int, axis: int, preset: DemoPreset, seed: int):
        self.out, self.device, self.r, self.axis, self.preset, self.seed = out, device, r, axis, preset, seed
        self.spacing_mm, self.n_train, self.n_test = preset.spacing_mm, preset.n_train, preset.n_test
        self.trainer, self.baseline_trainer = preset.trainer, preset.baseline_trainer
        self.env = nnunet_tree(out)
        self.timings: Dict[str, float] = {}
        self.peak_rss_gb: Dict[str, float] = {}
        self.command_seconds: Dict[str, float] = {}
        self.current_stage: Optional[str] = None
        self.model_selection: Dict[str, float] = {}
        self.baseline_dice: Dict[str, float] = {}

    def run(self, *command: str) -> float:
        """A public command (see run_command); returns its wall time and records its peak memory against the current
        stage."""
        seconds, peak_gb = run_command(command, self.env)
        stage = self.current_stage or "other"
        self.peak_rss_gb[stage] = max(self.peak_rss_gb.get(stage, 0.0), peak_gb)
        return seconds

    def timed(self, name: str, fn, *args):
        self.current_stage = name
        t = time.time()
        result = fn(*args)
        self.timings[name] = time.time() - t
        self.current_stage = None
        logger.info("%s: %.0f s", name, self.timings[name])
        return result

    # ------------------------------------------------------------------ stages
    def build_data(self):
        return build_demo_dataset(self.out / "nnUNet_raw", self.out / "truth", DATASET_ID, self.n_train, self.n_test,
                                  self.r, self.axis, self.spacing_mm, seed=self.seed, keep_training_truth=True)

    def plan_rehrseg(self, dataset_id: int, *flags: str) -> None:
        """rehrseg_plan_and_preprocess with the preset's planner and self-SR budget, then fold 0's split."""
        iterations = [] if self.preset.selfsr_iterations is None else ["-iterations", str(self.preset.selfsr_iterations)]
        self.run("rehrseg_plan_and_preprocess", "-d", str(dataset_id), "-pl", self.preset.planner, "-np", "2",
                 "-device", self.device, "-preset", self.preset.selfsr_preset, *iterations, *flags)
        self.write_splits(dataset_id)

    def write_splits(self, dataset_id: int) -> None:
        """Fold 0 of every dataset of the run: the last training subject validates."""
        from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

        ids = self.data.train_ids
        path = self.out / "nnUNet_preprocessed" / maybe_convert_to_dataset_name(dataset_id) / "splits_final.json"
        path.write_text(json.dumps([{"train": ids[:-1], "val": ids[-1:]}]))

    def plan(self) -> None:
        # arm 1 gets the same LR topology, patch and budget: stock plans derived from ours, stock preprocessing
        self.plan_rehrseg(DATASET_ID, "-stock_lr_plans", BASELINE_PLANS)

    def train(self, trainer: str, plans: str, dataset_id: int = DATASET_ID, *flags: str) -> None:
        """rehrseg_train on fold 0; a run interrupted after one of its checkpoints continues from it (nnU-Net's --c,
        which replaces -pretrained_weights: the weights are in the checkpoint)."""
        fold = f"nnUNet_results/Dataset{dataset_id:03d}_*/{trainer}__{plans}__3d_fullres/fold_0"
        if any(self.out.glob(f"{fold}/checkpoint_*.pth")):
            flags = ("--c", *_without_option(flags, "-pretrained_weights"))
        # --npz: validation probabilities, so that nnU-Net's model selection can also ensemble the two models
        self.run("rehrseg_train", str(dataset_id), "3d_fullres", "0", "-tr", trainer, "-p", plans,
                 "-device", self.device, "--npz", *flags)

    def baseline_checkpoint(self) -> Path:
        """Arm 1's final checkpoint (fold 0)."""
        return (self.out / "nnUNet_results" / self.data.raw_folder.name /
                f"{self.baseline_trainer}__{BASELINE_PLANS}__3d_fullres" / "fold_0" / "checkpoint_final.pth")

    def baseline_label_dice(self) -> Dict[str, float]:
        """Arm 1's Dice per label on fold 0's validation subject (nnU-Net's validation/summary.json, LR grid): whether
        the baseline learned every label before it is compared."""
        return validation_label_dice(self.baseline_checkpoint().parent)

    def train_rehrseg(self) -> None:
        flags = ("-pretrained_weights", str(self.baseline_checkpoint())) if self.preset.rehrseg_from_baseline else ()
        self.train(self.trainer, "REHRSegPlans", DATASET_ID, *flags)

    def select_models(self) -> Dict[str, float]:
        """nnU-Net's model selection (find_best_configuration, fold 0) over REHRSeg and arm 1: both ranked by the same
        number, the Dice of fold_0/validation (LR-grid output) against the LR labels, and their ensemble. nnU-Net's
        command pairs every -tr with every -p, so two models of different plans go through its API."""
        from nnunetv2.evaluation.find_best_configuration import find_best_configuration

        models = [{"trainer": t, "plans": p, "configuration": "3d_fullres"}
                  for t, p in ((self.trainer, "REHRSegPlans"), (self.baseline_trainer, BASELINE_PLANS))]
        found = find_best_configuration(DATASET_ID, models, folds=(0,), num_processes=2)
        selection = {"all_results": found["all_results"],
                     "best": found["best_model_or_ensemble"]["selected_model_or_models"]}
        (self.out / "model_selection.json").write_text(json.dumps(selection, indent=1))
        return selection["all_results"]

    def arm_names(self) -> Dict[str, str]:
        """The demo's arms and their descriptions (REHRSeg's says where it started)."""
        if not self.preset.rehrseg_from_baseline:
            return dict(ARMS)
        return {**ARMS, "rehrseg": REHRSEG_FROM_BASELINE}

    def predict_rehrseg(self, trainer: str, arm: str, dataset_id: int = DATASET_ID) -> None:
        self.command_seconds[arm] = self.run(
            "rehrseg_predict", "-i", str(self.data.raw_folder / "imagesTs"), "-o", str(self.out / "predictions" / arm),
            "-d", str(dataset_id), "-f", "0", "-tr", trainer, "-device", self.device, "--lr_output")

    def predict_stock(self, images: str, arm: str, dataset_id: int, trainer: str, plans: str,
                      probabilities: bool = False) -> None:
        from nnunetv2_rehrseg.trainer_registration import with_plugin_trainers

        self.env["nnUNet_extTrainer"] = with_plugin_trainers(self.env.get("nnUNet_extTrainer", ""))
        self.command_seconds[arm] = self.run(
            "nnUNetv2_predict", "-i", images, "-o", str(self.out / "predictions" / arm), "-d", str(dataset_id), "-c",
            "3d_fullres", "-f", "0", "-tr", trainer, "-p", plans, "-device", self.device, "-npp", "1", "-nps", "1",
            *(["--save_probabilities"] if probabilities else []))

    def predict(self) -> None:
        self.predict_rehrseg(self.trainer, "rehrseg")
        self.predict_rest()

    def predict_rest(self) -> None:
        """The test subjects' self-SR (montages, arm 4), arm 1 on the LR grid and resampled to HR, arm 2."""
        preds = self.out / "predictions"
        images = str(self.data.raw_folder / "imagesTs")
        self.command_seconds["super_resolve"] = self.run(
            "rehrseg_super_resolve", "-i", images, "-o", str(self.out / "pseudo_hr_test"), "-d", str(DATASET_ID),
            "-device", self.device)
        self.predict_stock(images, "lr_nnunet_lr", DATASET_ID, self.baseline_trainer, BASELINE_PLANS,
                           probabilities=True)
        for identifier in self.data.test_ids:
            self._baseline_to_hr(identifier)
            lr_labels, lr = read_image(self.out / "truth" / "lr_labels" / f"{identifier}.nii.gz")
            hr = hr_grid(lr, self.axis, self.r)
            write_image(upsample_nearest(lr_labels, self.axis, self.r), hr,
                        preds / "label_round_trip" / f"{identifier}.nii.gz")
            write_image(shape_based_to_hr(lr_labels, lr, self.axis, self.r), hr,
                        preds / "label_round_trip_shape" / f"{identifier}.nii.gz")

    def _baseline_to_hr(self, identifier: str) -> None:
        """Arm 1 on the HR grid: softmax linearly interpolated in world coordinates (and labels by nearest)."""
        preds = self.out / "predictions"
        lr_seg = sitk.ReadImage(str(preds / "lr_nnunet_lr" / f"{identifier}.nii.gz"))
        lr = Grid.of(lr_seg)
        hr = hr_grid(lr, self.axis, self.r)
        probabilities = np.load(preds / "lr_nnunet_lr" / f"{identifier}.npz")["probabilities"]
        write_image(argmax_resampled(probabilities, lr, hr), hr, preds / "lr_nnunet_linear" / f"{identifier}.nii.gz")
        reference = hr.apply_to(sitk.Image(list(hr.size), sitk.sitkUInt8))
        nearest = sitk.Resample(lr_seg, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, lr_seg.GetPixelID(),
                                True)
        (preds / "lr_nnunet_nearest").mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(nearest, str(preds / "lr_nnunet_nearest" / f"{identifier}.nii.gz"))
        write_image(shape_based_to_hr(sitk.GetArrayFromImage(lr_seg), lr, self.axis, self.r), hr,
                    preds / "lr_nnunet_shape" / f"{identifier}.nii.gz")

    def evaluate(self) -> Dict[str, dict]:
        results = {}
        for arm in self.arm_names():
            result = evaluate_folders(str(self.out / "truth" / "labels"), str(self.out / "predictions" / arm))
            write_metrics(result, str(self.out / f"metrics_{arm}.json"))
            results[arm] = with_spread(result)
        self.score_lr_outputs(results, {"rehrseg": "rehrseg/lr", "lr_nnunet_linear": "lr_nnunet_lr"},
                              "metrics_{arm}_lr.json")
        return results

    def score_lr_outputs(self, results: Dict[str, dict], lr_folders: Dict[str, str], metrics_name: str) -> None:
        """LR Dice of the arms that ran and have an LR-grid output (prediction folder), against the LR truth; the
        per-label scores go to out/metrics_name.format(arm=...)."""
        for arm, folder in lr_folders.items():
            if arm in results:
                lr_result = evaluate_folders(str(self.out / "truth" / "lr_labels"),
                                             str(self.out / "predictions" / folder))
                write_metrics(lr_result, str(self.out / metrics_name.format(arm=arm)))
                results[arm]["lr_dice"] = lr_result["summary"]["mean"]["Dice"]

    # ------------------------------------------------------------------ everything
    def __call__(self) -> Dict[str, dict]:
        t0 = time.time()
        self.data = self.timed("build subjects", self.build_data)
        self.timed("stage 1 + planning + preprocessing", self.plan)
        self.timed("train LR nnU-Net (arm 1)", self.train, self.baseline_trainer, BASELINE_PLANS)
        self.baseline_dice = self.baseline_label_dice()
        missed = missed_labels(self.baseline_dice)
        if missed:
            logger.warning("arm 1 has not learned label(s) %s (validation Dice %s): the comparison says more about "
                           "this run of the baseline than about REHRSeg", ", ".join(missed),
                           ", ".join(f"{self.baseline_dice[m]:.3f}" for m in missed))
        self.timed("train REHRSeg", self.train_rehrseg)
        self.model_selection = self.timed("model selection (nnUNetv2_find_best_configuration)", self.select_models)
        self.timed("predict test subjects", self.predict)
        results = self.timed("evaluate", self.evaluate)
        self.timings["total"] = time.time() - t0
        peak_gb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024 ** 2
        write_report(self, results, peak_gb)
        return results


def _without_option(flags: tuple, option: str) -> tuple:
    """`flags` without `option` and the value after it."""
    if option not in flags:
        return tuple(flags)
    i = flags.index(option)
    return tuple(flags[:i]) + tuple(flags[i + 2:])


def with_spread(result: dict) -> dict:
    """The summary of an evaluate_folders result with the standard deviation over the cases of the per-case means."""
    cases = result["per_case"].values()
    spread = {m: float(np.nanstd([c["mean"][m] for c in cases])) for m in ("Dice", "HD95", "ASSD")}
    return {**result["summary"], "std": spread}


def resample_to(volume: np.ndarray, source: Grid, target: Grid, interpolator=sitk.sitkLinear) -> np.ndarray:
    """A (z, y, x) volume moved from one grid to another in world coordinates (float32)."""
    reference = target.apply_to(sitk.Image(list(target.size), sitk.sitkUInt8))
    image = source.apply_to(sitk.GetImageFromArray(volume.astype(np.float32)))
    return sitk.GetArrayFromImage(sitk.Resample(image, reference, sitk.Transform(), interpolator, 0.0,
                                                sitk.sitkFloat32, True))


def argmax_resampled(probabilities: np.ndarray, source: Grid, target: Grid) -> np.ndarray:
    """Labels on `target` from per-class maps (K, z, y, x) on `source`: each map linearly resampled, then argmax."""
    return np.argmax(np.stack([resample_to(p, source, target) for p in probabilities]), 0).astype(np.uint8)


def shape_based_to_hr(lr_labels: np.ndarray, lr: Grid, sitk_axis: int, r: int) -> np.ndarray:
    """A (z, y, x) LR label map on the HR grid by shape-based interpolation (3d distances on the anisotropic LR grid:
    the better mode, measured in benchmarks/selfsr.py and tests/test_interpolation.py)."""
    from nnunetv2_rehrseg.geometry import numpy_axis_of
    from nnunetv2_rehrseg.interpolation import shape_based_upsample

    return shape_based_upsample(lr_labels, numpy_axis_of(sitk_axis), r, spacing=lr.spacing[::-1]).astype(np.uint8)


def upsample_nearest(lr_labels: np.ndarray, sitk_axis: int, r: int) -> np.ndarray:
    from nnunetv2_rehrseg.geometry import numpy_axis_of

    return np.repeat(lr_labels, r, axis=numpy_axis_of(sitk_axis)).astype(np.uint8)
