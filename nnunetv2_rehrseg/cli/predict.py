"""rehrseg_predict: real LR volumes in, HR segmentations out (and the LR-grid segmentation with --lr_output)."""
import argparse
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from nnunetv2_rehrseg.cli.common import add_device_flag, resolve_device, setup_logging
from nnunetv2_rehrseg.errors import InputError, exits_cleanly

logger = logging.getLogger(__name__)
PARTIAL = ".rehrseg_partial"


def _model_folder(dataset: str, trainer: str, plans: str, configuration: str) -> str:
    from nnunetv2.paths import nnUNet_results
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    if not nnUNet_results.is_set():
        raise InputError("nnUNet_results is not set: export nnUNet_results=/path/to/nnUNet_results")
    try:
        maybe_convert_to_dataset_name(dataset)
    except (RuntimeError, ValueError) as e:
        raise InputError(f"dataset {dataset}: {e}; check -d") from None
    return get_output_folder(dataset, trainer, plans, configuration)


def _move_outputs(partial: Path, out: Path) -> None:
    """Finished files go from the temporary folder to their place by rename: nothing looks complete before it is."""
    for f in sorted(partial.rglob("*")):
        if f.is_file():
            target = out / f.relative_to(partial)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(f, target)


@exits_cleanly
def predict_entry(argv=None) -> None:
    parser = argparse.ArgumentParser(description="REHRSeg inference: LR (thick-slice) images in, HR segmentations out "
                                                 "on the HR grid derived from each input's header")
    parser.add_argument("-i", required=True, help="folder of LR images named as nnU-Net does (CASE_0000.nii.gz)")
    parser.add_argument("-o", required=True, help="output folder (HR segmentations; LR ones in OUT/lr/)")
    parser.add_argument("-d", required=True, help="dataset name or id of the trained model")
    parser.add_argument("-c", default="3d_fullres", help="configuration (REHRSeg plans have 3d_fullres only)")
    parser.add_argument("-f", nargs="+", default=["0", "1", "2", "3", "4"], help="folds to ensemble ('all' allowed)")
    parser.add_argument("-tr", default="REHRSegTrainer", help="trainer class the model was trained with")
    parser.add_argument("-p", default="REHRSegPlans", help="plans identifier")
    parser.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint name in each fold folder")
    parser.add_argument("-step_size", type=float, default=0.5, help="sliding-window step as a fraction of the patch")
    parser.add_argument("-npp", type=int, default=2, help="threads preparing inputs ahead of the network")
    parser.add_argument("-nps", type=int, default=2, help="threads resampling and writing outputs")
    parser.add_argument("--disable_tta", action="store_true", help="no mirroring test-time augmentation")
    parser.add_argument("--save_probabilities", action="store_true", help="also write softmax probabilities (.npz)")
    parser.add_argument("--lr_output", action="store_true", help="also write the LR-grid segmentation to OUT/lr/")
    add_device_flag(parser)
    args = parser.parse_args(argv)
    setup_logging()
    if args.c != "3d_fullres":
        raise InputError(f"-c {args.c}: REHRSeg plans have the 3d_fullres configuration only")
    if not 0 < args.step_size <= 1:
        raise InputError(f"-step_size {args.step_size}: must lie in (0, 1]")

    from nnunetv2_rehrseg.inference.predictor import REHRSegPredictor, check_input_grid
    from nnunetv2_rehrseg.raw_dataset import group_channel_files, read_channels

    in_folder, out_folder = Path(args.i), Path(args.o)
    if not in_folder.is_dir():
        raise InputError(f"{in_folder}: input folder not found; check -i")
    if in_folder.resolve() == out_folder.resolve():
        raise InputError(f"{out_folder}: output folder equals the input folder; choose another -o")
    device = resolve_device(args.device)
    predictor = REHRSegPredictor.from_trained_model_folder(_model_folder(args.d, args.tr, args.p, args.c), args.f,
                                                           args.chk, device, args.step_size, not args.disable_tta)
    file_ending = predictor.dataset_json["file_ending"]
    cases = group_channel_files(in_folder, file_ending, len(predictor.dataset_json["channel_names"]))
    for identifier, files in cases.items():  # every input validated before the first write
        _, grid = read_channels([str(f) for f in files], identifier)
        warning = check_input_grid(grid, predictor.block, str(files[0]))
        if warning:
            logger.warning(warning)

    partial = out_folder / PARTIAL
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    t0 = time.time()
    with ThreadPoolExecutor(max(1, args.npp)) as prepare, ThreadPoolExecutor(max(1, args.nps)) as export:
        identifiers = list(cases)
        ahead = {k: prepare.submit(predictor.preprocess, [str(f) for f in cases[k]])
                 for k in identifiers[:max(1, args.npp)]}
        writes = []
        for n, identifier in enumerate(tqdm(identifiers, desc="rehrseg_predict (LR in, HR out)")):
            nxt = n + max(1, args.npp)
            if nxt < len(identifiers):
                ahead[identifiers[nxt]] = prepare.submit(predictor.preprocess,
                                                         [str(f) for f in cases[identifiers[nxt]]])
            data, properties = ahead.pop(identifier).result()
            lr_logits, hr_logits = predictor.predict_logits(data)
            lr_target = str(partial / "lr" / identifier) if args.lr_output else None
            writes.append(export.submit(predictor.export, lr_logits, hr_logits, properties,
                                        str(partial / identifier), lr_target, args.save_probabilities))
        for w in writes:
            w.result()
    _move_outputs(partial, out_folder)
    shutil.rmtree(partial, ignore_errors=True)
    logger.info("predicted %d case(s) in %.1f s", len(cases), time.time() - t0)
    print(f"HR segmentations in {out_folder}" + (f", LR ones in {out_folder / 'lr'}" if args.lr_output else ""))
