"""Score trained models of a demo or benchmark run on its validation fold (the held-out training subjects of fold
0), never on the test subjects: the place to choose between method variants.

For every REHRSeg trainer given: `rehrseg_predict` on the validation subjects' LR images, HR Dice / HD95 against
their HR truth, LR-head Dice against their LR labels. For every stock trainer given (arm 1): `nnUNetv2_predict` on
the LR grid, taken to HR by shape-based interpolation (arm 1b) and by nearest upsampling (arm 1). The validation
subjects' HR truth lies in DIR/truth/train (the demo and benchmark keep it); for a run made before they did,
-rebuild_truth regenerates it from the run's seed and checks that the regenerated LR images equal the run's.

    python benchmarks/validation_fold.py -run DIR -tr REHRSegTrainer_fast [...] -stock nnUNetTrainer_rehrsegFastBudget
"""
import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from research_trainers import with_research_trainers
from nnunetv2_rehrseg.tools.commands import nnunet_tree, run_command
from nnunetv2_rehrseg.demo.arms import BASELINE_PLANS, DATASET_ID
from nnunetv2_rehrseg.demo.pipeline import shape_based_to_hr, upsample_nearest
from nnunetv2_rehrseg.demo.subjects import build_demo_dataset
from nnunetv2_rehrseg.evaluation import evaluate_folders
from nnunetv2_rehrseg.geometry import hr_grid
from nnunetv2_rehrseg.image_io import read_image, write_image
from nnunetv2_rehrseg.planners.plans import CONFIGURATION, PLANS_NAME, REHRSegPlanBlock



def dataset_folder(root: Path, name: str) -> Path:
    return next((root / name).glob(f"Dataset{DATASET_ID:03d}_*"))


def plan_block(preprocessed: Path) -> REHRSegPlanBlock:
    """The run's thick axis and factor, from its REHRSeg plans."""
    plans = json.loads((preprocessed / f"{PLANS_NAME}.json").read_text())
    return REHRSegPlanBlock.from_configuration(plans["configurations"][CONFIGURATION])


def rebuild_truth(run: Path, seed: int, spacing_mm: float, block: REHRSegPlanBlock) -> None:
    raw = dataset_folder(run, "nnUNet_raw")
    n_train = len(list((raw / "labelsTr").glob("*.nii.gz")))
    n_test = len(list((raw / "imagesTs").glob("*.nii.gz")))
    with tempfile.TemporaryDirectory() as tmp:
        data = build_demo_dataset(Path(tmp) / "raw", Path(tmp) / "truth", DATASET_ID, n_train, n_test, block.r,
                                  block.lr_axis_sitk, spacing_mm, seed=seed, keep_training_truth=True)
        for identifier in data.train_ids:
            name = f"{identifier}_0000.nii.gz"
            if not np.array_equal(read_image(data.raw_folder / "imagesTr" / name)[0],
                                  read_image(raw / "imagesTr" / name)[0]):
                raise SystemExit(f"{raw / 'imagesTr' / name}: not the subject seed {seed} at {spacing_mm} mm makes")
        shutil.copytree(Path(tmp) / "truth" / "train", run / "truth" / "train", dirs_exist_ok=True)


def score(truth: Path, predictions: Path) -> dict:
    summary = evaluate_folders(str(truth), str(predictions), chill=True)["summary"]
    return {"dice": summary["mean"]["Dice"], "hd95": summary["mean"]["HD95"],
            "per_label": {k: v["Dice"] for k, v in summary["mean_per_label"].items()}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-run", required=True, help="output folder of rehrseg_demo or benchmarks/run_all.py")
    parser.add_argument("-tr", nargs="*", default=[], help="REHRSeg trainers (trained on fold 0 of the run)")
    parser.add_argument("-stock", nargs="*", default=[], help=f"stock trainers with plans {BASELINE_PLANS}")
    parser.add_argument("-device", default="cpu")
    parser.add_argument("--rebuild_truth", action="store_true")
    parser.add_argument("-seed", type=int, default=0)
    parser.add_argument("-spacing", type=float, default=2.0)
    args = parser.parse_args(argv)
    run = Path(args.run).resolve()
    env = nnunet_tree(run)
    env["nnUNet_extTrainer"] = with_research_trainers(env.get("nnUNet_extTrainer", ""))
    pre, raw = dataset_folder(run, "nnUNet_preprocessed"), dataset_folder(run, "nnUNet_raw")
    block = plan_block(pre)
    if args.rebuild_truth:
        rebuild_truth(run, args.seed, args.spacing, block)
    val_ids = json.loads((pre / "splits_final.json").read_text())[0]["val"]
    truth = run / "truth" / "train" / "labels"
    missing = [i for i in val_ids if not (truth / f"{i}.nii.gz").is_file()]
    if missing:
        raise SystemExit(f"{truth}: no HR truth for {missing}; rerun with --rebuild_truth")
    out = run / "validation"
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    lr_truth = out / "lr_labels"
    lr_truth.mkdir(exist_ok=True)
    for i in val_ids:
        shutil.copy(raw / "imagesTr" / f"{i}_0000.nii.gz", images)
        shutil.copy(raw / "labelsTr" / f"{i}.nii.gz", lr_truth)

    rows = {}
    for trainer in args.tr:
        pred = out / trainer
        if not pred.is_dir():
            run_command(["rehrseg_predict", "-i", str(images), "-o", str(pred), "-d", str(DATASET_ID), "-f", "0",
                         "-tr", trainer, "-device", args.device, "--lr_output"], env)
        rows[trainer] = {**score(truth, pred), "lr_dice": score(lr_truth, pred / "lr")["dice"]}
    for trainer in args.stock:
        lr_pred = out / trainer / "lr"
        if not lr_pred.is_dir():
            run_command(["nnUNetv2_predict", "-i", str(images), "-o", str(lr_pred), "-d", str(DATASET_ID), "-c",
                         "3d_fullres", "-f", "0", "-tr", trainer, "-p", BASELINE_PLANS, "-device", args.device,
                         "-npp", "1", "-nps", "1"], env)
        for i in val_ids:
            labels, lr = read_image(lr_pred / f"{i}.nii.gz")
            axis, r = block.lr_axis_sitk, block.r
            hr = hr_grid(lr, axis, r)
            write_image(shape_based_to_hr(labels, lr, axis, r), hr, out / trainer / "shape" / f"{i}.nii.gz")
            write_image(upsample_nearest(labels, axis, r), hr, out / trainer / "nearest" / f"{i}.nii.gz")
        lr_dice = score(lr_truth, lr_pred)["dice"]
        for mode in ("nearest", "shape"):
            rows[f"{trainer} ({mode})"] = {**score(truth, out / trainer / mode), "lr_dice": lr_dice}

    print(f"validation subjects {', '.join(val_ids)} of {run}")
    print(f"{'model':60s} {'HR Dice':>8s} {'per label':>28s} {'HD95 mm':>8s} {'LR Dice':>8s}")
    for name, row in rows.items():
        per_label = "/".join(f"{v:.3f}" for v in row["per_label"].values())
        print(f"{name:60s} {row['dice']:8.4f} {per_label:>28s} {row['hd95']:8.2f} {row['lr_dice']:8.4f}")
    (out / "validation_scores.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
