"""The demo: REHRSeg on MNI152-derived subjects with simulated thick slices, against the LR nnU-Net baseline
(arm 1) and the label round-trip oracle (arm 2), through the public commands, with a report.

DIR/
  nnUNet_raw, nnUNet_preprocessed, nnUNet_results   a self-contained nnU-Net tree (dataset 700)
  truth/                                            HR images and labels of the test subjects (scoring only)
  predictions/<arm>/                                HR segmentations of the test subjects per arm
  report.md, results.csv, results.png, montage_<subject>.png, metrics_<arm>.json, timings.json
"""
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict

import numpy as np
import SimpleITK as sitk

from nnunetv2_rehrseg.demo.subjects import build_demo_dataset
from nnunetv2_rehrseg.evaluation import evaluate_folders, write_metrics
from nnunetv2_rehrseg.geometry import Grid, hr_grid
from nnunetv2_rehrseg.io import read_image, write_image
from nnunetv2_rehrseg.plans import load_dataset_plans, stock_lr_plans

logger = logging.getLogger(__name__)
DATASET_ID = 700
BASELINE_PLANS = "nnUNetPlans_rehrsegCPU"
ARMS = {"lr_nnunet_linear": "(1) LR nnU-Net, softmax linearly resampled to HR",
        "lr_nnunet_nearest": "(1) LR nnU-Net, labels nearest-resampled to HR",
        "label_round_trip": "(2) label round-trip oracle (HR truth -> LR -> nearest)",
        "rehrseg": "(5) REHRSeg (this plugin)"}


