"""The cost table of docs/results-costs.md: time and peak memory of stage 1, of a training step and of inference
against the number of cases, the volume size, r and the number of classes, measured on this machine (CPU), each
in a process of its own with its process tree's peak PSS (`peak_memory.py`).

- stage 1: `rehrseg_selfsr` on generated phantom datasets (1 x 1 x 4 mm, r = 4), `-iterations 60`, `-np 2`:
  training seconds per iteration and pseudo-HR generation seconds per case (from its summary.json), peak memory;
- training step: the REHRSeg network of a CPU-sized plan (PlainConvUNet, 4 stages, 32-256 features) with both
  heads, nnU-Net's Dice + CE on the LR and HR outputs, backward and SGD, batch 2, LR patch 8 x 64 x 64, synthetic
  data; without the KD teacher (the self-test's step times include it); every configuration timed in one process,
  in turn, round after round (the same load for all), its memory in a process of its own, and its floating-point
  operations counted (torch's FlopCounterMode: the same on any machine);
- inference: `big_volume_prediction.py` (stand-in network: the accumulators and export, not a network's time).

    python benchmarks/cost_table.py -o DIR [-md docs/results-costs.md]

Resumable: DIR/costs.json keeps every measurement; a rerun measures only what is missing, then writes the table.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
STAGE1 = [(2, (8, 64, 64)), (4, (8, 64, 64)), (8, (8, 64, 64)), (4, (16, 128, 128))]     # cases, LR shape zyx
STEPS = [(r, k) for r in (2, 4, 6) for k in (3, 20)]
INFERENCE = [((256, 256, 20), 4, 5), ((256, 256, 20), 4, 50), ((256, 256, 20), 2, 5), ((256, 256, 20), 6, 5),
             ((512, 512, 40), 4, 5), ((512, 512, 40), 4, 50)]                            # LR shape xyz, r, classes
ARCH = {"n_stages": 4, "features_per_stage": [32, 64, 128, 256], "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3]],
        "strides": [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2]], "n_conv_per_stage": [2, 2, 2, 2],
        "n_conv_per_stage_decoder": [2, 2, 2], "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True}}
IMPORTS = ["conv_op", "norm_op", "dropout_op", "nonlin"]


def measured(command, env=None) -> dict:
    """Run a command; its wall seconds, its process tree's peak PSS, and the JSON it printed last (if any)."""
    from peak_memory import PeakMemory

    t = time.time()
    process = subprocess.Popen([str(c) for c in command], env=env, stdout=subprocess.PIPE, text=True)
    with PeakMemory(process.pid) as memory:
        stdout, _ = process.communicate()
    if process.returncode != 0:
        raise subprocess.CalledProcessError(process.returncode, command)
    printed = [line for line in stdout.splitlines() if line.startswith("{")]
    return {"seconds": round(time.time() - t, 1), "peak_pss_gb": round(memory.peak, 2),
            **(json.loads(printed[-1]) if printed else {})}


def stage1_cost(out: Path, cases: int, shape_zyx) -> dict:
    from nnunetv2_rehrseg.tools.commands import nnunet_tree
    from nnunetv2_rehrseg.tools.phantom import make_raw_dataset

    folder = out / f"stage1_{cases}cases_{'x'.join(map(str, shape_zyx))}"
    env = nnunet_tree(folder)
    make_raw_dataset(folder / "nnUNet_raw", 980, "Cost", n_cases=cases, shape_zyx=shape_zyx, n_test=0)
    iterations = 60
    run = measured([Path(sys.executable).parent / "rehrseg_selfsr", "-d", "980", "-iterations", iterations,
                    "-np", "2", "-device", "cpu"], env)
    summary = json.loads((folder / "nnUNet_preprocessed" / "Dataset980_Cost" / "rehrseg" / "summary.json").read_text())
    return {"cases": cases, "lr_shape_zyx": list(shape_zyx), "r": 4, "wall_s": run["seconds"],
            "peak_pss_gb": run["peak_pss_gb"], "train_s_per_iteration": summary["seconds"]["train"] / iterations,
            "generation_s_per_case": summary["seconds"]["pseudo_data"] / cases}


def step_function(r: int, classes: int):
    """A training step of the REHRSeg network at (r, classes) on a fixed synthetic batch."""
    import torch
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    from nnunetv2_rehrseg.segmenter.network import build_rehrseg_network

    torch.manual_seed(0)
    net = build_rehrseg_network("dynamic_network_architectures.architectures.unet.PlainConvUNet",
                                {**ARCH, "hr_scale": r}, IMPORTS, 1, classes, False).enable_rehrseg_forward()
    loss = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False}, {}, weight_ce=1, weight_dice=1,
                          dice_class=MemoryEfficientSoftDiceLoss)
    optimizer = torch.optim.SGD(net.parameters(), 0.01, momentum=0.99, nesterov=True)
    x = torch.randn(2, 1, 8, 64, 64)
    lr_target = torch.randint(0, classes, (2, 1, 8, 64, 64)).float()
    hr_target = torch.randint(0, classes, (2, 1, 8 * r, 64, 64)).float()

    def step():
        optimizer.zero_grad(set_to_none=True)
        lr, hr, _ = net(x)
        (loss(lr, lr_target) + loss(hr, hr_target)).backward()
        optimizer.step()
    return step


def one_step(r: int, classes: int) -> None:
    """(In its own process, for its peak memory) a few steps at (r, classes)."""
    step = step_function(r, classes)
    for _ in range(3):
        step()


