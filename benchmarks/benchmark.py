"""The side-by-side benchmark: the demo's data and arms (1, 2, 5) plus interpolate-then-segment (3),
SR-then-segment (4), the REHRSeg ablations, the HR upper bound (6) and REHRSeg told the wrong slice profile. Every
learned arm uses the same network width, memory budget of nnU-Net's patch search and iteration budget; the stock
arms are trained by nnU-Net's own trainer and predicted by nnUNetv2_predict.

DIR/ (besides the demo's files)
  nnUNet_raw/Dataset701_MNIInterp, 702_MNIPseudoHR, 703_MNIHR, 704_MNIWrongProfile   the extra arms' datasets
  truth/train/                      HR truth of the training subjects (arm 6 only)
  benchmark_report.md, benchmark_results.csv, benchmark_results.png, benchmark_timings.json
  benchmark_per_subject.csv         every arm, test subject and label (Dice, HD95, ASSD)
  stages/<stage>.json               finished stages: a rerun with the same -o resumes after the last one
"""
import json
import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, Iterable, Optional

import numpy as np
import SimpleITK as sitk

from benchmark_arms import BENCHMARK_ARMS, WRONG_PROFILE
from research_trainers import with_research_trainers
from nnunetv2_rehrseg.demo.arms import ARMS, BASELINE_PLANS, DATASET_ID
from benchmark_report import write_benchmark_report
from convergence import learning_curves
from nnunetv2_rehrseg.demo.pipeline import (PRESETS, DemoPreset, Pipeline, with_spread,
                                            argmax_resampled, resample_to)
from nnunetv2_rehrseg.demo.subjects import build_demo_dataset
from nnunetv2_rehrseg.evaluation import evaluate_folders, write_metrics, write_metrics_csv
from nnunetv2_rehrseg.geometry import hr_grid, numpy_axis_of
from nnunetv2_rehrseg.image_io import read_image, write_image

logger = logging.getLogger(__name__)
INTERP_ID, PSEUDO_HR_ID, HR_ID, WRONG_PROFILE_ID = 701, 702, 703, 704
# the arms that arm 1's stage predicts (the demo's LR-only arms and oracles), and those built on its outputs
ARM_1_OUTPUTS = tuple(arm for arm in ARMS if arm != "rehrseg")
NEEDS_ARM_1 = ("lr_nnunet_mci", "rehrseg_from_lr")


@dataclass(frozen=True)
class BenchmarkPreset:
    demo: DemoPreset
    ablations: Dict[str, str]        # arm -> REHRSeg trainer with the same budget
    from_lr_trainer: str             # arm 5b: REHRSeg started from arm 1's final checkpoint, the same budget again
    stock_planner: str               # nnU-Net planner of the HR-grid arms (same width and memory budget)
    stock_plans: str


# arm -> REHRSeg trainer variant; a preset runs each at its budget (the trainer name's suffix)
ABLATIONS = {"rehrseg_noKD": "REHRSegTrainer_noKD", "rehrseg_noUncertainty": "REHRSegTrainer_noUncertainty",
             "rehrseg_noPseudoData": "REHRSegTrainer_noPseudoData", "rehrseg_paperR5": "REHRSegTrainer_paperR5",
             "rehrseg_noResidualHead": "REHRSegTrainer_noResidualHead",
             "rehrseg_transposedHead": "REHRSegTrainer_transposedHead", "rehrseg_kdEveryStep": "REHRSegTrainer_kdEveryStep"}


def _at_budget(suffix: str) -> Dict[str, str]:
    return {arm: f"{variant}_{suffix}" for arm, variant in ABLATIONS.items()}


BENCHMARK_PRESETS = {
    "fast": BenchmarkPreset(
        # four test subjects (inference is cheap; the protocol asks for >= 4 with mean and std); 1200 self-SR
        # iterations (the stage-1 benchmark's; pseudo-HR labels 0.790 vs 0.779 at the demo's 300); 1500 steps per
        # learned arm (at 1000 the ventricles were learned too late for the curves to level off)
        replace(PRESETS["fast"], n_test=4, selfsr_iterations=1200, trainer="REHRSegTrainer_1500steps",
                baseline_trainer="nnUNetTrainer_rehrseg1500StepsBudget"),
        _at_budget("1500steps"), "REHRSegTrainer_fromLR_1500steps", "nnUNetPlannerCPU", "nnUNetPlans_rehrsegCPU"),
    # the fast preset at twice the steps: at 1500 five of its seven learned arms still rose by 1.3-3.1 points over
    # their last quarter, while 5b, which had seen 3000 steps, levelled off (README); 9-10 hours on 2 cores
    "converged": BenchmarkPreset(
        replace(PRESETS["fast"], n_test=4, selfsr_iterations=1200, trainer="REHRSegTrainer_3000steps",
                baseline_trainer="nnUNetTrainer_rehrseg3000StepsBudget"),
        _at_budget("3000steps"), "REHRSegTrainer_fromLR_3000steps", "nnUNetPlannerCPU", "nnUNetPlans_rehrsegCPU"),
    "default": BenchmarkPreset(
        replace(PRESETS["default"], n_test=4),
        _at_budget("50epochs"), "REHRSegTrainer_fromLR_50epochs", "ExperimentPlanner", "nnUNetPlans"),
}

