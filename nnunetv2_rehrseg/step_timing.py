"""Training-step time of a REHRSeg trainer against stock nnUNetTrainer on the same LR network plans.

Both trainers come from the dataset's REHRSegPlans: stock nnU-Net gets the LR configuration (LR spacing, LR patch, the
same topology without the HR head) and LR batches; REHRSeg gets the batches its loader makes and does the rest (the
teacher forward, the HR head, the KD terms) itself. `compare_step_times` uses synthetic batches: data loading is left
out, so this is the cost of the step alone (nnU-Net's `..._noDataLoading` split). `compare_epoch_times` runs nnU-Net's
own training loop with each trainer's real loaders and workers, a few short epochs at a time, in turns.
"""
import tempfile
import time
from copy import deepcopy
from pathlib import Path

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


def compare_step_times(dataset_id, trainer_name: str, device: torch.device, steps: int = 12) -> dict:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    import nnunetv2_rehrseg.trainers as trainers
    from nnunetv2_rehrseg.segmenter.plans import load_dataset_plans, stock_lr_plans
    from nnunetv2_rehrseg.selfsr.training import load_network

    plans, dataset_json = load_dataset_plans(dataset_id)
    config = plans["configurations"]["3d_fullres"]
    ours = initialized_trainer(getattr(trainers, trainer_name), plans, dataset_json, device)
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
    return {"device": str(device), "trainer": trainer_name, "batch_size": b,
            "lr_patch": config["rehrseg"]["lr_patch_size"],
            "features_per_stage": config["architecture"]["arch_kwargs"]["features_per_stage"],
            "nnUNetTrainer_s_per_step": t_stock, "rehrseg_s_per_step": t_ours, "ratio": t_ours / t_stock}


def epoch_seconds_per_step(trainer, epochs: int, steps: int, output_folder: Path) -> float:
    """nnU-Net's run_training for `epochs` short epochs (steps training and 2 validation iterations each) into a
    scratch folder; the median epoch time per training step, the first epoch (start-up, workers) left out."""
    from nnunetv2_rehrseg.selftest import seconds_per_step

    trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = epochs, steps, 2
    trainer.save_every = epochs + 1
    trainer.output_folder_base = trainer.output_folder = str(output_folder)
    trainer.log_file = str(output_folder / "training_log.txt")
    trainer.run_training()
    return seconds_per_step(trainer.logger.get_checkpoint(), steps)


def compare_epoch_times(dataset_id, trainer_name: str, stock_plans_name: str, device: torch.device, rounds: int = 2,
                        epochs: int = 3, steps: int = 50) -> dict:
    """Seconds per training step with data loading (nnU-Net's loop, real loaders and augmentation workers, validation
    iterations included) of both trainers, trained in turns (ABAB, `rounds` times) so that both meet the same drift
    of a shared machine; each turn a fresh trainer from random weights. Stock nnU-Net trains on the LR data
    preprocessed with `stock_plans_name` (stock_lr_plans of the same REHRSegPlans, see save_stock_lr_plans)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    import nnunetv2_rehrseg.trainers as trainers
    from nnunetv2_rehrseg.segmenter.plans import CONFIGURATION, load_dataset_plans, stock_lr_plans

    plans, dataset_json = load_dataset_plans(dataset_id)
    stock_plans, _ = load_dataset_plans(dataset_id, stock_plans_name)
    expected = stock_lr_plans(plans)["configurations"][CONFIGURATION]
    for key in ("patch_size", "spacing", "architecture", "batch_size"):
        if stock_plans["configurations"][CONFIGURATION][key] != expected[key]:
            raise ValueError(f"{stock_plans_name}: its {key} differs from the LR plans of REHRSegPlans; write them with "
                             f"save_stock_lr_plans and preprocess with nnUNetv2_preprocess -plans_name {stock_plans_name}")
    arms = {"nnUNetTrainer": (nnUNetTrainer, stock_plans), trainer_name: (getattr(trainers, trainer_name), plans)}
    times = {name: [] for name in arms}
    with tempfile.TemporaryDirectory() as scratch:
        for turn in range(rounds):
            for name, (cls, arm_plans) in arms.items():
                trainer = new_trainer(cls, arm_plans, dataset_json, device)
                folder = Path(scratch) / f"{name}_{turn}"
                folder.mkdir()
                times[name].append(epoch_seconds_per_step(trainer, epochs, steps, folder))
    stock, ours = (float(np.mean(times[name])) for name in arms)
    return {"device": str(device), "trainer": trainer_name, "epochs_per_turn": epochs, "steps_per_epoch": steps,
            "turns": times, "nnUNetTrainer_s_per_step_with_loading": stock,
            "rehrseg_s_per_step_with_loading": ours, "ratio_with_loading": ours / stock}
