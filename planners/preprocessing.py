"""Stock nnU-Net preprocessing of the pseudo-HR data, plus the uncertainty sidecars and a stamp.

Each case goes through nnU-Net's DefaultPreprocessor (transpose, crop to non-zero, normalise, resample), so the
plans stay valid nnU-Net plans with `preprocessor_name: DefaultPreprocessor`. Beside each case the uncertainty map
is stored as `<id>_uncertainty.npy` after the same transpose, crop and resampling (order 1); nnU-Net's blosc2
dataset lists only `.b2nd` files and tolerates `.npy`/`.pkl`, so the sidecars live in the data folder and vanish
with it. The class probabilities of the pseudo-HR labels (the soft targets, where stage 1 wrote them) take the same
path into `soft_targets/<id>.b2nd` (uint8 levels, blosc2-compressed and chunked for patch reads as nnU-Net's data). `rehrseg_stamp.pkl` (written last) marks the folder as ours: a later stock `nnUNetv2_preprocess
-plans_name REHRSegPlans` replaces the folder with LR data and drops the stamp, which the trainer then refuses.
The whole folder is built under a temporary name and moved into place.

Per-image z-scoring is the one step that must not be left to the pseudo-HR volume itself: nnU-Net computes its
mean and std after cropping to the non-zero region, which the (nowhere exactly zero) self-SR output does not have,
so the statistics would differ from the ones the real LR input gets at inference and every tissue would sit at
another normalised intensity in training than at test time. Z-scored channels are therefore normalised with the
statistics nnU-Net computes on the case's LR source image (`LRMatchedPreprocessor`); since blur and subsampling
are linear, the pseudo-LR inputs made in training then match stock-preprocessed real LR data.
"""
import logging
import multiprocessing
import os
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import blosc2
import numpy as np
from acvl_utils.cropping_and_padding.bounding_boxes import bounding_box_to_slice
from batchgenerators.utilities.file_and_folder_operations import load_json, load_pickle, write_pickle
from tqdm import tqdm

from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape
from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

from nnunetv2_rehrseg.class_probabilities import dequantise, quantise
from nnunetv2_rehrseg.errors import InputError
from nnunetv2_rehrseg.planners.plans import CONFIGURATION
from nnunetv2_rehrseg.layout import Stage1Folder
from nnunetv2_rehrseg.raw_dataset import num_label_values

STAMP = "rehrseg_stamp.pkl"
UNCERTAINTY_SUFFIX = "_uncertainty.npy"
# a subfolder: nnU-Net's blosc2 dataset takes every top-level .b2nd file for a case
SOFT_TARGETS_FOLDER = "soft_targets"
ZSCORE = "ZScoreNormalization"
logger = logging.getLogger(__name__)


def zscore_statistics(image: np.ndarray, use_mask_for_norm: Sequence[bool]) -> List[Tuple[float, float]]:
    """(mean, std) per channel of a raw (C, ...) image exactly as nnU-Net's ZScoreNormalization sees it: after
    cropping to the non-zero region and, where use_mask_for_norm, inside the non-zero mask."""
    cropped, mask, _ = crop_to_nonzero(image.astype(np.float32), None)
    statistics = []
    for channel, use_mask in zip(cropped, use_mask_for_norm):
        values = channel[mask[0] >= 0] if use_mask else channel
        statistics.append((float(values.mean()), float(values.std())))
    return statistics


class LRMatchedPreprocessor(DefaultPreprocessor):
    """nnU-Net's DefaultPreprocessor with z-scored channels normalised by given (LR source) statistics."""

    def __init__(self, statistics: Sequence[Tuple[float, float]], verbose: bool = False):
        super().__init__(verbose=verbose)
        self.statistics = statistics

    def _normalize(self, data: np.ndarray, seg: np.ndarray, configuration_manager: ConfigurationManager,
                   foreground_intensity_properties_per_channel: dict) -> np.ndarray:
        zscored = [c for c, scheme in enumerate(configuration_manager.normalization_schemes) if scheme == ZSCORE]
        raw = {c: data[c].copy() for c in zscored}
        data = super()._normalize(data, seg, configuration_manager, foreground_intensity_properties_per_channel)
        for c in zscored:
            mean, std = self.statistics[c]
            normalised = (raw[c] - mean) / max(std, 1e-8)
            if configuration_manager.use_mask_for_norm[c]:
                normalised[seg[0] < 0] = 0
            data[c] = normalised
        return data