LR_OUTPUT_ARMS = {"lr_nnunet_linear": "lr_nnunet_lr", **{a: f"{a}/lr" for a in BENCHMARK_ARMS if
                                                         a.startswith("rehrseg")}}
STOCK_HR_ARMS = {"interp_then_segment": INTERP_ID, "sr_then_segment": PSEUDO_HR_ID, "hr_upper_bound": HR_ID}


class Benchmark(Pipeline):
    def __init__(self, out: Path, device: str, r: int, axis: int, preset: BenchmarkPreset, seed: int,
                 arms: Optional[Iterable[str]] = None):
        """arms: run only the stages these arms need (stage 1 always; arm 1 for 1c and 5b); None: every arm."""
        super().__init__(out, device, r, axis, preset.demo, seed)
        self.env["nnUNet_extTrainer"] = with_research_trainers(self.env.get("nnUNet_extTrainer", ""))
        self.benchmark = preset
        self.selected_arms = None if arms is None else set(arms)   # read once: arms may be a one-pass iterable
        unknown = sorted((self.selected_arms or set()) - set(BENCHMARK_ARMS))
        if unknown:
            raise ValueError(f"unknown benchmark arm(s) {unknown}; choose from {sorted(BENCHMARK_ARMS)}")
        (out / "stages").mkdir(exist_ok=True)

    def load_finished_stages(self) -> None:
        for marker in sorted((self.out / "stages").glob("*.json"), key=lambda p: p.stat().st_mtime):
            self._replay(json.loads(marker.read_text()))

    def _replay(self, record: dict) -> None:
        self.timings[record["name"]] = record["seconds"]
        if record["peak_rss_gb"] is not None:
            self.peak_rss_gb[record["name"]] = record["peak_rss_gb"]
        self.command_seconds.update(record["commands"])

    def stage(self, name: str, fn, *args) -> None:
        """Run a stage once: its wall time, peak memory and command times are kept, a rerun skips it."""
        marker = self.out / "stages" / f"{name.replace(' ', '_').replace('/', '_')}.json"
        if marker.is_file():
            record = {"name": name, **json.loads(marker.read_text())}
            logger.info("%s: done before (%.0f s), skipped", name, record["seconds"])
        else:
            commands_before = dict(self.command_seconds)
            self.timed(name, fn, *args)
            record = {"name": name, "seconds": self.timings[name], "peak_rss_gb": self.peak_rss_gb.get(name),
                      "commands": {k: v for k, v in self.command_seconds.items() if commands_before.get(k) != v}}
            tmp = marker.with_suffix(".partial")
            tmp.write_text(json.dumps(record, indent=1))
            tmp.replace(marker)
        self._replay(record)

    # ------------------------------------------------------------------ data of the extra arms
    def build_data(self):
        return build_demo_dataset(self.out / "nnUNet_raw", self.out / "truth", DATASET_ID, self.n_train,
                                  self.n_test, self.r, self.axis, self.spacing_mm, seed=self.seed,
                                  keep_training_truth=True)

    def _write_stock_dataset(self, dataset_id: int, name: str, cases: Dict[str, tuple], tests: Dict[str, tuple]):
        folder = self.out / "nnUNet_raw" / f"Dataset{dataset_id:03d}_{name}"
        for identifier, (image, labels, grid) in cases.items():
            write_image(image, grid, folder / "imagesTr" / f"{identifier}_0000.nii.gz")
            write_image(labels, grid, folder / "labelsTr" / f"{identifier}.nii.gz")
        for identifier, (image, grid) in tests.items():
            write_image(image, grid, folder / "imagesTs" / f"{identifier}_0000.nii.gz")
        dataset_json = json.loads((self.data.raw_folder / "dataset.json").read_text())
        dataset_json.pop("rehrseg", None)
        dataset_json["name"] = name
        (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=1))

    def _lr(self, identifier: str, split: str):
        image, grid = read_image(self.data.raw_folder / f"images{split}" / f"{identifier}_0000.nii.gz")
        return image, grid

    def build_interp_dataset(self) -> None:
        """Arm 3: every LR image B-spline interpolated to the HR grid, labels by linear interpolation of one-hot."""
        cases, tests = {}, {}
        num_classes = len(json.loads((self.data.raw_folder / "dataset.json").read_text())["labels"])
        for identifier in self.data.train_ids:
            image, lr = self._lr(identifier, "Tr")
            labels, _ = read_image(self.data.raw_folder / "labelsTr" / f"{identifier}.nii.gz")
            hr = hr_grid(lr, self.axis, self.r)
            one_hot = np.eye(num_classes, dtype=np.float32)[labels.astype(int)].transpose(3, 0, 1, 2)
            cases[identifier] = (resample_to(image, lr, hr, sitk.sitkBSpline), argmax_resampled(one_hot, lr, hr), hr)
        for identifier in self.data.test_ids:
            image, lr = self._lr(identifier, "Ts")
            hr = hr_grid(lr, self.axis, self.r)
            tests[identifier] = (resample_to(image, lr, hr, sitk.sitkBSpline), hr)
        self._write_stock_dataset(INTERP_ID, "MNIInterp", cases, tests)

    def pseudo_hr_folder(self) -> Path:
        """Stage 1's pseudo-HR images and labels of the training subjects."""
        from nnunetv2_rehrseg.layout import Stage1Folder

        return Stage1Folder.of(self.data.raw_folder.name).pseudo_hr   # the run's nnUNet_preprocessed (nnunet_tree)

    def build_pseudo_hr_dataset(self) -> None:
        """Arm 4: stage 1's pseudo-HR images and labels for training, the self-SR of the test LR images for testing
        (pseudo_hr_test/, written by the demo's prediction stage)."""
        pseudo = self.pseudo_hr_folder()
        cases = {}
        for identifier in self.data.train_ids:
            image, grid = read_image(pseudo / "imagesTr" / f"{identifier}_0000.nii.gz")
            labels, _ = read_image(pseudo / "labelsTr" / f"{identifier}.nii.gz")
            cases[identifier] = (image, labels, grid)
        tests = {i: read_image(self.out / "pseudo_hr_test" / f"{i}_0000.nii.gz") for i in self.data.test_ids}
        self._write_stock_dataset(PSEUDO_HR_ID, "MNIPseudoHR", cases, tests)

    def build_hr_dataset(self) -> None:
        """Arm 6: the true HR images and labels of the same training subjects."""
        truth = self.out / "truth"
        cases = {}
        for identifier in self.data.train_ids:
            image, grid = read_image(truth / "train" / "images" / f"{identifier}.nii.gz")
            labels, _ = read_image(truth / "train" / "labels" / f"{identifier}.nii.gz")
            cases[identifier] = (image, labels, grid)
        tests = {i: read_image(truth / "images" / f"{i}.nii.gz") for i in self.data.test_ids}
        self._write_stock_dataset(HR_ID, "MNIHR", cases, tests)

    def build_wrong_profile_dataset(self) -> None:
        """The same LR data, with dataset.json telling REHRSeg the wrong slice profile."""
        folder = self.out / "nnUNet_raw" / f"Dataset{WRONG_PROFILE_ID:03d}_MNIWrongProfile"
        shutil.copytree(self.data.raw_folder, folder, dirs_exist_ok=True)
        dataset_json = json.loads((folder / "dataset.json").read_text())
        dataset_json["rehrseg"] = {"slice_profile": WRONG_PROFILE}
        (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=1))

    # ------------------------------------------------------------------ stock arms at HR
    def plan_stock(self, dataset_id: int) -> None:
        from nnunetv2_rehrseg.planners import rehrseg_planner

        self.run("nnUNetv2_extract_fingerprint", "-d", str(dataset_id), "-np", "2")
        planner = getattr(rehrseg_planner, self.benchmark.stock_planner, None)
        if planner is None:
            from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
            planner = ExperimentPlanner
        rehrseg_planner.plan_dataset(dataset_id, planner)
        self.run("nnUNetv2_preprocess", "-d", str(dataset_id), "-plans_name", self.benchmark.stock_plans, "-c",
                 "3d_fullres", "-np", "2")
        self.write_splits(dataset_id)

    def stock_hr_arm(self, arm: str, dataset_id: int) -> None:
        self.train(self.baseline_trainer, self.benchmark.stock_plans, dataset_id)
        name = next((self.out / "nnUNet_raw").glob(f"Dataset{dataset_id:03d}_*")).name
        self.predict_stock(str(self.out / "nnUNet_raw" / name / "imagesTs"), arm, dataset_id, self.baseline_trainer,
                           self.benchmark.stock_plans)

    # ------------------------------------------------------------------ REHRSeg arms
    def rehrseg_arm(self, arm: str, trainer: str, dataset_id: int = DATASET_ID, *train_flags: str) -> None:
        self.train(trainer, "REHRSegPlans", dataset_id, *train_flags)
        self.predict_rehrseg(trainer, arm, dataset_id)

    def contour_interpolation_arm(self) -> None:
        """Arm 1c: arm 1's LR segmentation taken to HR by ITK's morphological contour interpolation (skipped, with
        the install command, where the `[benchmark]` extra is missing)."""
        from nnunetv2_rehrseg.interpolation import contour_interpolated_upsample

        preds = self.out / "predictions"
        for identifier in self.data.test_ids:
            labels, lr = read_image(preds / "lr_nnunet_lr" / f"{identifier}.nii.gz")
            try:
                hr_labels = contour_interpolated_upsample(labels, numpy_axis_of(self.axis), self.r)
            except ImportError as e:
                logger.warning("arm 1c skipped: %s", e)
                return
            write_image(hr_labels, hr_grid(lr, self.axis, self.r), preds / "lr_nnunet_mci" / f"{identifier}.nii.gz")

    def rehrseg_from_lr_arm(self) -> None:
        """Arm 5b: nnU-Net's -pretrained_weights with arm 1's final checkpoint (same LR topology; the segmentation
        layers and the HR head start fresh, as nnU-Net's loader skips them)."""
        self.rehrseg_arm("rehrseg_from_lr", self.benchmark.from_lr_trainer, DATASET_ID, "-pretrained_weights",
                         str(self.baseline_checkpoint()))

    def plan_wrong_profile(self) -> None:
        self.build_wrong_profile_dataset()
        self.plan_rehrseg(WRONG_PROFILE_ID)

    # ------------------------------------------------------------------ scoring
    def evaluate(self) -> Dict[str, dict]:
        """Every predicted arm scored on the HR truth (metrics/<arm>.json and .csv; benchmark_per_subject.csv: every
        arm, test subject and label in one table) and, where it has one, its LR output on the LR labels."""
        results, full = {}, {}
        for arm in BENCHMARK_ARMS:
            folder = self.out / "predictions" / arm
            if not all((folder / f"{i}.nii.gz").is_file() for i in self.data.test_ids):
                logger.info("%s: not (fully) predicted yet, left out of the report", arm)
                continue           # --report_only on an unfinished run
            full[arm] = evaluate_folders(str(self.out / "truth" / "labels"), str(self.out / "predictions" / arm))
            write_metrics(full[arm], str(self.out / "metrics" / f"{arm}.json"))
            results[arm] = with_spread(full[arm])
        write_metrics_csv(full, self.out / "benchmark_per_subject.csv")
        self.score_lr_outputs(results, LR_OUTPUT_ARMS, "metrics/{arm}_lr.json")
        return results

    def image_quality(self) -> Dict[str, Dict[str, float]]:
        """PSNR/SSIM against the HR truth image (whole volume, the truth's data range, the input's intensity scale):
        the self-SR output of the test subjects and, for reference, B-spline interpolation."""
        from skimage.metrics import peak_signal_noise_ratio, structural_similarity

        interp = self.out / "nnUNet_raw" / f"Dataset{INTERP_ID:03d}_MNIInterp" / "imagesTs"
        sources = {"self-SR (pseudo-HR)": self.out / "pseudo_hr_test", "B-spline interpolation": interp}
        scores = {name: [] for name in sources}
        for identifier in self.data.test_ids:
            truth, _ = read_image(self.out / "truth" / "images" / f"{identifier}.nii.gz")
            data_range = float(truth.max() - truth.min())
            for name, folder in sources.items():
                path = folder / f"{identifier}_0000.nii.gz"
                if path.is_file():
                    image, _ = read_image(path)
                    scores[name].append((peak_signal_noise_ratio(truth, image, data_range=data_range),
                                         structural_similarity(truth, image, data_range=data_range)))
        return {name: {"PSNR dB": float(np.mean([s[0] for s in v])), "SSIM": float(np.mean([s[1] for s in v]))}
                for name, v in scores.items() if v}

    def pseudo_label_scores(self) -> Dict[str, dict]:
        """Stage 1's pseudo-HR labels of the training subjects against their HR truth, beside nearest and shape-based
        interpolation of the same annotation (empty before stage 1 has run)."""
        from pseudo_label_scores import score_pseudo_hr_labels

        pseudo = self.pseudo_hr_folder() / "labelsTr"
        if not all((pseudo / f"{i}.nii.gz").is_file() for i in self.data.train_ids):
            return {}
        return score_pseudo_hr_labels(self.data.raw_folder, pseudo, self.out / "truth" / "train" / "labels",
                                      self.data.train_ids, self.axis, self.r, self.out / "pseudo_label_scores")

    # ------------------------------------------------------------------ everything
    def __call__(self, report_only: bool = False) -> Dict[str, dict]:
        """All stages (finished ones skipped), then the report; report_only: the report of the finished stages."""
        t0 = time.time()
        self.data = self.build_data()   # deterministic; rewriting it keeps a resumed run's files identical
        if not report_only:
            self.run_stages()
        self.load_finished_stages()     # a run of some -arms reports the whole tree's times, not only its own
        results = self.timed("evaluate", self.evaluate)
        quality = self.image_quality()
        curves = learning_curves(self.out / "nnUNet_results")
        pseudo_labels = self.pseudo_label_scores()
        self.timings["total (this invocation)"] = time.time() - t0
        write_benchmark_report(self, results, quality, curves, pseudo_labels)
        return results

    def run_stages(self) -> None:
        """In the order a partial run is most useful in (--report_only on an unfinished run): REHRSeg, the LR-only
        arms, the HR upper bound and arm 5b first, then the other HR-grid arms, the ablations, the wrong profile.
        With selected arms, only the stages they need."""
        wanted = self.wants
        self.stage("stage 1 + planning + preprocessing", self.plan)
        if wanted("rehrseg"):
            self.stage("train + predict REHRSeg", self.rehrseg_arm, "rehrseg", self.trainer)
        if wanted(*ARM_1_OUTPUTS, *NEEDS_ARM_1):
            self.stage("train LR nnU-Net (arm 1) + predict all demo arms", self._demo_rest)
        if wanted("lr_nnunet_mci"):
            self.stage("contour interpolation of arm 1 (arm 1c)", self.contour_interpolation_arm)
        if wanted("hr_upper_bound"):
            self.stock_hr_stages("hr_upper_bound", HR_ID, self.build_hr_dataset)
        if wanted("rehrseg_from_lr"):
            self.stage("train + predict rehrseg_from_lr", self.rehrseg_from_lr_arm)
        if wanted("interp_then_segment"):
            self.stock_hr_stages("interp_then_segment", INTERP_ID, self.build_interp_dataset)
        if wanted("sr_then_segment"):
            self.stock_hr_stages("sr_then_segment", PSEUDO_HR_ID, self.build_pseudo_hr_dataset)
        for arm, trainer in self.benchmark.ablations.items():
            if wanted(arm):
                self.stage(f"train + predict {arm}", self.rehrseg_arm, arm, trainer)
        if wanted("rehrseg_wrong_profile"):
            self.stage("stage 1 + planning (wrong slice profile)", self.plan_wrong_profile)
            self.stage("train + predict rehrseg_wrong_profile", self.rehrseg_arm, "rehrseg_wrong_profile",
                       self.trainer, WRONG_PROFILE_ID)

    def wants(self, *arms: str) -> bool:
        return self.selected_arms is None or not self.selected_arms.isdisjoint(arms)

    def stock_hr_stages(self, arm: str, dataset_id: int, build) -> None:
        self.stage(f"build + plan + preprocess {arm}", _then, build, self.plan_stock, dataset_id)
        self.stage(f"train + predict {arm}", self.stock_hr_arm, arm, dataset_id)

    def _demo_rest(self) -> None:
        self.train(self.baseline_trainer, BASELINE_PLANS)
        self.predict_rest()


def _then(first, second, *args) -> None:
    first()
    second(*args)


def resolve_benchmark_preset(name: Optional[str], device: str) -> BenchmarkPreset:
    return BENCHMARK_PRESETS[name or ("default" if device == "cuda" else "fast")]
