"""rehrseg_super_resolve: the trained self-SR alone, applied to new (unlabelled) LR images."""
import argparse
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nnunetv2_rehrseg.cli.common import add_device_flag, resolve_device, setup_logging
from nnunetv2_rehrseg.errors import InputError, exits_cleanly

# the self-SR learned one thick-to-thin ratio: inputs whose slice spacing is further off are refused
SPACING_TOLERANCE = 0.1


@exits_cleanly
def super_resolve_entry(argv=None) -> None:
    from nnunetv2_rehrseg.raw_dataset import LoadedCase, group_channel_files, read_channels
    from nnunetv2_rehrseg.selfsr.inference import super_resolve_volume
    from nnunetv2_rehrseg.selfsr.stage1 import (intensity_range, load_stage1, lr_first, pseudo_hr_paths, to_unit,
                                                write_super_resolved)

    parser = argparse.ArgumentParser(description="Super-resolve LR images with a dataset's trained self-SR: writes "
                                                 "OUT/<id>_0000.nii.gz (pseudo-HR, ready for nnUNetv2_predict) and "
                                                 "OUT/uncertainty/<id>.nii.gz")
    parser.add_argument("-i", required=True, help="folder of LR images named <id>_0000.nii.gz")
    parser.add_argument("-o", required=True, help="output folder")
    parser.add_argument("-d", required=True, help="dataset name or id whose stage 1 is trained")
    add_device_flag(parser)
    args = parser.parse_args(argv)
    setup_logging()
    device = resolve_device(args.device)
    net, settings = load_stage1(args.d, device)
    in_folder, out_folder = Path(args.i), Path(args.o)
    if not in_folder.is_dir():
        raise InputError(f"{in_folder}: input folder not found; check -i")
    if in_folder.resolve() == out_folder.resolve():
        raise InputError(f"{out_folder}: output folder equals the input folder; choose another -o")
    cases = group_channel_files(in_folder, ".nii.gz", net.image_channels)
    loaded = []
    for identifier, files in cases.items():  # validate every input before the first write
        image, grid = read_channels([str(f) for f in files], identifier)
        spacing = np.asarray(grid.spacing)
        slice_ratio = spacing[settings.lr_axis] / settings.slice_spacing
        if int(np.argmax(spacing)) != settings.lr_axis or abs(slice_ratio - 1) > SPACING_TOLERANCE:
            raise InputError(f"{files[0]}: spacing {tuple(spacing.round(3))} does not fit the trained self-SR "
                             f"(thick axis {settings.lr_axis}, slice spacing {settings.slice_spacing:.3g} mm, "
                             f"r={settings.r}); resample it to that slice spacing first")
        loaded.append(LoadedCase(identifier, image, None, grid))
    for case in tqdm(loaded, desc="super-resolve"):
        image = lr_first(case.image, settings.lr_axis)
        ranges = intensity_range(image)
        result = super_resolve_volume(net, to_unit(image, ranges), None, device)
        paths = pseudo_hr_paths(out_folder, case.identifier, net.image_channels)
        paths["images"] = [out_folder / p.name for p in paths["images"]]
        paths["label"] = None
        paths["uncertainty"] = out_folder / "uncertainty" / f"{case.identifier}.nii.gz"
        write_super_resolved(case, result, ranges, settings, paths)
    print(f"super-resolved {len(loaded)} case(s) into {out_folder}")