def uncertainty_file(folder: str, identifier: str) -> str:
    return os.path.join(folder, identifier + UNCERTAINTY_SUFFIX)


def preprocess_sidecar(maps: np.ndarray, properties: dict, plans_manager: PlansManager, target_spacing: List[float],
                       data_shape) -> np.ndarray:
    """(C, z, y, x) maps on the raw pseudo-HR grid -> the preprocessed case's grid (the image's transpose and crop,
    linear resampling), float32."""
    maps = maps.astype(np.float32, copy=False).transpose([0, *[i + 1 for i in plans_manager.transpose_forward]])
    maps = maps[(slice(None), *bounding_box_to_slice(properties["bbox_used_for_cropping"]))]
    if tuple(maps.shape[1:]) != tuple(data_shape):
        spacing = [properties["spacing"][i] for i in plans_manager.transpose_forward]
        maps = resample_data_or_seg_to_shape(maps, data_shape, spacing, target_spacing, is_seg=False, order=1,
                                             order_z=0, force_separate_z=None)
    return np.asarray(maps, np.float32)


def preprocess_uncertainty(uncertainty: np.ndarray, properties: dict, plans_manager: PlansManager,
                           target_spacing: List[float], data_shape) -> np.ndarray:
    """(1, z, y, x) map on the raw pseudo-HR grid -> the preprocessed case's grid, in [0, 1]."""
    return np.clip(preprocess_sidecar(uncertainty, properties, plans_manager, target_spacing, data_shape), 0, 1)


def soft_targets_file(folder: str, identifier: str) -> str:
    return os.path.join(folder, SOFT_TARGETS_FOLDER, identifier + ".b2nd")


def save_soft_targets(levels: np.ndarray, path: str, patch_size: Sequence[int]) -> None:
    """uint8 levels (K, z, y, x) as a blosc2 array chunked for patch reads, as nnU-Net stores its data."""
    blocks, chunks = comp_blosc2_params(levels.shape, patch_size, bytes_per_pixel=1)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    blosc2.asarray(np.ascontiguousarray(levels), urlpath=path, chunks=chunks, blocks=blocks,
                   cparams={"codec": blosc2.Codec.LZ4HC, "clevel": 5, "nthreads": 1}, mode="w")


def _preprocess_case(identifier: str, files: dict, lr_images: List[str], uncertainty_path: str,
                     probability_paths: Optional[List[str]], output_folder: str, plans: dict,
                     dataset_json: dict) -> Dict[str, list]:
    plans_manager = PlansManager(plans)
    configuration = plans_manager.get_configuration(CONFIGURATION)
    lr_image, _ = plans_manager.image_reader_writer_class().read_images(lr_images)
    statistics = zscore_statistics(lr_image, configuration.use_mask_for_norm)
    LRMatchedPreprocessor(statistics).run_case_save(os.path.join(output_folder, identifier), files["images"],
                                                     files["label"], plans_manager, configuration, dataset_json)
    properties = load_pickle(os.path.join(output_folder, identifier + ".pkl"))
    data = blosc2.open(urlpath=os.path.join(output_folder, identifier + ".b2nd"), mode="r")[:]
    uncertainty, _ = plans_manager.image_reader_writer_class().read_images([uncertainty_path])
    u = preprocess_uncertainty(uncertainty, properties, plans_manager, configuration.spacing, data.shape[1:])
    np.save(uncertainty_file(output_folder, identifier), u)
    if probability_paths:
        levels, _ = plans_manager.image_reader_writer_class().read_images(probability_paths)
        resampled = preprocess_sidecar(dequantise(levels).numpy(), properties, plans_manager, configuration.spacing,
                                       data.shape[1:])
        save_soft_targets(quantise(resampled), soft_targets_file(output_folder, identifier), configuration.patch_size)
    flat = data.reshape(data.shape[0], -1)
    # the normalised intensity range maps the data back to the [0, 1] scale the self-SR teacher was trained on
    return {"intensity_range": np.stack([flat.min(1), flat.max(1)], 1).tolist(), "lr_zscore_statistics": statistics}


