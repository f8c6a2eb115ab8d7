"""Training-step time of a REHRSeg trainer against stock nnUNetTrainer on the same LR network plans (rehrseg_selftest's
timing; the benchmark's with-loading comparison builds on it).

Both trainers come from the dataset's REHRSegPlans: stock nnU-Net gets the LR configuration (LR spacing, LR patch, the
same topology without the HR head) and LR batches; REHRSeg gets the batches its loader makes and does the rest (the
teacher forward, the HR head, the KD terms) itself. `compare_step_times` uses synthetic batches: data loading is left
out, so this is the cost of the step alone (nnU-Net's `..._noDataLoading` split).
"""
import time
from copy import deepcopy
from typing import Dict, Union

import numpy as np
import torch


def new_trainer(cls, plans: dict, dataset_json: dict, device: torch.device):
    """A trainer of fold 0, 3d_fullres, not resuming, not yet initialised."""
    return cls({**deepcopy(plans), "continue_training": False}, "3d_fullres", 0, dataset_json, device)


def initialized_trainer(cls, plans: dict, dataset_json: dict, device: torch.device):
    """A trainer of fold 0, 3d_fullres, initialised (network, optimizer, loss), not resuming."""
    trainer = new_trainer(cls, plans, dataset_json, device)
    trainer.initialize()
    return trainer


def interleaved_mean_step_seconds(steps_and_batches, steps: int, device: torch.device):
    """Mean seconds per call of each (step, batch), the steps taken in turn (ABAB...): on a shared machine the speed
    drifts by 10-20% within minutes, and interleaving exposes both trainers to the same drift. The mean, not the
    median: REHRSeg distils on every kd_every_n_steps-th step only (take a multiple of it)."""
    def timed(step, batch) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    for step, batch in steps_and_batches:
        step(batch)  # warm-up
    times = [[timed(step, batch) for step, batch in steps_and_batches] for _ in range(steps)]
    return [float(np.mean(column)) for column in zip(*times)]


def synthetic_lr_batch(trainer, shape, channels: int, batch_size: int, generator) -> dict:
    """Image and deep-supervision targets as stock nnU-Net's loader delivers them."""
    classes = trainer.label_manager.num_segmentation_heads
    target = torch.randint(0, classes, (batch_size, 1, *shape), generator=generator).float()
    return {"data": torch.randn(batch_size, channels, *shape, generator=generator),
            "target": [torch.nn.functional.interpolate(target, [round(n * s) for n, s in zip(shape, scale)],
                                                       mode="nearest-exact")
                       for scale in trainer._get_deep_supervision_scales()]}


def seconds_per_step(logging_: Dict[str, list], steps_per_epoch: int) -> float:
    """Median epoch time (the first left out: start-up) per training step; the epoch's validation steps included."""
    durations = np.subtract(logging_["epoch_end_timestamps"], logging_["epoch_start_timestamps"])
    return float(np.median(durations[1:] if len(durations) > 1 else durations) / steps_per_epoch)


def trainer_class(trainer: Union[str, type]) -> type:
    """A trainer class, or the plugin trainer of that name."""
    import nnunetv2_rehrseg.trainers as trainers

    return trainer if isinstance(trainer, type) else getattr(trainers, trainer)


def compare_step_times(dataset_id, trainer: Union[str, type], device: torch.device, steps: int = 12) -> dict:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunetv2_rehrseg.planners.plans import load_dataset_plans, stock_lr_plans
    from nnunetv2_rehrseg.selfsr.training import load_network

    plans, dataset_json = load_dataset_plans(dataset_id)
    config = plans["configurations"]["3d_fullres"]
    cls = trainer_class(trainer)
    ours = initialized_trainer(cls, plans, dataset_json, device)
    if ours.kd_enabled:
        ours.teacher, _ = load_network(ours.selfsr_checkpoint(), device)
        ours.teacher.requires_grad_(False)
    stock = initialized_trainer(nnUNetTrainer, stock_lr_plans(plans), dataset_json, device)

    b, channels = config["batch_size"], len(dataset_json["channel_names"])
    generator = torch.Generator().manual_seed(0)
    ours_batch = ours.synthetic_batch(generator)
    stock_batch = synthetic_lr_batch(stock, config["rehrseg"]["lr_patch_size"], channels, b, generator)
    t_stock, t_ours = interleaved_mean_step_seconds([(stock.train_step, stock_batch), (ours.train_step, ours_batch)],
                                                      steps, device)
    return {"device": str(device), "trainer": cls.__name__, "batch_size": b,
            "lr_patch": config["rehrseg"]["lr_patch_size"],
            "features_per_stage": config["architecture"]["arch_kwargs"]["features_per_stage"],
            "nnUNetTrainer_s_per_step": t_stock, "rehrseg_s_per_step": t_ours, "ratio": t_ours / t_stock}