def interleaved_steps(rounds: int = 5) -> None:
    """(In its own process) seconds per step of every (r, classes) of STEPS, taken in turn round after round, so that
    all see the same load on a shared machine; the median per configuration, printed as JSON."""
    from torch.utils.flop_counter import FlopCounterMode

    steps = {f"{r},{k}": step_function(r, k) for r, k in STEPS}
    flops = {}
    for key, step in steps.items():
        with FlopCounterMode(display=False) as counter:
            step()
        flops[key] = counter.get_total_flops()
    times = {key: [] for key in steps}
    for _ in range(rounds):
        for key, step in steps.items():
            t = time.perf_counter()
            step()
            times[key].append(time.perf_counter() - t)
    print(json.dumps({key: float(np.median(v)) for key, v in times.items()} |
                     {f"{key} flops": float(f) for key, f in flops.items()}))


def step_cost(r: int, classes: int, seconds: dict) -> dict:
    run = measured([sys.executable, __file__, "-o", "unused", "-one_step", r, classes])
    return {"r": r, "classes": classes, "lr_patch": [8, 64, 64], "batch_size": 2,
            "s_per_step": seconds[f"{r},{classes}"], "gflop_per_step": seconds[f"{r},{classes} flops"] / 1e9,
            "peak_pss_gb": run["peak_pss_gb"]}


def inference_cost(out: Path, shape_xyz, r: int, classes: int) -> dict:
    folder = out / f"inference_{'x'.join(map(str, shape_xyz))}_r{r}"
    run = measured([sys.executable, HERE / "big_volume_prediction.py", "-o", folder, "-classes", classes, "-shape",
                    *shape_xyz, "-r", r])
    return {"lr_shape_xyz": list(shape_xyz), "r": r, "classes": classes, "seconds": run["seconds"],
            "peak_pss_gb": run["peak_pss_gb"], "slabs": run["slabs"], "hr_voxels_million": run["hr_voxels"] / 1e6}


def markdown(costs: dict) -> str:
    lines = ["| cases | LR size (z y x) | self-SR training s (60 iterations, set-up included) | pseudo-HR generation "
             "s/case | stage 1 wall s | peak memory GB |", "|---|---|---|---|---|---|"]
    lines += [f"| {c['cases']} | {' x '.join(map(str, c['lr_shape_zyx']))} | {60 * c['train_s_per_iteration']:.0f} | "
              f"{c['generation_s_per_case']:.1f} | {c['wall_s']:.0f} | {c['peak_pss_gb']:.2f} |" for c in costs["stage1"]]
    lines += ["", "| r | classes | GFLOP per step (forward + backward) | s/step | peak memory GB |",
              "|---|---|---|---|---|"]
    lines += [f"| {c['r']} | {c['classes']} | {c['gflop_per_step']:.1f} | {c['s_per_step']:.2f} | "
              f"{c['peak_pss_gb']:.2f} |" for c in costs["steps"]]
    lines += ["", "| LR size (x y z) | r | classes | HR voxels (M) | slabs | seconds | peak memory GB |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {' x '.join(map(str, c['lr_shape_xyz']))} | {c['r']} | {c['classes']} | "
              f"{c['hr_voxels_million']:.1f} | {'yes' if c['slabs'] else 'no'} | {c['seconds']:.0f} | "
              f"{c['peak_pss_gb']:.2f} |" for c in costs["inference"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", required=True)
    parser.add_argument("-md", default=None, help="write the tables into this markdown file, between the markers "
                                                  "'<!-- cost table -->' and '<!-- end cost table -->'")
    parser.add_argument("-one_step", type=int, nargs=2, default=None, help=argparse.SUPPRESS)
    parser.add_argument("-interleaved_steps", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one_step:
        one_step(*args.one_step)
        return 0
    if args.interleaved_steps:
        interleaved_steps()
        return 0
    sys.path.insert(0, str(HERE))
    out = Path(args.o).resolve()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "costs.json"
    costs = json.loads(path.read_text()) if path.exists() else {"stage1": [], "steps": [], "inference": []}
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count()))
    todo = [("stage1", {"cases": c, "lr_shape_zyx": list(s)}, lambda c=c, s=s: stage1_cost(out, c, s))
            for c, s in STAGE1]
    step_seconds = {}

    def steps_timed() -> dict:
        if not step_seconds:
            step_seconds.update(measured([sys.executable, __file__, "-o", "unused", "-interleaved_steps"]))
        return step_seconds
    todo += [("steps", {"r": r, "classes": k}, lambda r=r, k=k: step_cost(r, k, steps_timed())) for r, k in STEPS]
    todo += [("inference", {"lr_shape_xyz": list(s), "r": r, "classes": k},
              lambda s=s, r=r, k=k: inference_cost(out, s, r, k)) for s, r, k in INFERENCE]
    for table, key, measure in todo:
        if any(all(row.get(name) == value for name, value in key.items()) for row in costs[table]):
            continue
        costs[table].append(measure())
        print(table, json.dumps(costs[table][-1]), flush=True)
        path.write_text(json.dumps(costs, indent=1))
    table = markdown(costs)
    print(table)
    if args.md:
        md = Path(args.md)
        text = md.read_text()
        start, end = "<!-- cost table -->\n", "<!-- end cost table -->"
        md.write_text(text[:text.index(start) + len(start)] + table + text[text.index(end):])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
