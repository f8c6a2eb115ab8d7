"""rehrseg_plan_and_preprocess: stage 1 if missing -> fingerprint, plan and preprocess the pseudo-HR data."""
import argparse
import logging
import shutil
import time
from pathlib import Path

from nnunetv2_rehrseg.cli.common import add_device_flag, add_stage1_flags, resolve_device, setup_logging
from nnunetv2_rehrseg.cli.selfsr import stage1_kwargs
from nnunetv2_rehrseg.errors import InputError, exits_cleanly
from nnunetv2_rehrseg.planners.plans import PLANS_NAME

logger = logging.getLogger(__name__)


def _ensure_shared_lr_files(dataset_id: int, dataset_name: str, raw_folder: Path, num_processes: int) -> None:
    """nnU-Net keeps dataset.json, dataset_fingerprint.json and gt_segmentations/ once per dataset; its trainer reads
    the first two, its final validation and model selection score against the third (the LR labels). Make them
    (stock content, from the LR raw data) only when absent, so stock nnU-Net and REHRSeg coexist in either order."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset
    from nnunetv2.paths import nnUNet_preprocessed

    base = Path(str(nnUNet_preprocessed)) / dataset_name
    if not (base / "dataset_fingerprint.json").is_file():
        logger.info("stock LR fingerprint missing: extracting it (as nnUNetv2_extract_fingerprint would)")
        extract_fingerprint_dataset(dataset_id, num_processes=num_processes, clean=False, verbose=False)
    if not (base / "dataset.json").is_file():
        tmp = base / "dataset.json.partial"
        shutil.copyfile(raw_folder / "dataset.json", tmp)
        tmp.replace(base / "dataset.json")
    if not (base / "gt_segmentations").is_dir():
        from batchgenerators.utilities.file_and_folder_operations import load_json
        from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

        dataset_json = load_json(str(raw_folder / "dataset.json"))
        tmp = base / "gt_segmentations.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for key, case in get_filenames_of_train_images_and_targets(str(raw_folder), dataset_json).items():
            shutil.copyfile(case["label"], tmp / f"{key}{dataset_json['file_ending']}")
        tmp.replace(base / "gt_segmentations")


def _refuse_other_stage1_settings(folder, args) -> None:
    """Stage-1 flags that contradict the finished stage 1 would otherwise be silently ignored."""
    import json
    import math

    from nnunetv2_rehrseg.errors import InputError
    from nnunetv2_rehrseg.selfsr.stage1 import Stage1Settings

    used = Stage1Settings.load(folder.settings)
    # the target each case's r was taken against (folders from before per-case geometry: the HR spacing)
    target = used.target_spacing if used.target_spacing is not None else used.hr_spacing
    asked = {"-r": (args.r, used.r), "-target_spacing": (args.target_spacing, target),
             "-slice_thickness": (args.slice_thickness, used.slice_thickness),
             "-slice_profile": (args.slice_profile, used.profile)}
    summary = json.loads(folder.summary.read_text())
    # stage-1 folders from before the per-label sources took the self-SR for every label
    asked["-label_sources"] = (args.label_sources, summary["selfsr"].get("label_sources", "self-sr"))
    differing = [f"{flag} {given} (stage 1 used {done})" for flag, (given, done) in asked.items()
                 if given is not None and not (given == done or (isinstance(given, float) and
                                                                 math.isclose(given, done, rel_tol=1e-4)))]
    if differing:
        raise InputError(f"{folder.root} holds a finished stage 1 made with other settings: {'; '.join(differing)}. "
                         f"Drop those flags to reuse it, or delete {folder.root} to redo stage 1 with them")


def _require_pseudo_hr_foreground(stage1) -> None:
    """Pseudo-HR labels without any foreground (a self-SR stopped far too early) would only crash nnU-Net's
    fingerprinting; say what happened instead."""
    from nnunetv2_rehrseg.image_io import read_image
    from nnunetv2_rehrseg.layout import PSEUDO_HR_ENDING

    labels = sorted(stage1.pseudo_hr_labels.glob(f"*{PSEUDO_HR_ENDING}"))
    if labels and all(read_image(p)[0].max() == 0 for p in labels):
        raise InputError(f"{stage1.pseudo_hr_labels}: the pseudo-HR labels of every case are background "
                         f"only (see {stage1.qc / 'lr_dice.json'}): the self-SR is undertrained; delete {stage1.root} "
                         f"and rerun with more -iterations (or -preset default)")


def _stock_lr_plans(dataset_id: int, rehrseg_plans: str, plans_name: str, num_processes: int) -> None:
    """Stock plans of the LR data derived from the REHRSeg plans (same LR topology, patch, batch: its checkpoints
    fit REHRSeg's -pretrained_weights), preprocessed by nnU-Net's own preprocessing."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess_dataset

    from nnunetv2_rehrseg.planners.plans import CONFIGURATION, save_stock_lr_plans

    save_stock_lr_plans(dataset_id, plans_name, rehrseg_plans)
    preprocess_dataset(dataset_id, plans_name, (CONFIGURATION,), (num_processes,), verbose=False)
    logger.info("stock LR plans %s (REHRSeg's LR topology) written and preprocessed", plans_name)


@exits_cleanly
def plan_and_preprocess_entry(argv=None) -> None:
    parser = argparse.ArgumentParser(description="REHRSeg: run stage 1 (self-SR) if needed, then nnU-Net fingerprint "
                                                 "extraction, planning and preprocessing of the pseudo-HR data")
    parser.add_argument("-d", required=True, help="dataset name or id (the user's own LR dataset)")
    parser.add_argument("-np", type=int, default=2, help="processes for reading, fingerprinting and preprocessing")
    parser.add_argument("-pl", default=None,
                        help="nnU-Net planner whose network class and memory budget to use: ExperimentPlanner "
                             "(PlainConvUNet, the default on cuda), nnUNetPlannerResEncM/L, or REHRSegPlannerCPU "
                             "(16..128 features, small patch: CPU-practical, the default elsewhere). Planning on a "
                             "CPU machine for training on a GPU: pass -pl ExperimentPlanner")
    parser.add_argument("-gpu_memory_target", type=float, default=None,
                        help="GPU memory target in GB for the planner (default: the planner's own)")
    parser.add_argument("-overwrite_plans_name", default=PLANS_NAME,
                        help=f"plans name (default {PLANS_NAME}; pass the same to -p when training)")
    parser.add_argument("-stock_lr_plans", default=None, metavar="PLANS_NAME",
                        help="also write stock nnU-Net plans PLANS_NAME for the LR data with REHRSeg's LR topology, "
                             "patch and batch, and preprocess them: the LR nnU-Net to train first (nnUNetv2_train "
                             "-p PLANS_NAME) and start REHRSeg from (rehrseg_train -pretrained_weights)")
    parser.add_argument("--verify_dataset_integrity", action="store_true",
                        help="run nnU-Net's dataset integrity check on the raw LR dataset first")
    add_stage1_flags(parser)
    add_device_flag(parser)
    args = parser.parse_args(argv)
    setup_logging()

    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    from nnunetv2_rehrseg.planners.pseudo_hr_fingerprint import PseudoHRFingerprintExtractor
    from nnunetv2_rehrseg.planners.rehrseg_planner import plan_dataset, rehrseg_planner_class
    from nnunetv2_rehrseg.planners.preprocessing import preprocess_pseudo_hr
    from nnunetv2_rehrseg.raw_dataset import open_raw_dataset
    from nnunetv2_rehrseg.layout import Stage1Folder
    from nnunetv2_rehrseg.selfsr.stage1 import run_stage1

    from nnunetv2_rehrseg.device_budget import PLANNER, default_for

    t0 = time.time()
    dataset = open_raw_dataset(args.d)
    dataset_id = int(dataset.name[len("Dataset"):len("Dataset") + 3])
    if args.stock_lr_plans == args.overwrite_plans_name:   # refused before stage 1 and planning run
        raise InputError(f"-stock_lr_plans {args.stock_lr_plans}: the REHRSeg plans have that name; choose another "
                         f"(e.g. nnUNetPlans_rehrsegLR)")
    device = resolve_device(args.device)
    planner_class = rehrseg_planner_class(default_for(args.pl, PLANNER, device.type, "-pl", "the segmenter's plans"))
    if args.verify_dataset_integrity:
        verify_dataset_integrity(str(dataset.folder), args.np)
    folder = Stage1Folder.of(dataset.name)
    if folder.summary.is_file():
        logger.info("stage 1 found in %s", folder.root)
        _refuse_other_stage1_settings(folder, args)
    else:
        run_stage1(dataset.name, device, **stage1_kwargs(args, device.type))
    t_stage1 = time.time()

    _require_pseudo_hr_foreground(folder)
    _ensure_shared_lr_files(dataset_id, dataset.name, dataset.folder, args.np)
    extract_fingerprint_dataset(dataset_id, PseudoHRFingerprintExtractor, num_processes=args.np, clean=True,
                                verbose=False)
    plans_name = plan_dataset(dataset_id, planner_class, args.gpu_memory_target, args.overwrite_plans_name)
    output = preprocess_pseudo_hr(dataset.name, plans_name, args.np)
    if args.stock_lr_plans:
        _stock_lr_plans(dataset_id, plans_name, args.stock_lr_plans, args.np)
    logger.info("stage 1 %.0f s, planning + preprocessing %.0f s", t_stage1 - t0, time.time() - t_stage1)
    print(f"preprocessed pseudo-HR data: {output}")
    if args.stock_lr_plans:
        from nnunetv2_rehrseg.planners.plans import CONFIGURATION

        checkpoint = (f"$nnUNet_results/{dataset.name}/nnUNetTrainer__{args.stock_lr_plans}__{CONFIGURATION}/"
                      f"fold_FOLD/checkpoint_final.pth")
        print(f"train the LR nnU-Net with: nnUNetv2_train {dataset_id} {CONFIGURATION} FOLD -p {args.stock_lr_plans}\n"
              f"then REHRSeg from it: rehrseg_train {dataset_id} {CONFIGURATION} FOLD -p {plans_name} "
              f"-pretrained_weights {checkpoint}")
    else:
        print(f"train with: rehrseg_train {dataset_id} 3d_fullres FOLD -p {plans_name}")
