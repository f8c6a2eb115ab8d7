"""rehrseg_super_resolve: the trained self-SR alone, applied to new (unlabelled) LR images.

The self-SR comes from the dataset's stage-1 folder, or from a trained REHRSeg model (every fold checkpoint embeds
it), so a model installed from a zip super-resolves without the stage-1 folder. Outputs keep the inputs' format.
"""
import argparse
import logging
from pathlib import Path

from tqdm import tqdm

from nnunetv2_rehrseg.cli.common import (add_device_flag, add_parts_flags, check_part, detect_file_ending,
                                         resolve_device, setup_logging)
from nnunetv2_rehrseg.cli.predict import add_model_flags
from nnunetv2_rehrseg.errors import InputError, exits_cleanly

logger = logging.getLogger(__name__)


def selfsr_from_model(folder: Path, checkpoint_name: str, device):
    """({r: TrainedSelfSR}, Stage1Settings) from a trained REHRSeg model folder: the self-SR embedded in a fold checkpoint
    (the dataset's r), the geometry from the plans' rehrseg block."""
    import json

    from nnunetv2_rehrseg.checkpoint import SELFSR_CHECKPOINT_KEY, load_trained_checkpoint
    from nnunetv2_rehrseg.planners.plans import CONFIGURATION, REHRSegPlanBlock
    from nnunetv2_rehrseg.selfsr.inference import TrainedSelfSR
    from nnunetv2_rehrseg.selfsr.stage1 import Stage1Settings
    from nnunetv2_rehrseg.selfsr.training import network_from_checkpoint

    checkpoints = sorted(folder.glob(f"fold_*/{checkpoint_name}"))
    if not (folder / "plans.json").is_file() or not checkpoints:
        raise InputError(f"{folder}: no trained REHRSeg model (plans.json and fold_X/{checkpoint_name}); check -m, "
                         f"or -d/-tr/-p")
    try:
        checkpoint = load_trained_checkpoint(checkpoints[0])
    except ValueError as e:
        raise InputError(str(e)) from None
    if SELFSR_CHECKPOINT_KEY not in checkpoint:
        raise InputError(f"{checkpoints[0]} holds no self-SR model (not a REHRSeg checkpoint, or from a version "
                         f"before it was embedded); use the dataset's stage-1 folder (-d without a trained model)")
    plans = json.loads((folder / "plans.json").read_text())
    block = REHRSegPlanBlock.from_configuration(plans["configurations"][CONFIGURATION], str(folder / "plans.json"))
    selfsr = TrainedSelfSR(*network_from_checkpoint(checkpoint[SELFSR_CHECKPOINT_KEY], device))
    return {selfsr.network.r: selfsr}, Stage1Settings.from_plan_block(block)


def load_selfsr(args, device):
    """-m: the model folder; -d: the stage-1 folder if complete, else the trained model (-tr/-p) of that dataset."""
    from nnunetv2_rehrseg.cli.predict import resolve_model_folder
    from nnunetv2_rehrseg.selfsr.stage1 import load_stage1

    if args.m is not None:
        return selfsr_from_model(Path(args.m), args.chk, device)
    if args.d is None:
        raise InputError("name the self-SR: -d DATASET (its stage 1 or trained model) or -m MODEL_FOLDER")
    try:
        return load_stage1(args.d, device)
    except InputError as stage1_missing:
        try:
            folder = Path(resolve_model_folder(args))
        except InputError:
            raise stage1_missing from None
        if not folder.is_dir():
            raise InputError(f"{stage1_missing}; no trained model {folder} either") from None
        return selfsr_from_model(folder, args.chk, device)


@exits_cleanly
def super_resolve_entry(argv=None) -> None:
    from nnunetv2_rehrseg.degradation import profile_fwhm_in_voxels
    from nnunetv2_rehrseg.geometry import slice_geometry
    from nnunetv2_rehrseg.raw_dataset import LoadedCase, group_channel_files, read_channels
    from nnunetv2_rehrseg.selfsr.stage1 import intensity_range, lr_first, to_unit, write_super_resolved

    parser = argparse.ArgumentParser(description="Super-resolve LR images with a dataset's trained self-SR: writes "
                                                 "OUT/<id>_0000<ending> (pseudo-HR, ready for nnUNetv2_predict) and "
                                                 "OUT/uncertainty/<id><ending>, in the inputs' format")
    parser.add_argument("-i", required=True, help="folder of LR images named <id>_0000.nii.gz (or .nii/.mha/.nrrd)")
    parser.add_argument("-o", required=True, help="output folder")
    add_model_flags(parser)
    parser.add_argument("-chk", default="checkpoint_final.pth", help="fold checkpoint name (with a trained model)")
    parser.add_argument("-file_ending", default=None, help="input (and output) file ending; default: detected")
    add_parts_flags(parser, "super-resolves")
    add_device_flag(parser)
    args = parser.parse_args(argv)
    setup_logging()
    check_part(args)
    in_folder, out_folder = Path(args.i), Path(args.o)
    if not in_folder.is_dir():
        raise InputError(f"{in_folder}: input folder not found; check -i")
    if in_folder.resolve() == out_folder.resolve():
        raise InputError(f"{out_folder}: output folder equals the input folder; choose another -o")
    device = resolve_device(args.device)
    networks, settings = load_selfsr(args, device)
    any_net = next(iter(networks.values())).network
    ending = args.file_ending or detect_file_ending(in_folder, "_0000")
    cases = group_channel_files(in_folder, ending, any_net.image_channels)
    cases = {k: cases[k] for k in sorted(cases)[args.part_id::args.num_parts]}   # nnU-Net's split over machines
    target = settings.target_spacing or settings.hr_spacing
    loaded, plans = [], {}
    for identifier, files in cases.items():  # validate every input before the first write
        image, grid = read_channels([str(f) for f in files], identifier)
        geometry = slice_geometry(grid.spacing, target, str(files[0]))
        # the network of this case's r, else of the nearest r trained: the HR grid is then slice spacing / that r
        r = min(networks, key=lambda n: (abs(n - geometry.r), n))
        if r != geometry.r:
            logger.info("%s: slice spacing %.4g mm (r=%d at %.4g mm) super-resolved by the r=%d network: HR spacing "
                        "%.4g mm", files[0], geometry.slice_spacing, geometry.r, target, r, geometry.slice_spacing / r)
        plans[identifier] = (geometry.axis, r, profile_fwhm_in_voxels(geometry.slice_thickness,
                                                                      geometry.slice_spacing / r))
        loaded.append(LoadedCase(identifier, image, None, grid))
    for case in tqdm(loaded, desc="super-resolve"):
        axis, r, fwhm = plans[case.identifier]
        image = lr_first(case.image, axis)
        ranges = intensity_range(image)
        unit = to_unit(image, ranges)
        result = networks[r].super_resolve_case(unit, None, device, fwhm, settings.profile)
        paths = {"images": [out_folder / f"{case.identifier}_{c:04d}{ending}" for c in range(any_net.image_channels)],
                 "label": None, "uncertainty": out_folder / "uncertainty" / f"{case.identifier}{ending}"}
        write_super_resolved(case, result, ranges, axis, r, paths)
    print(f"super-resolved {len(loaded)} case(s) into {out_folder}")
