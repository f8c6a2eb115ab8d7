"""rehrseg_predict: real LR volumes in, HR segmentations out (and the LR-grid segmentation with --lr_output).

The flags are nnUNetv2_predict's (-m or -d/-tr/-p/-c, -f, -chk, -step_size, -npp/-nps, -num_parts/-part_id,
--continue_prediction, --save_probabilities, --disable_tta, --not_on_device, --verbose) plus --lr_output. Every case
is written as soon as it is done; a case the model cannot take is skipped with one line, and the command exits 2 at
the end naming them.
"""
import argparse
import logging
import sys
import time
from pathlib import Path

from nnunetv2_rehrseg.cli.common import add_device_flag, add_parts_flags, check_part, resolve_device, setup_logging
from nnunetv2_rehrseg.errors import InputError, exits_cleanly

logger = logging.getLogger(__name__)


def model_folder(dataset: str, trainer: str, plans: str, configuration: str) -> str:
    """nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>, with a clear error when it cannot exist."""
    from nnunetv2.paths import nnUNet_results
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    if not nnUNet_results.is_set():
        raise InputError("nnUNet_results is not set: export nnUNet_results=/path/to/nnUNet_results (or pass -m)")
    try:
        maybe_convert_to_dataset_name(dataset)
    except (RuntimeError, ValueError) as e:
        raise InputError(f"dataset {dataset}: {e}; check -d") from None
    return get_output_folder(dataset, trainer, plans, configuration)


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """-m MODEL_FOLDER, or -d/-tr/-p/-c to find it in nnUNet_results (as nnUNetv2_predict)."""
    parser.add_argument("-m", default=None, help="trained model folder (<trainer>__<plans>__3d_fullres); "
                                                 "replaces -d/-tr/-p/-c")
    parser.add_argument("-d", default=None, help="dataset name or id of the trained model")
    parser.add_argument("-tr", default="REHRSegTrainer", help="trainer class the model was trained with")
    parser.add_argument("-p", default="REHRSegPlans", help="plans identifier")
    parser.add_argument("-c", default="3d_fullres", help="configuration (REHRSeg plans have 3d_fullres only)")


def resolve_model_folder(args) -> str:
    if args.c != "3d_fullres":
        raise InputError(f"-c {args.c}: REHRSeg plans have the 3d_fullres configuration only")
    if args.m is not None:
        return args.m
    if args.d is None:
        raise InputError("name the model: -m MODEL_FOLDER, or -d DATASET (with -tr/-p if not the defaults)")
    return model_folder(args.d, args.tr, args.p, args.c)


@exits_cleanly
def predict_entry(argv=None) -> None:
    parser = argparse.ArgumentParser(description="REHRSeg inference: LR (thick-slice) images in, HR segmentations out "
                                                 "on the HR grid derived from each input's header")
    parser.add_argument("-i", required=True, help="folder of LR images named as nnU-Net does (CASE_0000.nii.gz)")
    parser.add_argument("-o", required=True, help="output folder (HR segmentations; LR ones in OUT/lr/)")
    add_model_flags(parser)
    parser.add_argument("-f", nargs="+", default=None,
                        help="folds to ensemble ('all' allowed; default: every trained fold, as nnU-Net)")
    parser.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint name in each fold folder")
    parser.add_argument("-step_size", type=float, default=0.5, help="sliding-window step as a fraction of the patch")
    parser.add_argument("-npp", type=int, default=3, help="processes preprocessing inputs")
    parser.add_argument("-nps", type=int, default=3, help="processes resampling and writing outputs")
    add_parts_flags(parser, "predicts")
    parser.add_argument("--continue_prediction", "--c", action="store_true",
                        help="skip cases whose outputs are already there (an interrupted run goes on)")
    parser.add_argument("--disable_tta", action="store_true", help="no mirroring test-time augmentation")
    parser.add_argument("--save_probabilities", action="store_true",
                        help="also write softmax probabilities (.npz + .pkl, as nnUNetv2_ensemble needs them)")
    parser.add_argument("--lr_output", action="store_true", help="also write the LR-grid segmentation to OUT/lr/")
    parser.add_argument("--not_on_device", action="store_true",
                        help="keep the sliding-window accumulators in CPU memory (very large cases)")
    parser.add_argument("-max_logits_gb", type=float, default=None,
                        help="largest logits accumulator held at once (GB, half precision, LR + HR logits); cases "
                             "above it are predicted in slabs keeping only their labels (not with "
                             "--save_probabilities). Default 1.0; lower it for many classes on little memory")
    parser.add_argument("--verbose", action="store_true", help="nnU-Net's detailed prediction log")
    add_device_flag(parser)
    args = parser.parse_args(argv)
    setup_logging()
    if args.max_logits_gb is not None and args.max_logits_gb <= 0:
        raise InputError(f"-max_logits_gb {args.max_logits_gb}: must be positive")
    if not 0 < args.step_size <= 1:
        raise InputError(f"-step_size {args.step_size}: must lie in (0, 1]")
    check_part(args)
    in_folder, out_folder = Path(args.i), Path(args.o)
    if not in_folder.is_dir():
        raise InputError(f"{in_folder}: input folder not found; check -i")
    if in_folder.resolve() == out_folder.resolve():
        raise InputError(f"{out_folder}: output folder equals the input folder; choose another -o")

    from nnunetv2_rehrseg.inference.predictor import REHRSegPredictor
    from nnunetv2_rehrseg.inference.review import write_review_summary

    device = resolve_device(args.device)
    predictor = REHRSegPredictor(tile_step_size=args.step_size, use_mirroring=not args.disable_tta,
                                 perform_everything_on_device=not args.not_on_device, device=device,
                                 verbose=args.verbose, allow_tqdm=True, lr_output=args.lr_output,
                                 **({} if args.max_logits_gb is None else {"max_logits_gb": args.max_logits_gb}))
    folds = None if args.f is None else [f if f == "all" else int(f) for f in args.f]
    predictor.initialize_from_trained_model_folder(resolve_model_folder(args), folds, args.chk)
    t0 = time.time()
    failures = predictor.predict_from_files(str(in_folder), str(out_folder), save_probabilities=args.save_probabilities,
                                            overwrite=not args.continue_prediction,
                                            num_processes_preprocessing=max(1, args.npp),
                                            num_processes_segmentation_export=max(1, args.nps),
                                            num_parts=args.num_parts, part_id=args.part_id)
    logger.info("prediction finished in %.1f s", time.time() - t0)
    print(f"HR segmentations in {out_folder}" + (f", LR ones in {out_folder / 'lr'}" if args.lr_output else ""))
    summary = write_review_summary(out_folder)
    if summary is not None:
        print(f"review table (HR volumes, head disagreement; the cases to read first on top): {summary}")
    if failures:
        for case, reason in failures.items():
            print(f"error: {reason}" if reason.startswith(case) else f"error: {case}: {reason}", file=sys.stderr)
        print(f"error: {len(failures)} case(s) not predicted (listed above); every other case was written",
              file=sys.stderr)
        sys.exit(2)
