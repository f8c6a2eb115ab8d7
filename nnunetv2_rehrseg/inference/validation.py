"""Final validation of a REHRSeg fold, laid out as nnU-Net's tools expect it.

fold_X/validation/     the LR-grid segmentations of the real LR validation volumes (with --npz their probabilities),
                       scored against nnUNet_preprocessed/<dataset>/gt_segmentations (the LR labels) into
                       summary.json: the number nnUNetv2_find_best_configuration, accumulate_crossval_results,
                       ensembling and nnUNetv2_determine_postprocessing read, comparable with a stock LR nnU-Net of
                       the same dataset id.
fold_X/validation_hr/  the HR segmentations (REHRSeg's actual output), scored against the validation cases'
                       pseudo-HR labels (made by stage 1 from their own LR labels) into
                       summary_vs_pseudo_hr_labels.json, named for what it is: not a ground-truth score.

Inputs come from nnUNet_preprocessed alone (the LR images stage 1 keeps beside its pseudo-HR data), so a compute
node without nnUNet_raw validates as stock nnU-Net does; older stage-1 folders fall back to nnUNet_raw.
"""
import multiprocessing
import os
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import distributed as dist
from tqdm import tqdm

from nnunetv2.evaluation.evaluate_predictions import compute_metrics, compute_metrics_on_folder, save_summary_json
from nnunetv2.utilities.json_export import recursive_fix_for_json_export

from nnunetv2_rehrseg.inference.predictor import REHRSegPredictor
from nnunetv2_rehrseg.segmenter.network import unwrap
from nnunetv2_rehrseg.layout import PSEUDO_HR_ENDING, Stage1Folder

HR_FOLDER = "validation_hr"
HR_SUMMARY = "summary_vs_pseudo_hr_labels.json"


def score_pairs(pairs: Sequence[Tuple[str, str]], reader, labels: List, ignore_label, output_file: str,
                num_processes: int) -> dict:
    """nnU-Net's per-case metrics (compute_metrics) for explicit (reference, prediction) pairs, summarised as its
    summary.json is; references and predictions may have different file endings."""
    args = [(ref, pred, reader, labels, ignore_label) for ref, pred in pairs]
    with multiprocessing.get_context("spawn").Pool(max(1, num_processes)) as pool:
        results = pool.starmap(compute_metrics, args)
    metric_names = list(results[0]["metrics"][labels[0]])
    means = {label: {m: float(np.nanmean([r["metrics"][label][m] for r in results])) for m in metric_names}
             for label in labels}
    foreground = {m: float(np.mean([means[label][m] for label in labels if label not in (0, "0")]))
                  for m in metric_names}
    for r in results:
        recursive_fix_for_json_export(r)
    recursive_fix_for_json_export(means)
    summary = {"metric_per_case": results, "mean": means, "foreground_mean": foreground}
    save_summary_json(summary, output_file)
    return summary


def validate_fold(trainer, save_probabilities: bool = False) -> Dict[str, float]:
    trainer.set_deep_supervision_enabled(False)
    trainer.network.eval()
    predictor = REHRSegPredictor(tile_step_size=0.5, use_mirroring=True, perform_everything_on_device=True,
                                 device=trainer.device, allow_tqdm=False)
    predictor.manual_initialization(unwrap(trainer.network), trainer.plans_manager, trainer.configuration_manager,
                                    None, trainer.dataset_json, trainer.__class__.__name__,
                                    trainer.inference_allowed_mirroring_axes)
    dataset_name = trainer.plans_manager.dataset_name
    _, val_keys = trainer.do_split()
    stage1 = Stage1Folder.of(dataset_name)
    images = stage1.lr_images_of(trainer.dataset_json)
    fold = Path(trainer.output_folder)
    out_lr, out_hr = fold / "validation", fold / HR_FOLDER
    out_lr.mkdir(parents=True, exist_ok=True)
    out_hr.mkdir(parents=True, exist_ok=True)
    rank, world = (dist.get_rank(), dist.get_world_size()) if trainer.is_ddp else (0, 1)
    for key in tqdm(sorted(val_keys)[rank::world], desc="final validation (LR in, HR out)",
                    disable=trainer.local_rank != 0):
        predictor.predict_case_files(images[key], str(out_hr / key), str(out_lr / key), save_probabilities)
    if trainer.is_ddp:
        dist.barrier()
    results = {}
    if trainer.local_rank == 0:
        labels = trainer.label_manager
        regions = labels.foreground_regions if labels.has_regions else labels.foreground_labels
        reader = trainer.plans_manager.image_reader_writer_class()
        ending = trainer.dataset_json["file_ending"]
        processes = max(1, min(2, os.cpu_count() or 1))
        lr_metrics = compute_metrics_on_folder(str(Path(trainer.preprocessed_dataset_folder_base) / "gt_segmentations"),
                                               str(out_lr), str(out_lr / "summary.json"), reader, ending, regions,
                                               labels.ignore_label, processes, chill=True)
        pairs = [(str(stage1.pseudo_hr_labels / f"{key}{PSEUDO_HR_ENDING}"), str(out_hr / f"{key}{ending}"))
                 for key in sorted(val_keys)]
        hr_metrics = score_pairs(pairs, reader, regions, labels.ignore_label, str(out_hr / HR_SUMMARY), processes)
        results = {"LR grid vs the LR labels (validation/summary.json)": lr_metrics["foreground_mean"]["Dice"],
                   f"HR grid vs the pseudo-HR labels ({HR_FOLDER}/{HR_SUMMARY})": hr_metrics["foreground_mean"]["Dice"]}
        for name, dice in results.items():
            trainer.print_to_log_file(f"final validation, {name}: mean Dice {dice:.4f}", also_print_to_console=True)
    trainer.set_deep_supervision_enabled(True)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return results
