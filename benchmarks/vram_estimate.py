"""What a GPU needs, estimated without one: the memory of a training step of stage 1's self-SR per preset, r and
class count, and the share the segmenter's HR head adds to nnU-Net's plan of the LR network.

    python benchmarks/vram_estimate.py -o benchmarks/results/vram_estimate.json [-presets fast default]

Stage 1: one training step (in-plane pairs and the thick-axis term, as train_selfsr takes it) on the CPU, counting
the bytes autograd keeps for the backward pass (each storage once; at the preset's batch, from steps at batch 1 and 2,
checked against a step at the full batch for `fast`) plus weights, gradients and Adam's two moments;
in float32 and under bfloat16 autocast (the element size of CUDA's float16 AMP). CUDA's allocator, cuDNN's
workspaces and the CUDA context (about 0.5 GB) come on top, so read these as lower bounds.

Stage 2: nnU-Net's default planner (and ResEnc M) plans the LR network of a typical thick-slice dataset to its GPU
memory target; REHRSeg's planner keeps that plan (so an LR nnU-Net's checkpoint fits) and estimates the share the HR
head and its loss add, in nnU-Net's own units (the factor it logs, with the -gpu_memory_target that absorbs it).
"""
import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nnunetv2_rehrseg.selfsr.config import configure
from nnunetv2_rehrseg.selfsr.losses import uasr_loss
from nnunetv2_rehrseg.selfsr.pairs import PairSampler, SRCase
from nnunetv2_rehrseg.selfsr.training import _thick_axis_l1, build_network

RATIOS = (2, 4, 6)
CLASSES = (3, 10)                 # stage 1's label channels (background included)
SEGMENTER_CLASSES = (3, 5, 10, 20)
LR_SHAPE, LR_SPACING = (32, 256, 256), (5.0, 0.9, 0.9)     # z y x: a typical thick-slice brain series


def _saved_bytes(step) -> int:
    """Bytes autograd keeps for the backward pass of `step()` (each storage counted once)."""
    storages = {}

    def pack(t):
        if t.device.type == "cpu" and t.untyped_storage().data_ptr():
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = step()
    loss.backward()
    return sum(storages.values())


def _stage1_step_bytes(preset: str, r: int, num_classes: int, autocast: bool, batch: int):
    """(saved bytes of one training step at `batch`, parameters, preset's config)."""
    fwhm = float(r)
    config = configure(preset, "cuda", 1, num_classes, r, fwhm, "gaussian", [(r * LR_SHAPE[0], LR_SHAPE[1])])
    rng = np.random.default_rng(0)
    case = SRCase(rng.random((1,) + LR_SHAPE, dtype=np.float32),
                  rng.integers(0, num_classes, LR_SHAPE).astype(np.uint8))
    sampler = PairSampler([case], r, fwhm, "gaussian", num_classes, config.window, config.patch, seed=0,
                          thick_cases=[case])
    net = build_network(config, uasr=True)
    net.use_uasr = True
    device = torch.device("cpu")

    def step():
        net_input, image, labels = sampler.sample(batch)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            pred = net(net_input)
        loss = uasr_loss(pred, image, labels, config.image_loss_weight)["loss"]
        return loss + _thick_axis_l1(net, sampler, config, device, autocast) if config.thick_axis_weight else loss
    return _saved_bytes(step), sum(p.numel() for p in net.parameters()), config


def stage1_row(preset: str, r: int, num_classes: int, autocast: bool, direct: bool) -> dict:
    """The step's memory at the preset's batch, from steps at batch 1 and 2 (activations grow linearly with the
    batch; the thick-axis term's draw does not), and, with `direct`, measured at the preset's batch as a check."""
    t = time.time()
    one, params, config = _stage1_step_bytes(preset, r, num_classes, autocast, 1)
    two = _stage1_step_bytes(preset, r, num_classes, autocast, 2)[0]
    saved = one + (two - one) * (config.batch_size - 1)
    row = {"preset": preset, "r": r, "classes": num_classes, "autocast": autocast, "batch": config.batch_size,
           "patch": config.patch, "parameters_m": params / 1e6, "saved_gb": saved / 1e9,
           "weights_grads_adam_gb": 16 * params / 1e9, "total_gb": (saved + 16 * params) / 1e9}
    if direct:
        row["saved_gb_measured_at_batch"] = _stage1_step_bytes(preset, r, num_classes, autocast,
                                                               config.batch_size)[0] / 1e9
    row["seconds"] = time.time() - t
    return row


