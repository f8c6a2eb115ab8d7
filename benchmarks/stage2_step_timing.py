"""Training-step time of REHRSegTrainer vs stock nnUNetTrainer on the same LR network plans (same run, same batch
size), without data loading (see nnunetv2_rehrseg.step_timing). Run after rehrseg_plan_and_preprocess -d D:

    python benchmarks/stage2_step_timing.py -d 990 [-steps 12] [-device cpu] [-tr REHRSegTrainer]
"""
import argparse
import json
from pathlib import Path

import torch

from nnunetv2_rehrseg.step_timing import compare_step_times


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-d", required=True)
    parser.add_argument("-steps", type=int, default=12, help="timed steps per trainer (a multiple of the KD period, 4)")
    parser.add_argument("-device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("-tr", default="REHRSegTrainer")
    parser.add_argument("-o", default=None, help="write the numbers to this JSON file")
    args = parser.parse_args(argv)
    result = compare_step_times(args.d, args.tr, torch.device(args.device), args.steps)
    print(json.dumps(result, indent=1))
    if args.o:
        Path(args.o).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
