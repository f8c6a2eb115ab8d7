"""The LR-grid Dice of every HR-grid output of a demo or benchmark run: each arm's HR segmentation of the test
subjects taken to the acquired LR grid the annotator's way (per-voxel majority over the r sub-slices of each thick
slice, `degradation.majority_labels`, phase 0) and scored against their LR labels (the report gives the LR Dice of
the arms with an LR output of their own). It says how far an HR model's answer is ahead on the LR task itself, the
headroom against which to read REHRSeg's LR-head goal.

    python benchmarks/hr_outputs_on_lr_grid.py -run DIR [-arms rehrseg hr_upper_bound ...]
"""
import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from nnunetv2_rehrseg.degradation import majority_labels
from nnunetv2_rehrseg.evaluation import evaluate_folders
from nnunetv2_rehrseg.geometry import numpy_axis_of
from nnunetv2_rehrseg.image_io import read_image, write_image
from nnunetv2_rehrseg.planners.plans import CONFIGURATION, PLANS_NAME, REHRSegPlanBlock


def hr_grid_arms(run: Path) -> list:
    """The prediction folders whose segmentations of the test subjects lie on the HR grid (shape of the HR truth)."""
    references = sorted((run / "truth" / "labels").glob("*.nii.gz"))
    shape = read_image(references[0])[0].shape
    return [p.name for p in sorted((run / "predictions").iterdir())
            if all((p / r.name).is_file() for r in references) and read_image(p / references[0].name)[0].shape == shape]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-run", required=True, help="a demo or benchmark output folder")
    parser.add_argument("-arms", nargs="*", default=None, help="prediction folders to score (default: every HR arm)")
    args = parser.parse_args(argv)
    run = Path(args.run)
    plans = next((run / "nnUNet_preprocessed").glob(f"Dataset*/{PLANS_NAME}.json"))
    block = REHRSegPlanBlock.from_configuration(json.loads(plans.read_text())["configurations"][CONFIGURATION])
    truth = run / "truth" / "lr_labels"
    num_classes = len(json.loads((plans.parent / "dataset.json").read_text())["labels"])
    arms = args.arms or hr_grid_arms(run)
    scores = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arm in arms:
            out = Path(tmp) / arm
            for reference in sorted(truth.glob("*.nii.gz")):
                hr_labels, _ = read_image(run / "predictions" / arm / reference.name)
                _, lr = read_image(reference)
                lr_labels = majority_labels(hr_labels, numpy_axis_of(block.lr_axis_sitk), block.r,
                                            num_classes=num_classes)
                write_image(np.asarray(lr_labels).astype(np.uint8), lr, out / reference.name)
            summary = evaluate_folders(str(truth), str(out))["summary"]
            scores[arm] = {"LR Dice": summary["mean"]["Dice"],
                           "per label": {k: v["Dice"] for k, v in summary["mean_per_label"].items()}}
            print(f"{arm:28s} {scores[arm]['LR Dice']:.3f}  "
                  + "  ".join(f"{k}: {v:.3f}" for k, v in scores[arm]["per label"].items()))
    return scores


if __name__ == "__main__":
    main()
