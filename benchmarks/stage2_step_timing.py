"""Training-step time of REHRSegTrainer vs stock nnUNetTrainer on the same LR network plans (same run, same batch
size), without data loading and, with -with_loading, also with it (see nnunetv2_rehrseg.step_timing). Run after
rehrseg_plan_and_preprocess -d D:

    python benchmarks/stage2_step_timing.py -d 990 [-steps 12] [-device cpu] [-tr REHRSegTrainer] [-with_loading 2]
"""
import argparse
import json
from pathlib import Path

import torch

from nnunetv2_rehrseg.demo.arms import BASELINE_PLANS
from nnunetv2_rehrseg.step_timing import compare_epoch_times, compare_step_times


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
    result = compare_step_times(args.d, args.tr, torch.device(args.device), args.steps)
    if args.with_loading:
        result.update(compare_epoch_times(args.d, args.tr, args.stock_plans, torch.device(args.device), args.with_loading))
    print(json.dumps(result, indent=1))
    if args.o:
        Path(args.o).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
