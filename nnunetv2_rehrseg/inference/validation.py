"""Final validation of a REHRSeg fold: real LR validation volumes in, HR and LR segmentations out, scored.

HR output (fold_X/validation/) is scored against the pseudo-HR labels (the only HR labels there are), LR output
(fold_X/validation_lr/) against the real LR labels; nnU-Net's compute_metrics_on_folder writes summary.json in each.
"""
import os
from pathlib import Path

import torch
from torch import distributed as dist
from tqdm import tqdm

from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder

from nnunetv2_rehrseg.inference.predictor import REHRSegPredictor
from nnunetv2_rehrseg.segmenter.network import unwrap
from nnunetv2_rehrseg.raw_dataset import open_raw_dataset
from nnunetv2_rehrseg.selfsr.stage1 import stage1_folder


def validate_fold(trainer, save_probabilities: bool = False) -> dict:
    trainer.set_deep_supervision_enabled(False)
    trainer.network.eval()
    network = unwrap(trainer.network)
    predictor = REHRSegPredictor(network, trainer.plans_manager, trainer.configuration_manager, trainer.dataset_json,
                                 trainer.device, mirror_axes=trainer.inference_allowed_mirroring_axes)
    raw = open_raw_dataset(trainer.plans_manager.dataset_name)
    _, val_keys = trainer.do_split()
    out_hr = Path(trainer.output_folder) / "validation"
    out_lr = Path(trainer.output_folder) / "validation_lr"
    out_hr.mkdir(parents=True, exist_ok=True)
    out_lr.mkdir(parents=True, exist_ok=True)
    rank, world = (dist.get_rank(), dist.get_world_size()) if trainer.is_ddp else (0, 1)
    for key in tqdm(sorted(val_keys)[rank::world], desc="final validation (LR in, HR out)",
                    disable=trainer.local_rank != 0):
        data, properties = predictor.preprocess(raw.cases[key].images)
        lr_logits, hr_logits = predictor.predict_logits(data)
        predictor.export(lr_logits, hr_logits, properties, str(out_hr / key), str(out_lr / key), save_probabilities)
    if trainer.is_ddp:
        dist.barrier()
    results = {}
    if trainer.local_rank == 0:
        reader = trainer.plans_manager.image_reader_writer_class()
        labels = trainer.label_manager.foreground_labels
        references = {"hr (vs pseudo-HR labels)": (stage1_folder(raw.name) / "pseudo_hr" / "labelsTr", out_hr),
                      "lr (vs real LR labels)": (raw.folder / "labelsTr", out_lr)}
        for name, (reference, prediction) in references.items():
            metrics = compute_metrics_on_folder(str(reference), str(prediction), str(prediction / "summary.json"),
                                                reader, trainer.dataset_json["file_ending"], labels,
                                                num_processes=max(1, min(2, os.cpu_count() or 1)), chill=True)
            results[name] = metrics["foreground_mean"]["Dice"]
            trainer.print_to_log_file(f"final validation, {name}: mean Dice {results[name]:.4f}",
                                      also_print_to_console=True)
    trainer.set_deep_supervision_enabled(True)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return results
