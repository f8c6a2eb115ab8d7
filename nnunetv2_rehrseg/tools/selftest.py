"""The self-check behind rehrseg_selftest: the whole pipeline on a tiny generated dataset, on this machine's device.

Stage 1 + planning, REHRSegTrainer (AMP on CUDA) and stock nnUNetTrainer on the same LR plans through nnU-Net's own
training command, `--c` resume and `--val`, rehrseg_predict LR -> HR with test-time augmentation. Checks: every loss
term finite and falling (the correlation KD's trend reported only), the HR output on the grid derived from the LR header, resume restoring the saved state
exactly, the time limit; on CUDA: the training compiled, the compiled and the autocast network against eager float32,
and DDP over two GPUs when present. Timings: self-SR iterations/s, seconds per training step with the real data-loading workers
(nnU-Net's epoch times) and without data loading (synthetic batches), inference per case.

DIR/
  nnUNet_raw, nnUNet_preprocessed, nnUNet_results   a self-contained nnU-Net tree (dataset 989)
  predictions/                                      HR (and lr/) segmentations of the test cases
  selftest.json                                     checks, timings, device
"""
import json
import logging
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import SimpleITK as sitk
import torch

from nnunetv2_rehrseg.checkpoint import load_trained_checkpoint
from nnunetv2_rehrseg.tools.commands import nnunet_tree, run_command
from nnunetv2_rehrseg.geometry import Grid, hr_grid
from nnunetv2_rehrseg.image_io import write_json_atomic
from nnunetv2_rehrseg.tools.phantom import make_raw_dataset
from nnunetv2_rehrseg.planners.plans import load_dataset_plans, save_stock_lr_plans
from nnunetv2_rehrseg.tools.step_timing import compare_step_times, seconds_per_step

logger = logging.getLogger(__name__)
DATASET_ID = 989
DATASET = "Dataset989_SelfTest"
STOCK_PLANS = "nnUNetPlans_rehrsegLR"
LOSS_TERMS = ("train_losses", "train_loss_lr", "train_loss_hr", "train_kd_spatial", "train_kd_correlation")
# terms whose trend is reported but not required to fall in a few dozen steps: the correlation KD matches affinity
# graphs of student features that the segmentation terms are still moving (it can rise over a few dozen steps while
# every other term falls)
TREND_ONLY = ("train_kd_correlation",)
COMPILE_CHECK = "REHRSeg network under torch.compile (nnU-Net's default on CUDA)"
AMP_CHECK = "REHRSeg network under autocast (AMP)"
DDP_CHECK = "DDP over 2 GPUs (-num_gpus 2)"


@dataclass(frozen=True)
class SelfTestSize:
    shape_zyx: tuple            # LR cases (thick axis first), 1 x 1 x 4 mm
    n_train: int
    n_test: int
    selfsr_iterations: int
    planner: str
    trainer: str
    stock_trainer: str          # the same budget, stock nnU-Net
    timing_steps: int           # synthetic steps per trainer for the compute-only timing


SIZES = {
    "cpu": SelfTestSize((8, 40, 40), 4, 1, 40, "REHRSegPlannerCPU", "REHRSegTrainer_selftestCPU",
                        "nnUNetTrainer_rehrsegSelftestCPUBudget", 3),
    "accelerator": SelfTestSize((12, 96, 96), 6, 2, 300, "ExperimentPlanner", "REHRSegTrainer_selftest",
                                "nnUNetTrainer_rehrsegSelftestBudget", 20),
}


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class SelfTestResult:
    device: str
    device_name: str
    torch: str
    python: str
    size: dict
    checks: List[Check] = field(default_factory=list)
    timings: Dict[str, float] = field(default_factory=dict)
    not_run: List[str] = field(default_factory=list)
    trends: Dict[str, str] = field(default_factory=dict)     # reported, not checked (TREND_ONLY)
    skipped: Dict[str, str] = field(default_factory=dict)    # checks this device cannot run: name -> why

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks) and not self.not_run

    def check(self, name: str, passed: bool, detail: str) -> None:
        self.checks.append(Check(name, bool(passed), detail))
        logger.info("%s %s: %s", "PASS" if passed else "FAIL", name, detail)

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


# ---------------------------------------------------------------- pure checks (tested on their own)
def losses_finite_and_falling(logging_: Dict[str, list], keys) -> Dict[str, tuple]:
    """Per logged loss term: (finite, falling, first, last), falling = the last epoch's mean below the first's."""
    verdicts = {}
    for key in keys:
        if key not in logging_:
            continue
        values = np.asarray(logging_[key], dtype=float)
        verdicts[key] = (bool(np.all(np.isfinite(values))), bool(len(values) > 1 and values[-1] < values[0]),
                         float(values[0]), float(values[-1]))
    return verdicts


