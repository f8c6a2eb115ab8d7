"""Inference time of REHRSeg (LR in, HR out) against stock nnU-Net predicting the same LR cases at LR (same run).

Both use the dataset's REHRSegPlans topology on the LR grid with the same (random) weights for the shared part, the
same step size and mirroring TTA; stock nnU-Net gets the LR configuration (no HR head, LR export only). Timing covers
preprocessing, sliding window and export of every case. Run after rehrseg_plan_and_preprocess -d D:

    python benchmarks/inference_timing.py -d 991 -i LR_IMAGES_DIR [-device cpu] [--disable_tta]
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-d", required=True)
    parser.add_argument("-i", required=True, help="folder of LR images (CASE_0000.nii.gz)")
    parser.add_argument("-device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--disable_tta", action="store_true")
    parser.add_argument("-o", default=None, help="write the numbers to this JSON file")
    args = parser.parse_args(argv)

    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunetv2_rehrseg.inference.predictor import REHRSegPredictor
    from nnunetv2_rehrseg.segmenter.network import build_rehrseg_network
    from nnunetv2_rehrseg.planners.plans import load_dataset_plans, stock_lr_plans
    from nnunetv2_rehrseg.raw_dataset import group_channel_files

    device = torch.device(args.device)
    plans, dataset_json = load_dataset_plans(args.d)
    config = plans["configurations"]["3d_fullres"]
    block = config["rehrseg"]
    arch = config["architecture"]
    channels = len(dataset_json["channel_names"])
    classes = len(dataset_json["labels"])
    mirror = None if args.disable_tta else (0, 1, 2)
    cases = group_channel_files(Path(args.i), dataset_json["file_ending"], channels)

    torch.manual_seed(0)
    ours_net = build_rehrseg_network(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                     channels, classes, False).enable_rehrseg_forward().to(device).eval()
    manager = PlansManager(plans)
    ours = REHRSegPredictor(0.5, True, mirror is not None, True, device, allow_tqdm=False)
    ours.manual_initialization(ours_net, manager, manager.get_configuration("3d_fullres"), [ours_net.state_dict()],
                               dataset_json, "REHRSegTrainer", mirror)

    lr_plans = stock_lr_plans(plans)
    lr_config = lr_plans["configurations"]["3d_fullres"]
    stock_net = get_network_from_plans(arch["network_class_name"], lr_config["architecture"]["arch_kwargs"],
                                       arch["_kw_requires_import"], channels, classes, deep_supervision=False)
    shared = {k: v for k, v in ours_net.state_dict().items() if not k.startswith("hr_head")}
    stock_net.load_state_dict(shared)
    lr_manager = PlansManager(lr_plans)
    stock = nnUNetPredictor(0.5, True, mirror is not None, True, device, allow_tqdm=False)
    stock.manual_initialization(stock_net.to(device).eval(), lr_manager, lr_manager.get_configuration("3d_fullres"),
                                [stock_net.state_dict()], dataset_json, "nnUNetTrainer", mirror)

    with tempfile.TemporaryDirectory() as tmp:
        # both through nnU-Net's predict_from_files with the same processes: the difference is the HR head and export
        t = time.perf_counter()
        ours.predict_from_files([[str(f) for f in files] for files in cases.values()],
                                [str(Path(tmp) / "hr" / k) for k in cases], False, True, 1, 1)
        t_ours = time.perf_counter() - t
        t = time.perf_counter()
        stock.predict_from_files([[str(f) for f in files] for files in cases.values()],
                                 [str(Path(tmp) / "lr" / k) for k in cases], False, True, 1, 1)
        t_stock = time.perf_counter() - t
    result = {"device": str(device), "cases": len(cases), "tta": mirror is not None, "lr_patch": block["lr_patch_size"],
              "nnunet_lr_s_per_case": t_stock / len(cases), "rehrseg_lr_to_hr_s_per_case": t_ours / len(cases),
              "ratio": t_ours / t_stock}
    print(json.dumps(result, indent=1))
    if args.o:
        Path(args.o).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