def _fake_lr_dataset(root: Path, num_classes: int) -> None:
    """A dataset.json and fingerprint of the typical series (no images: the planner needs only these)."""
    raw = root / "nnUNet_raw" / "Dataset999_Estimate"
    (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
    (raw / "labelsTr").mkdir(exist_ok=True)
    labels = {"background": 0, **{f"class{i}": i for i in range(1, num_classes)}}
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": labels, "numTraining": 20,
                                                  "file_ending": ".nii.gz"}))
    pre = root / "nnUNet_preprocessed" / "Dataset999_Estimate"
    pre.mkdir(parents=True, exist_ok=True)
    intensity = {"mean": 1.0, "median": 1.0, "std": 1.0, "min": 0.0, "max": 2.0, "percentile_99_5": 2.0,
                 "percentile_00_5": 0.0}
    (pre / "dataset_fingerprint.json").write_text(json.dumps({
        "spacings": [list(LR_SPACING)] * 20, "shapes_after_crop": [list(LR_SHAPE)] * 20,
        "foreground_intensity_properties_per_channel": {"0": intensity}, "median_relative_size_after_cropping": 1.0}))


def segmenter_rows() -> list:
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import \
        nnUNetPlannerResEncM

    from nnunetv2_rehrseg.segmenter.network import hr_head_feature_map_size

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            os.environ[name] = str(Path(tmp) / name)
        import nnunetv2.paths as paths
        paths.nnUNet_raw, paths.nnUNet_preprocessed = os.environ["nnUNet_raw"], os.environ["nnUNet_preprocessed"]
        for num_classes in SEGMENTER_CLASSES:
            _fake_lr_dataset(Path(tmp), num_classes)
            for planner_class in (ExperimentPlanner, nnUNetPlannerResEncM):
                planner = planner_class(999)
                plan = planner.get_plans_for_configuration(np.array(LR_SPACING), np.array(LR_SHAPE), "estimate",
                                                           float(np.prod(LR_SHAPE)) * 20, {})
                arch = plan["architecture"]
                patch = [int(i) for i in plan["patch_size"]]
                lr_units = planner.static_estimate_VRAM_usage(patch, 1, num_classes, arch["network_class_name"],
                                                              arch["arch_kwargs"], arch["_kw_requires_import"])
                for r in RATIOS:
                    share = hr_head_feature_map_size(patch, num_classes, r,
                                                     arch["arch_kwargs"]["features_per_stage"][0]) / lr_units
                    rows.append({"planner": planner_class.__name__, "target_gb": planner.UNet_vram_target_GB,
                                 "classes": num_classes, "r": r, "lr_patch": patch,
                                 "batch": int(plan["batch_size"]), "hr_head_share": share,
                                 "gpu_memory_target_that_absorbs_it": planner.UNet_vram_target_GB / (1 + share)})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", required=True, help="output JSON")
    parser.add_argument("-presets", nargs="+", default=["fast", "default"], choices=("fast", "default"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    stage1 = [stage1_row(p, r, k, a, direct=p == "fast") for p in args.presets for r in RATIOS for k in CLASSES
              for a in (False, True)]
    result = {"lr_series_zyx": LR_SHAPE, "lr_spacing_zyx_mm": LR_SPACING, "stage1": stage1,
              "segmenter": segmenter_rows(), "torch": torch.__version__}
    Path(args.o).parent.mkdir(parents=True, exist_ok=True)
    Path(args.o).write_text(json.dumps(result, indent=1))
    print("| preset | r | classes | batch x patch | parameters (M) | float32 GB | AMP GB |\n|---|---|---|---|---|---|---|")
    for row in stage1:
        if row["autocast"]:
            continue
        amp = next(x for x in stage1 if x["autocast"] and all(x[k] == row[k] for k in ("preset", "r", "classes")))
        print(f"| {row['preset']} | {row['r']} | {row['classes']} | {row['batch']} x {row['patch']}^2 | "
              f"{row['parameters_m']:.1f} | {row['total_gb']:.2f} | {amp['total_gb']:.2f} |")
    print("\n| planner (target GB) | classes | r | LR patch x batch | HR head's share | -gpu_memory_target |"
          "\n|---|---|---|---|---|---|")
    for row in result["segmenter"]:
        print(f"| {row['planner']} ({row['target_gb']:g}) | {row['classes']} | {row['r']} | "
              f"{'x'.join(map(str, row['lr_patch']))} x {row['batch']} | +{100 * row['hr_head_share']:.0f}% | "
              f"{row['gpu_memory_target_that_absorbs_it']:.1f} |")


if __name__ == "__main__":
    main()