def same_state(before: dict, after: dict, keys) -> List[str]:
    """Checkpoint entries among `keys` that differ between two loaded checkpoints (tensors compared exactly)."""
    def equal(a, b) -> bool:
        if isinstance(a, torch.Tensor):
            return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
        if isinstance(a, dict):
            return isinstance(b, dict) and a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
        if isinstance(a, (list, tuple)):
            return isinstance(b, (list, tuple)) and len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))
        return a == b or (isinstance(a, float) and np.isnan(a) and isinstance(b, float) and np.isnan(b))
    return [k for k in keys if k in before and not equal(before[k], after.get(k))]


def grid_mismatch(image: sitk.Image, expected: Grid) -> Optional[str]:
    got = Grid.of(image)
    if got.size != expected.size:
        return f"size {got.size} != {expected.size}"
    for name in ("spacing", "origin", "direction"):
        if not np.allclose(getattr(got, name), getattr(expected, name), atol=1e-4):
            return f"{name} {getattr(got, name)} != {getattr(expected, name)}"
    return None


# ---------------------------------------------------------------- the run
class SelfTest:
    def __init__(self, out: Path, device: torch.device, minutes: float):
        self.out, self.device, self.minutes = out, device, minutes
        self.size = SIZES["cpu" if device.type == "cpu" else "accelerator"]
        self.env = nnunet_tree(out)
        # the real data-loading workers, one core left for the main process, unless the user chose
        self.env.setdefault("nnUNet_n_proc_DA", str(max(1, min(12, (os.cpu_count() or 2) - 1))))
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or device.type
        self.result = SelfTestResult(str(device), name, torch.__version__, platform.python_version(),
                                     asdict(self.size))
        self.results_folder = out / "nnUNet_results" / DATASET

    def run(self, *command: str) -> float:
        seconds, _ = run_command(command, self.env)
        return seconds

    def train(self, trainer: str, plans: str, *flags: str) -> float:
        return self.run("rehrseg_train", str(DATASET_ID), "3d_fullres", "0", "-tr", trainer, "-p", plans,
                        "-device", self.device.type, *flags)

    def fold(self, trainer: str, plans: str) -> Path:
        return self.results_folder / f"{trainer}__{plans}__3d_fullres" / "fold_0"

    # ------------------------------------------------------------ stages
    def make_data(self) -> None:
        s = self.size
        self.raw = make_raw_dataset(self.out / "nnUNet_raw", DATASET_ID, "SelfTest", n_cases=s.n_train,
                                    shape_zyx=s.shape_zyx, n_test=s.n_test)

    def stage1_and_planning(self) -> None:
        t = self.run("rehrseg_plan_and_preprocess", "-d", str(DATASET_ID), "-pl", self.size.planner, "-device",
                     self.device.type, "-iterations", str(self.size.selfsr_iterations), "-np", "1")
        self.result.timings["stage 1 + planning + preprocessing (s)"] = t
        log = json.loads((self.out / "nnUNet_preprocessed" / DATASET / "rehrseg" / "selfsr" /
                          "training_log.json").read_text())
        self.result.timings["self-SR iterations/s"] = self.size.selfsr_iterations / log["seconds_this_run"]
        ids = sorted(p.name[:-len(".nii.gz")] for p in (self.raw / "labelsTr").glob("*.nii.gz"))
        (self.out / "nnUNet_preprocessed" / DATASET / "splits_final.json").write_text(
            json.dumps([{"train": ids[:-1], "val": ids[-1:]}]))

    def check_training(self, trainer: str, plans: str, label: str) -> dict:
        checkpoint = load_trained_checkpoint(self.fold(trainer, plans) / "checkpoint_final.pth")
        logged = checkpoint["logging"]
        for key, (finite, falling, first, last) in losses_finite_and_falling(logged, LOSS_TERMS).items():
            self.result.check(f"{label}: {key} finite", finite, f"{first:.4g} -> {last:.4g}")
            trend = f"{first:.4g} -> {last:.4g} (first -> last epoch)"
            if key in TREND_ONLY:
                self.result.trends[f"{label}: {key}"] = f"{'falling' if falling else 'not falling'}: {trend}"
            else:
                self.result.check(f"{label}: {key} falling", falling, trend)
        from nnunetv2_rehrseg.trainers.REHRSegTrainer_variants import iterations_per_epoch

        self.result.timings[f"{label} s/step, with data loading"] = seconds_per_step(logged,
                                                                                     iterations_per_epoch(trainer))
        return checkpoint

    def train_rehrseg(self) -> None:
        self.result.timings["train REHRSeg (s)"] = self.train(self.size.trainer, "REHRSegPlans")
        checkpoint = self.check_training(self.size.trainer, "REHRSegPlans", "REHRSeg")
        self.result.check("REHRSeg: AMP grad scaler on CUDA", (checkpoint.get("grad_scaler_state") is not None)
                          == (self.device.type == "cuda"),
                          f"grad_scaler_state {'saved' if checkpoint.get('grad_scaler_state') else 'absent'}")

    def gpu_paths(self) -> None:
        """The paths nnU-Net takes on CUDA only: the training ran under torch.compile (nnU-Net's default there), the
        compiled REHRSeg network gives eager's outputs, autocast's outputs follow float32's; DDP over two GPUs
        (`-num_gpus 2`) trains with finite, falling losses when two are present."""
        fold = self.fold(self.size.trainer, "REHRSegPlans")
        if self.device.type != "cuda":
            for name in (COMPILE_CHECK, AMP_CHECK, DDP_CHECK):
                self.result.skipped[name] = "CUDA only (nnU-Net's choice); the CPU paths are tests"
            return
        logs = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
        compiled = "torch.compile" in logs
        network, x = self.trained_network(fold)
        with torch.no_grad():
            eager = network(x)[1].float()
            with torch.autocast("cuda"):
                amp = network(x)[1].float()
            compiled_out = torch.compile(network)(x)[1].float()
        scale = eager.abs().max().item() + 1e-6
        compile_error, amp_error = ((compiled_out - eager).abs().max().item() / scale,
                                    (amp - eager).abs().max().item() / scale)
        self.result.check(COMPILE_CHECK, compiled and compile_error < 1e-3,
                          f"training log {'says' if compiled else 'does not say'} torch.compile; compiled vs eager "
                          f"HR logits: max error {compile_error:.2g} of the largest")
        self.result.check(AMP_CHECK, amp_error < 5e-2, f"autocast vs float32 HR logits: max error {amp_error:.2g} "
                                                       f"of the largest")
        if torch.cuda.device_count() < 2:
            self.result.skipped[DDP_CHECK] = f"{torch.cuda.device_count()} GPU here"
            return
        self.result.timings["train REHRSeg on 2 GPUs, fold all (s)"] = self.run(
            "rehrseg_train", str(DATASET_ID), "3d_fullres", "all", "-tr", self.size.trainer, "-p", "REHRSegPlans",
            "-num_gpus", "2")
        logged = load_trained_checkpoint(fold.parent / "fold_all" / "checkpoint_final.pth")["logging"]
        finite_falling = losses_finite_and_falling(logged, ("train_losses",))["train_losses"]
        self.result.check(DDP_CHECK, finite_falling[0] and finite_falling[1],
                          f"train_losses {finite_falling[2]:.4g} -> {finite_falling[3]:.4g}")

    def trained_network(self, fold: Path):
        """The trained REHRSeg network in eval mode on the device, and an LR input of its patch size."""
        from nnunetv2_rehrseg.segmenter.network import build_rehrseg_network, hr_head_form_of

        plans = json.loads((fold.parent / "plans.json").read_text())
        dataset = json.loads((fold.parent / "dataset.json").read_text())
        config = plans["configurations"]["3d_fullres"]
        checkpoint = load_trained_checkpoint(fold / "checkpoint_final.pth")
        arch = config["architecture"]
        network = build_rehrseg_network(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                        len(dataset["channel_names"]), len(dataset["labels"]), False,
                                        hr_head_form_of(checkpoint["network_weights"])).enable_rehrseg_forward()
        network.load_state_dict(checkpoint["network_weights"])
        network.to(self.device).eval()
        x = torch.randn(2, len(dataset["channel_names"]), *config["rehrseg"]["lr_patch_size"], device=self.device,
                        generator=torch.Generator(self.device).manual_seed(0))
        return network, x

    def resume_and_validate(self) -> None:
        fold = self.fold(self.size.trainer, "REHRSegPlans")
        before = load_trained_checkpoint(fold / "checkpoint_final.pth")
        self.train(self.size.trainer, "REHRSegPlans", "--c")
        after = load_trained_checkpoint(fold / "checkpoint_final.pth")
        keys = ("network_weights", "optimizer_state", "grad_scaler_state", "current_epoch", "logging",
                "rehrseg_kd_adapter", "rehrseg_selfsr", "_best_ema")
        differing = same_state(before, after, keys)
        self.result.check("resume (--c) restores the saved state", not differing,
                          "identical: " + ", ".join(k for k in keys if k in before) if not differing
                          else f"differs: {differing}")
        shutil.rmtree(fold / "validation", ignore_errors=True)
        self.train(self.size.trainer, "REHRSegPlans", "--val")
        summary = fold / "validation" / "summary.json"
        dice = json.loads(summary.read_text())["foreground_mean"]["Dice"] if summary.is_file() else float("nan")
        self.result.check("--val writes the validation", summary.is_file() and np.isfinite(dice),
                          f"validation Dice {dice:.3f} (LR grid vs the LR labels, as nnU-Net's tools read it)")

    def predict(self) -> None:
        images = self.raw / "imagesTs"
        out = self.out / "predictions"
        t = self.run("rehrseg_predict", "-i", str(images), "-o", str(out), "-d", str(DATASET_ID), "-f", "0", "-tr",
                     self.size.trainer, "-device", self.device.type, "--lr_output")
        self.result.timings["inference s/case (rehrseg_predict with TTA, start-up included)"] = t / self.size.n_test
        block = load_dataset_plans(DATASET_ID)[0]["configurations"]["3d_fullres"]["rehrseg"]
        problems = []
        for image in sorted(images.glob("*_0000.nii.gz")):
            identifier = image.name[:-len("_0000.nii.gz")]
            lr = Grid.of(sitk.ReadImage(str(image)))
            for path, grid in ((out / f"{identifier}.nii.gz", hr_grid(lr, block["lr_axis_sitk"], block["r"])),
                               (out / "lr" / f"{identifier}.nii.gz", lr)):
                problem = grid_mismatch(sitk.ReadImage(str(path)), grid) if path.is_file() else "missing"
                if problem:
                    problems.append(f"{path.relative_to(self.out)}: {problem}")
        self.result.check("HR output on the HR grid derived from the LR header (and LR output on the LR grid)",
                          not problems, "; ".join(problems) or f"{self.size.n_test} case(s), r = {block['r']}")

    def train_stock(self) -> None:
        save_stock_lr_plans(DATASET_ID, STOCK_PLANS)
        self.run("nnUNetv2_preprocess", "-d", str(DATASET_ID), "-plans_name", STOCK_PLANS, "-c", "3d_fullres",
                 "-np", "1")
        self.result.timings["train stock nnU-Net (s)"] = self.train(self.size.stock_trainer, STOCK_PLANS)
        self.check_training(self.size.stock_trainer, STOCK_PLANS, "stock nnU-Net")

    def step_timing(self) -> None:
        timing = compare_step_times(DATASET_ID, self.size.trainer, self.device, self.size.timing_steps)
        self.result.timings["REHRSeg s/step, no data loading"] = timing["rehrseg_s_per_step"]
        self.result.timings["stock nnU-Net s/step, no data loading"] = timing["nnUNetTrainer_s_per_step"]
        self.result.timings["REHRSeg / stock step time, no data loading"] = timing["ratio"]
        with_loading = [self.result.timings.get(f"{k} s/step, with data loading") for k in ("REHRSeg", "stock nnU-Net")]
        if all(with_loading):
            self.result.timings["REHRSeg / stock step time, with data loading"] = with_loading[0] / with_loading[1]

    # ------------------------------------------------------------ everything
    STAGES = ("make_data", "stage1_and_planning", "train_rehrseg", "gpu_paths", "resume_and_validate", "predict",
              "train_stock", "step_timing")

    def __call__(self) -> SelfTestResult:
        t0 = time.time()
        for i, stage in enumerate(self.STAGES):
            try:
                getattr(self, stage)()
            except Exception as error:   # a failing stage is a failed check; the later ones depend on it
                logger.exception("stage %s failed", stage)
                self.result.check(f"stage {stage} runs", False, f"{type(error).__name__}: {error}")
                self.result.not_run = list(self.STAGES[i + 1:])
                break
        total = time.time() - t0
        self.result.timings["total (s)"] = total
        self.result.check(f"within {self.minutes:g} minutes", total <= 60 * self.minutes, f"{total / 60:.1f} min")
        write_json_atomic(self.out / "selftest.json", self.result.to_dict())
        return self.result


def summary_table(result: SelfTestResult) -> str:
    lines = [f"rehrseg_selftest on {result.device} ({result.device_name}), torch {result.torch}, "
             f"Python {result.python}", "", "| check | result | detail |", "|---|---|---|"]
    lines += [f"| {c.name} | {'pass' if c.passed else '**FAIL**'} | {c.detail} |" for c in result.checks]
    lines += [f"| stage {s} | not run | an earlier stage failed |" for s in result.not_run]
    lines += [f"| {name} | not run | {why} |" for name, why in result.skipped.items()]
    lines += [f"| {name} (trend, not checked) | {'-'} | {trend} |" for name, trend in result.trends.items()]
    lines += ["", "| timing | value |", "|---|---|"]
    lines += [f"| {k} | {v:.3g} |" for k, v in result.timings.items()]
    lines += ["", "PASSED" if result.passed else "FAILED"]
    return "\n".join(lines)
