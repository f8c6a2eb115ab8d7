"""Seconds per self-SR training iteration of each preset on the stage-1 benchmark's subject, measured in one process
in alternating blocks (fast, default, fast, default, ...), so that both see the same load on the machine: their ratio
is what a CPU (or GPU) hour buys of each.

    python benchmarks/selfsr_step_timing.py [-presets fast default] [-iterations 12] [-blocks 2] [-device cpu] [-o JSON]

Each block trains a fresh network of the preset for -iterations iterations (plain phase, thick-axis term included,
as stage 1 trains it); the first two iterations of a block are left out (allocation, warm-up). Reported per preset:
the median seconds per iteration over its blocks, the ratio to the first preset, the parameter count, and the
preset's own budget in hours at that speed.
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from selfsr import development_volume

from nnunetv2_rehrseg.demo.anatomy import ANATOMIES
from nnunetv2_rehrseg.selfsr.config import configure
from nnunetv2_rehrseg.selfsr.pairs import SRCase
from nnunetv2_rehrseg.selfsr.stage1 import intensity_range, to_unit
from nnunetv2_rehrseg.selfsr.training import build_network, train_selfsr

WARM_UP = 2


def block_seconds(case: SRCase, config, device: torch.device) -> list:
    """Seconds of each iteration after the warm-up in one short training run."""
    stamps = []
    with tempfile.TemporaryDirectory() as folder:
        train_selfsr([case], config, Path(folder), device, on_iteration=lambda i, losses: stamps.append(
            time.perf_counter()))
    return list(np.diff(stamps[WARM_UP - 1:]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-presets", nargs="+", default=["fast", "default"])
    parser.add_argument("-iterations", type=int, default=12)
    parser.add_argument("-blocks", type=int, default=2)
    parser.add_argument("-r", type=int, default=4)
    parser.add_argument("-anatomy", choices=sorted(ANATOMIES), default="mni152")
    parser.add_argument("-device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("-o", default=None, help="JSON to write")
    args = parser.parse_args(argv)
    device, r = torch.device(args.device), args.r
    hr, _, lr, lr_labels, fwhm, _ = development_volume(args.anatomy, r)
    case = SRCase(to_unit(lr[None], intensity_range(lr[None])), lr_labels)
    num_classes = len(ANATOMIES[args.anatomy].labels)
    configs = {p: configure(p, device.type, 1, num_classes, r, fwhm, "gaussian", [(hr.shape[0], min(hr.shape[1:]))],
                            iterations=args.iterations + WARM_UP, checkpoint_every=10 ** 9) for p in args.presets}
    seconds = {p: [] for p in args.presets}
    for block in range(args.blocks):
        for preset, config in configs.items():
            seconds[preset] += block_seconds(case, config, device)
            print(f"block {block + 1}: {preset} {np.median(seconds[preset]):.3f} s/iteration so far", flush=True)
    first = args.presets[0]
    report = {}
    for preset, config in configs.items():
        median = float(np.median(seconds[preset]))
        budget = configure(preset, device.type, 1, num_classes, r, fwhm, "gaussian",
                           [(hr.shape[0], min(hr.shape[1:]))]).iterations
        report[preset] = {"s_per_iteration": median, "ratio_to_" + first: median / float(np.median(seconds[first])),
                          "parameters": sum(p.numel() for p in build_network(config).parameters()),
                          "features": list(config.features), "blocks_per_stage": config.blocks_per_stage,
                          "patch": config.patch, "batch_size": config.batch_size, "budget_iterations": budget,
                          "budget_hours_at_this_speed": median * budget / 3600, "samples": len(seconds[preset])}
        print(f"{preset:8s} {median:7.3f} s/iteration ({report[preset]['ratio_to_' + first]:.1f}x {first}), "
              f"{report[preset]['parameters'] / 1e6:.2f} M parameters, patch {config.patch}, batch "
              f"{config.batch_size}; its budget of {budget} iterations: {report[preset]['budget_hours_at_this_speed']:.1f} h")
    if args.o:
        Path(args.o).write_text(json.dumps({"device": str(device), "torch_threads": torch.get_num_threads(),
                                            "presets": report}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
