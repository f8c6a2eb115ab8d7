"""Training-step time of REHRSegTrainer vs stock nnUNetTrainer on the same LR network plans (same run, same batch
size), without data loading and, with -with_loading, also with it (nnunetv2_rehrseg.tools.step_timing; the with-loading comparison is here). Run after
rehrseg_plan_and_preprocess -d D:

    python benchmarks/stage2_step_timing.py -d 990 [-steps 12] [-device cpu] [-tr REHRSegTrainer] [-with_loading 2]
"""
import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

import research_trainers
from nnunetv2_rehrseg.demo.arms import BASELINE_PLANS
from nnunetv2_rehrseg.tools.step_timing import compare_step_times, new_trainer, seconds_per_step, trainer_class


def research_trainer(name: str) -> type:
    """A research trainer of the benchmark, or a plugin trainer, by name."""
    return getattr(research_trainers, name, None) or trainer_class(name)


def epoch_seconds_per_step(trainer, epochs: int, steps: int, output_folder: Path) -> float:
    """nnU-Net's run_training for `epochs` short epochs (steps training and 2 validation iterations each) into a
    scratch folder; the median epoch time per training step, the first epoch (start-up, workers) left out."""
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

    from nnunetv2_rehrseg.planners.plans import CONFIGURATION, load_dataset_plans, stock_lr_plans

    plans, dataset_json = load_dataset_plans(dataset_id)
    stock_plans, _ = load_dataset_plans(dataset_id, stock_plans_name)
    expected = stock_lr_plans(plans)["configurations"][CONFIGURATION]
    for key in ("patch_size", "spacing", "architecture", "batch_size"):
        if stock_plans["configurations"][CONFIGURATION][key] != expected[key]:
            raise ValueError(f"{stock_plans_name}: its {key} differs from the LR plans of REHRSegPlans; write them with "
                             f"save_stock_lr_plans and preprocess with nnUNetv2_preprocess -plans_name {stock_plans_name}")
    arms = {"nnUNetTrainer": (nnUNetTrainer, stock_plans), trainer_name: (research_trainer(trainer_name), plans)}
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



def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-d", required=True)
    parser.add_argument("-steps", type=int, default=12, help="timed steps per trainer (a multiple of the KD period, 4)")
    parser.add_argument("-device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("-tr", default="REHRSegTrainer")
    parser.add_argument("-with_loading", type=int, default=0, metavar="ROUNDS",
                        help="also train both trainers in turns with nnU-Net's loop and real loaders, this many rounds "
                             "of 3 epochs x 50 steps each")
    parser.add_argument("-stock_plans", default=BASELINE_PLANS, help="stock nnU-Net's LR plans for -with_loading")
    parser.add_argument("-o", default=None, help="write the numbers to this JSON file")
    args = parser.parse_args(argv)
    result = compare_step_times(args.d, research_trainer(args.tr), torch.device(args.device), args.steps)
    if args.with_loading:
        result.update(compare_epoch_times(args.d, args.tr, args.stock_plans, torch.device(args.device), args.with_loading))
    print(json.dumps(result, indent=1))
    if args.o:
        Path(args.o).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