class Pipeline:
    def __init__(self, out: Path, device: str, r: int, axis: int, spacing_mm: float, n_train: int, n_test: int,
                 selfsr_iterations: int, trainer: str, baseline_trainer: str, seed: int):
        self.out, self.device, self.r, self.axis = out, device, r, axis
        self.spacing_mm, self.n_train, self.n_test, self.seed = spacing_mm, n_train, n_test, seed
        self.selfsr_iterations, self.trainer, self.baseline_trainer = selfsr_iterations, trainer, baseline_trainer
        self.env = dict(os.environ)
        for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            (out / name).mkdir(parents=True, exist_ok=True)
            self.env[name] = os.environ[name] = str(out / name)
        self.timings: Dict[str, float] = {}

    def run(self, *command: str) -> None:
        """A public command, its output streamed to the terminal."""
        logger.info("$ %s", " ".join(command))
        executable = Path(sys.executable).parent / command[0]
        subprocess.run([str(executable), *command[1:]], env=self.env, check=True)

    def timed(self, name: str, fn, *args):
        t = time.time()
        result = fn(*args)
        self.timings[name] = time.time() - t
        logger.info("%s: %.0f s", name, self.timings[name])
        return result

    # ------------------------------------------------------------------ stages
    def build_data(self):
        return build_demo_dataset(self.out / "nnUNet_raw", self.out / "truth", DATASET_ID, self.n_train, self.n_test,
                                  self.r, self.axis, self.spacing_mm, seed=self.seed)

    def plan(self) -> None:
        self.run("rehrseg_plan_and_preprocess", "-d", str(DATASET_ID), "-pl", "REHRSegPlannerCPU", "-np", "2",
                 "-device", self.device, "-iterations", str(self.selfsr_iterations))
        # arm 1 gets the same LR topology, patch and budget: stock plans derived from ours, stock preprocessing
        plans, _ = load_dataset_plans(DATASET_ID)
        baseline = stock_lr_plans(plans)
        baseline["plans_name"] = BASELINE_PLANS
        baseline["configurations"]["3d_fullres"]["data_identifier"] = f"{BASELINE_PLANS}_3d_fullres"
        base = self.out / "nnUNet_preprocessed" / plans["dataset_name"]
        (base / f"{BASELINE_PLANS}.json").write_text(json.dumps(baseline, indent=1))
        self.run("nnUNetv2_preprocess", "-d", str(DATASET_ID), "-plans_name", BASELINE_PLANS, "-c", "3d_fullres",
                 "-np", "2")
        train_ids = sorted(p.name[:-len("_0000.nii.gz")] for p in (self.data.raw_folder / "imagesTr").iterdir())
        (base / "splits_final.json").write_text(json.dumps([{"train": train_ids[:-1], "val": train_ids[-1:]}]))

    def train(self, trainer: str, plans: str) -> None:
        self.run("rehrseg_train", str(DATASET_ID), "3d_fullres", "0", "-tr", trainer, "-p", plans,
                 "-device", self.device)

    def predict(self) -> None:
        preds = self.out / "predictions"
        images = str(self.data.raw_folder / "imagesTs")
        self.run("rehrseg_predict", "-i", images, "-o", str(preds / "rehrseg"), "-d", str(DATASET_ID), "-f", "0",
                 "-tr", self.trainer, "-device", self.device, "--lr_output")
        self.run("rehrseg_super_resolve", "-i", images, "-o", str(self.out / "pseudo_hr_test"), "-d",
                 str(DATASET_ID), "-device", self.device)
        self.env["nnUNet_extTrainer"] = str(Path(__file__).resolve().parent.parent / "nnunet_ext")
        self.run("nnUNetv2_predict", "-i", images, "-o", str(preds / "lr_nnunet_lr"), "-d", str(DATASET_ID), "-c",
                 "3d_fullres", "-f", "0", "-tr", self.baseline_trainer, "-p", BASELINE_PLANS, "-device", self.device,
                 "--save_probabilities", "-npp", "1", "-nps", "1")
        for identifier in self.data.test_ids:
            self._baseline_to_hr(identifier)
            lr_labels, lr = read_image(self.out / "truth" / "lr_labels" / f"{identifier}.nii.gz")
            write_image(_upsample_nearest(lr_labels, self.axis, self.r), hr_grid(lr, self.axis, self.r),
                        preds / "label_round_trip" / f"{identifier}.nii.gz")

    def _baseline_to_hr(self, identifier: str) -> None:
        """Arm 1 on the HR grid: softmax linearly interpolated in world coordinates (and labels by nearest)."""
        preds = self.out / "predictions"
        lr_seg = sitk.ReadImage(str(preds / "lr_nnunet_lr" / f"{identifier}.nii.gz"))
        lr = Grid.of(lr_seg)
        hr = hr_grid(lr, self.axis, self.r)
        reference = hr.apply_to(sitk.Image(list(hr.size), sitk.sitkUInt8))
        probabilities = np.load(preds / "lr_nnunet_lr" / f"{identifier}.npz")["probabilities"]
        resampled = []
        for channel in probabilities:
            image = lr.apply_to(sitk.GetImageFromArray(channel.astype(np.float32)))
            resampled.append(sitk.GetArrayFromImage(sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear,
                                                                  0.0, sitk.sitkFloat32, True)))
        write_image(np.argmax(np.stack(resampled), 0).astype(np.uint8), hr,
                    preds / "lr_nnunet_linear" / f"{identifier}.nii.gz")
        nearest = sitk.Resample(lr_seg, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, lr_seg.GetPixelID(),
                                True)
        (preds / "lr_nnunet_nearest").mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(nearest, str(preds / "lr_nnunet_nearest" / f"{identifier}.nii.gz"))

    def evaluate(self) -> Dict[str, dict]:
        results = {}
        for arm in ARMS:
            result = evaluate_folders(str(self.out / "truth" / "labels"), str(self.out / "predictions" / arm))
            write_metrics(result, str(self.out / f"metrics_{arm}.json"))
            results[arm] = result["summary"]
        for arm, folder in (("rehrseg", "rehrseg/lr"), ("lr_nnunet_linear", "lr_nnunet_lr")):
            lr_result = evaluate_folders(str(self.out / "truth" / "lr_labels"), str(self.out / "predictions" / folder))
            results[arm]["lr_dice"] = lr_result["summary"]["mean"]["Dice"]
        return results

    # ------------------------------------------------------------------ everything
    def __call__(self) -> Dict[str, dict]:
        t0 = time.time()
        self.data = self.timed("build subjects", self.build_data)
        self.timed("stage 1 + planning + preprocessing", self.plan)
        self.timed("train REHRSeg", self.train, self.trainer, "REHRSegPlans")
        self.timed("train LR nnU-Net (arm 1)", self.train, self.baseline_trainer, BASELINE_PLANS)
        self.timed("predict test subjects", self.predict)
        results = self.timed("evaluate", self.evaluate)
        self.timings["total"] = time.time() - t0
        peak_gb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024 ** 2
        from nnunetv2_rehrseg.demo.report import write_report

        write_report(self, results, peak_gb)
        return results


def _upsample_nearest(lr_labels: np.ndarray, sitk_axis: int, r: int) -> np.ndarray:
    from nnunetv2_rehrseg.geometry import numpy_axis_of

    return np.repeat(lr_labels, r, axis=numpy_axis_of(sitk_axis)).astype(np.uint8)


def clean_output(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            from nnunetv2_rehrseg.errors import InputError

            raise InputError(f"{out} is not empty; choose a new -o or pass --overwrite")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