def preprocess_pseudo_hr(dataset_name: str, plans_name: str, num_processes: int = 2) -> str:
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw

    base = os.path.join(str(nnUNet_preprocessed), dataset_name)
    plans_file = os.path.join(base, plans_name + ".json")
    plans = load_json(plans_file)
    configuration = PlansManager(plans).get_configuration(CONFIGURATION)
    stage1 = Stage1Folder.of(dataset_name)
    pseudo_folder = str(stage1.pseudo_hr)
    dataset_json = load_json(os.path.join(pseudo_folder, "dataset.json"))
    dataset = get_filenames_of_train_images_and_targets(pseudo_folder, dataset_json)
    uncertainty = {k: str(stage1.pseudo_hr_case(k, 1)["uncertainty"]) for k in dataset}
    missing = [p for p in uncertainty.values() if not os.path.isfile(p)]
    if missing:
        raise InputError(f"{missing[0]} is missing: stage 1 is incomplete; rerun rehrseg_selfsr -d {dataset_name}")
    num_values = num_label_values(PlansManager(plans).get_label_manager(dataset_json))
    probabilities = {k: [str(p) for p in stage1.pseudo_hr_probabilities(k, num_values)] for k in dataset}
    soft = all(os.path.isfile(p) for files in probabilities.values() for p in files)
    if not soft:    # a stage-1 folder from before they were written: the HR head will train on the hard labels
        logger.info("%s holds no class probabilities beside the pseudo-HR labels (written by an earlier version): "
                    "no soft pseudo-HR targets; rerun rehrseg_plan_and_preprocess -d %s to add them",
                    stage1.pseudo_hr, dataset_name)

    raw_folder = os.path.join(str(nnUNet_raw), dataset_name)
    lr_dataset = get_filenames_of_train_images_and_targets(raw_folder, load_json(os.path.join(raw_folder,
                                                                                             "dataset.json")))
    output_folder = os.path.join(base, configuration.data_identifier)
    tmp_folder = output_folder + ".partial"
    shutil.rmtree(tmp_folder, ignore_errors=True)
    os.makedirs(tmp_folder)
    args = [(k, dataset[k], lr_dataset[k]["images"], uncertainty[k], probabilities[k] if soft else None, tmp_folder,
             plans, dataset_json) for k in dataset]
    if num_processes <= 1:
        results = [_preprocess_case(*a) for a in tqdm(args, desc="preprocessing pseudo-HR cases")]
    else:
        with multiprocessing.get_context("spawn").Pool(num_processes) as pool:
            results = list(tqdm(pool.starmap(_preprocess_case, args), total=len(args),
                                desc="preprocessing pseudo-HR cases"))
    _keep_lr_images(stage1, lr_dataset, load_json(os.path.join(raw_folder, "dataset.json"))["file_ending"])
    stamp = {"plans_name": plans_name, "data_identifier": configuration.data_identifier,
             "stage1_settings": load_json(str(stage1.settings)), "soft_targets": soft,
             "cases": dict(zip(dataset.keys(), results))}
    write_pickle(stamp, os.path.join(tmp_folder, STAMP))
    shutil.rmtree(output_folder, ignore_errors=True)
    os.replace(tmp_folder, output_folder)
    return output_folder


def _keep_lr_images(stage1: Stage1Folder, lr_dataset: dict, file_ending: str) -> None:
    """Copies of the LR images beside the pseudo-HR data: the trainer's final validation reads them from
    nnUNet_preprocessed alone, as stock nnU-Net needs no nnUNet_raw on a compute node."""
    folder = stage1.lr_images
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for key, case in lr_dataset.items():
        for channel, path in enumerate(case["images"]):
            shutil.copyfile(path, tmp / f"{key}_{channel:04d}{file_ending}")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def load_stamp(preprocessed_folder: str) -> dict:
    """The stamp of our preprocessing; a clear error when the folder holds something else (e.g. stock LR data)."""
    path = Path(preprocessed_folder) / STAMP
    if not path.is_file():
        raise RuntimeError(
            f"{preprocessed_folder} was not written by rehrseg_plan_and_preprocess (no {STAMP}): it is missing, or "
            f"stock nnUNetv2_preprocess refilled it with LR data. Rerun rehrseg_plan_and_preprocess -d <dataset> "
            f"(never nnUNetv2_preprocess with -plans_name REHRSegPlans)")
    return load_pickle(str(path))
