"""Peak memory and time of rehrseg prediction for a big case: one LR volume (default 512 x 512 x 40, r = 4, so
512 x 512 x 160 HR voxels) with K classes, through REHRSegPredictor.predict_from_files as rehrseg_predict runs it
(nnU-Net's preprocessing, sliding window, export worker), on the CPU.

The network is a stand-in (`synthetic_model.StandInNetwork`: a 3x3x3 convolution and a 1x1x1 one, random weights):
a case's memory beyond the network's per-tile activations is the logits accumulators and the export, which depend
on K, r and the volume, not on the network; its time is the sliding window's and the export's, a real network adds
its own per-tile time on top (see results-speed.md for those).

    python benchmarks/big_volume_prediction.py -o DIR [-classes 5 50] [-shape 512 512 40] [-r 4]
                                               [-max_logits_gb 1.0 ...]

Peak memory: the largest sum of proportional set sizes (PSS: resident memory, shared pages counted once) over the
process and its children (preprocessing and export workers), sampled every 0.1 s. Writes DIR/big_volume_prediction.json.
"""
import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunetv2_rehrseg.geometry import Grid
from nnunetv2_rehrseg.inference.predictor import REHRSegPredictor
from nnunetv2_rehrseg.image_io import write_image
from peak_memory import PeakMemory
from synthetic_model import StandInNetwork, dataset_json, make_plans


def measure(out: Path, classes: int, shape_xyz, r: int, max_logits_gb: float) -> dict:
    lr_spacing = (0.5, 0.5, 0.5 * r)
    folder = out / f"case_{classes}classes_{max_logits_gb}gb"
    image = folder / "in" / "big_0000.nii.gz"
    if not image.exists():
        rng = np.random.default_rng(0)
        volume = rng.normal(size=tuple(shape_xyz[::-1])).astype(np.float32)
        write_image(volume, Grid(tuple(shape_xyz), lr_spacing, (0.0, 0.0, 0.0), tuple(np.eye(3).ravel())), image)
    plans = make_plans(2, r, (0.5, 0.5, 0.5), (16, 128, 128))
    manager = PlansManager(plans)
    predictor = REHRSegPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                 device=torch.device("cpu"), allow_tqdm=True, max_logits_gb=max_logits_gb)
    predictor.manual_initialization(StandInNetwork(r, classes, hidden=8), manager,
                                    manager.get_configuration("3d_fullres"), None, dataset_json(classes),
                                    "REHRSegTrainer", None)
    start = time.time()
    with PeakMemory() as memory:
        failures = predictor.predict_from_files([[str(image)]], [str(folder / "out" / "big")],
                                                num_processes_preprocessing=1, num_processes_segmentation_export=1)
    seconds = time.time() - start
    written = folder / "out" / "big.nii.gz"
    hr_voxels = int(np.prod(shape_xyz)) * r
    result = {"classes": classes, "lr_shape_xyz": list(shape_xyz), "r": r, "hr_voxels": hr_voxels,
              "max_logits_gb": max_logits_gb,
              "logits_gb_whole_case": round(classes * (1 + r) * int(np.prod(shape_xyz)) * 2 / 1e9, 2),
              "slabs": bool(predictor.needs_slabs(tuple(shape_xyz[::-1]), {
                  "shape_after_cropping_and_before_resampling": tuple(shape_xyz[::-1])}, False)),
              "peak_pss_gb": round(memory.peak, 2), "peak_pss_main_process_gb": round(memory.peak_root, 2), "seconds": round(seconds, 1),
              "written": written.is_file(), "failures": failures,
              "output_gb": round(hr_voxels / 1e9, 3)}
    print(json.dumps(result))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", required=True)
    parser.add_argument("-classes", type=int, nargs="+", default=[5, 50])
    parser.add_argument("-shape", type=int, nargs=3, default=[512, 512, 40], help="LR size x y z (z thick)")
    parser.add_argument("-r", type=int, default=4)
    parser.add_argument("-max_logits_gb", type=float, nargs="+", default=[1.0])
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    out = Path(args.o)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "big_volume_prediction.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else []
    for classes in args.classes:
        for budget in args.max_logits_gb:
            if any(r["classes"] == classes and r["max_logits_gb"] == budget and r["lr_shape_xyz"] == args.shape
                   and r["r"] == args.r for r in results):
                continue          # resumable: measured already
            results.append(measure(out, classes, args.shape, args.r, budget))
            results_file.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
