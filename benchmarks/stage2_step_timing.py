"""Training-step time of REHRSegTrainer vs stock nnUNetTrainer on the same LR network plans (same run, same batch).

Both trainers come from the dataset's REHRSegPlans: stock nnU-Net gets the LR configuration (LR spacing, LR patch,
the same topology without the HR head) and LR batches; REHRSeg gets HR batches (with the thick-slice margin) and does
the pseudo-LR making, the teacher forward, the HR head and the KD terms itself. Synthetic batches: the data loader is
not timed (it runs in background workers in both). Run after rehrseg_plan_and_preprocess -d D:

    python benchmarks/stage2_step_timing.py -d 990 [-steps 10] [-device cpu] [-tr REHRSegTrainer]
"""
import argparse
import json
import time
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch


def _trainer(cls, plans, dataset_json, device):
    trainer = cls({**deepcopy(plans), "continue_training": False}, "3d_fullres", 0, dataset_json, device)
    trainer.initialize()
    return trainer


def _time(step, batch, steps: int, device) -> float:
    step(batch)  # warm-up
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-d", required=True)
    parser.add_argument("-steps", type=int, default=10)
    parser.add_argument("-device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("-tr", default="REHRSegTrainer")
    parser.add_argument("-o", default=None, help="write the numbers to this JSON file")
    args = parser.parse_args(argv)

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    import nnunetv2_rehrseg.trainers as trainers
    from nnunetv2_rehrseg.plans import load_dataset_plans, stock_lr_plans
    from nnunetv2_rehrseg.selfsr.training import load_network

    device = torch.device(args.device)
    plans, dataset_json = load_dataset_plans(args.d)
    config = plans["configurations"]["3d_fullres"]
    block = config["rehrseg"]

    ours = _trainer(getattr(trainers, args.tr), plans, dataset_json, device)
    if ours.kd_enabled:
        ours.teacher, _ = load_network(ours.selfsr_checkpoint(), device)
        ours.teacher.requires_grad_(False)
    stock = _trainer(nnUNetTrainer, stock_lr_plans(plans), dataset_json, device)

    b, channels = config["batch_size"], len(dataset_json["channel_names"])
    classes = ours.label_manager.num_segmentation_heads
    hr_shape = [config["patch_size"][0] + 2 * ours.margin, *config["patch_size"][1:]]
    generator = torch.Generator().manual_seed(0)
    hr_batch = {"data": torch.randn(b, channels, *hr_shape, generator=generator),
                "target": torch.randint(0, classes, (b, 1, *hr_shape), generator=generator).to(torch.int16),
                "uncertainty": torch.rand(b, 1, *hr_shape, generator=generator),
                "intensity_range": torch.tensor([[[-2.0, 4.0]] * channels] * b)}
    lr_shape = block["lr_patch_size"]
    scales = stock._get_deep_supervision_scales()
    lr_target = torch.randint(0, classes, (b, 1, *lr_shape), generator=generator).float()
    lr_batch = {"data": torch.randn(b, channels, *lr_shape, generator=generator),
                "target": [torch.nn.functional.interpolate(lr_target, [round(n * s) for n, s in zip(lr_shape, sc)],
                                                           mode="nearest-exact") for sc in scales]}
    t_stock = _time(stock.train_step, lr_batch, args.steps, device)
    t_ours = _time(ours.train_step, hr_batch, args.steps, device)
    result = {"device": str(device), "trainer": args.tr, "batch_size": b, "lr_patch": lr_shape,
              "hr_patch_with_margin": hr_shape, "features_per_stage": config["architecture"]["arch_kwargs"][
                  "features_per_stage"], "nnUNetTrainer_s_per_step": t_stock, "rehrseg_s_per_step": t_ours,
              "ratio": t_ours / t_stock}
    print(json.dumps(result, indent=1))
    if args.o:
        Path(args.o).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
