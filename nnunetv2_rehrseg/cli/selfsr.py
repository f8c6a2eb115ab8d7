"""rehrseg_selfsr: stage 1 alone (self-SR fit -> pseudo-HR dataset + QC)."""
import argparse

from nnunetv2_rehrseg.cli.common import (add_device_flag, add_parts_flags, add_stage1_flags, check_part,
                                         resolve_device, setup_logging)
from nnunetv2_rehrseg.errors import exits_cleanly


def stage1_kwargs(args: argparse.Namespace, device_type: str) -> dict:
    """run_stage1's keyword arguments from the stage-1 flags (an unset -preset follows the device)."""
    from nnunetv2_rehrseg.device_budget import STAGE1_PRESET, default_for

    preset = default_for(args.preset, STAGE1_PRESET, device_type, "-preset", "stage 1's self-SR")
    return dict(preset=preset, r=args.r, target_spacing=args.target_spacing,
                slice_thickness=args.slice_thickness, profile=args.slice_profile, num_processes=args.np,
                init_checkpoint=args.init_checkpoint, video_prior=args.video_prior, iterations=args.iterations,
                seed=args.seed, label_sources=args.label_sources)


@exits_cleanly
def selfsr_entry(argv=None) -> None:
    from nnunetv2_rehrseg.selfsr.stage1 import run_stage1

    parser = argparse.ArgumentParser(description="REHRSeg stage 1: fit the self-supervised SR on the LR training "
                                                 "cases and write the pseudo-HR dataset under nnUNet_preprocessed")
    parser.add_argument("-d", required=True, help="dataset name or id")
    parser.add_argument("-np", type=int, default=2,
                        help="processes for reading images and, on the CPU, for generating the pseudo-HR data (the "
                             "cores shared among them)")
    add_parts_flags(parser, "generates pseudo-HR data for", "; part 0 trains the self-SR")
    add_stage1_flags(parser)
    add_device_flag(parser)
    args = parser.parse_args(argv)
    setup_logging()
    check_part(args)
    device = resolve_device(args.device)
    folder = run_stage1(args.d, device, num_parts=args.num_parts, part_id=args.part_id,
                        **stage1_kwargs(args, device.type))
    complete = (folder / "summary.json").is_file()
    print(f"stage 1 done: {folder}" if complete else f"stage 1 part {args.part_id} done: {folder} (complete when "
          f"every part has run)")
