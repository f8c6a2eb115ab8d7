"""LR volume in, HR segmentation out, on nnU-Net's own predictor.

`REHRSegPredictor` is an `nnUNetPredictor` whose configuration is the LR grid (the REHRSeg plans' `rehrseg` block's LR
spacing and patch), so nnU-Net's preprocessing workers, sliding window, Gaussian blending, mirroring, fold averaging,
device-memory fallback, `-num_parts/-part_id` and `--continue_prediction` all apply unchanged. The network returns LR
and HR logits; the HR logits (K, r*D, H, W) travel through nnU-Net's machinery folded into channels (K*r, D, H, W)
beside the LR ones, so every LR-grid tile carries exactly its r HR sub-slices. The export unfolds them and writes the
HR segmentation on the HR grid derived from the LR header (and, if asked, the LR-grid segmentation), atomically and
per case: a case that fails costs only itself.
"""
import itertools
import json
import logging
import multiprocessing
import os
import shutil
from copy import deepcopy
from pathlib import Path
from time import sleep
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from tqdm import tqdm
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter

from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image
from nnunetv2.configuration import default_num_processes
from nnunetv2.inference.data_iterators import PreprocessAdapterFromNpy
from nnunetv2.inference.export_prediction import (convert_predicted_logits_to_segmentation_with_correct_shape,
                                                  export_prediction_from_logits)
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.inference.sliding_window_prediction import compute_gaussian
from nnunetv2.utilities.file_path_utilities import check_workers_alive_and_busy
from nnunetv2.utilities.helpers import empty_cache
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunetv2_rehrseg.checkpoint import load_trained_checkpoint
from nnunetv2_rehrseg.errors import InputError
from nnunetv2_rehrseg.geometry import (Grid, SliceGeometry, axes_swap, hr_grid, numpy_axis_of, slice_geometry,
                                       swap_array_axes)
from nnunetv2_rehrseg.inference.review import REVIEW_FOLDER, case_record, head_disagreement, write_case_record
from nnunetv2_rehrseg.segmenter.network import build_rehrseg_network, hr_head_form_of
from nnunetv2_rehrseg.planners.plans import CONFIGURATION, REHRSegPlanBlock

logger = logging.getLogger(__name__)
PARTIAL = ".rehrseg_partial"      # per-case temporary folder inside the output folder
LR_SUBFOLDER = "lr"
# the accumulator of a whole 512 x 512 x 40 case at r = 4 with 50 classes would be 5.2 GB (and nnU-Net's inf check
# briefly adds half as much again): above this, a case is predicted in slabs
DEFAULT_MAX_LOGITS_GB = 1.0


def case_geometry(grid: Grid, block: REHRSegPlanBlock, source: str) -> SliceGeometry:
    """A test case against the model, by the one rule stage 1 uses (geometry.slice_geometry, the model's HR spacing as
    the target): its thick axis and its own r. Refuses only what has no thick axis or is not thicker than the HR
    spacing."""
    return slice_geometry(grid.spacing, block.hr_spacing[0], source)


def resampling_note(geometry: SliceGeometry, block: REHRSegPlanBlock, source: str) -> Optional[str]:
    """What happens to a case whose slice spacing is not the model's: its thick slices are resampled (linearly) to
    the model's LR spacing, and the HR output resampled onto the case's own HR grid (slice spacing / its r)."""
    if abs(geometry.slice_spacing - block.lr_spacing[0]) <= 1e-3 * block.lr_spacing[0]:
        return None
    return (f"{source}: slice spacing {geometry.slice_spacing:.4g} mm, the model's {block.lr_spacing[0]:.4g} mm: "
            f"predicted at the model's spacing and written on the case's own HR grid (r={geometry.r}, "
            f"{geometry.hr_spacing:.4g} mm)")


def case_r(properties: dict, block: REHRSegPlanBlock) -> int:
    """The case's own r, from its spacing (numpy order, as nnU-Net's reader gives it)."""
    spacing = properties["spacing"][::-1]
    return slice_geometry(spacing, block.hr_spacing[0], "the case").r


def linear_along_thick_axis(config: dict) -> dict:
    """nnU-Net resamples anisotropic data with nearest neighbour along the thick axis (order_z 0), which repeats or
    drops whole slices when a case's slice spacing is not the model's; REHRSeg interpolates them linearly."""
    for key in ("resampling_fn_data_kwargs", "resampling_fn_probabilities_kwargs"):
        if key in config:
            config[key] = {**config[key], "order_z": 1}
    return config


def lr_configuration(configuration_manager: ConfigurationManager, block: REHRSegPlanBlock) -> ConfigurationManager:
    config = deepcopy(configuration_manager.configuration)
    config.update(spacing=block.lr_spacing, patch_size=block.lr_patch_size)
    return ConfigurationManager(linear_along_thick_axis(config))


def hr_configuration(configuration_manager: ConfigurationManager) -> ConfigurationManager:
    return ConfigurationManager(linear_along_thick_axis(deepcopy(configuration_manager.configuration)))


def hr_properties(properties: dict, block: REHRSegPlanBlock, transpose_backward: Sequence[int]) -> dict:
    """The case's preprocessing properties as they would read for its HR grid (same FOV, its own r x along the LR
    axis: the model's r, or another for a case at another slice spacing, whose HR logits are resampled on export)."""
    r = case_r(properties, block)
    hr = deepcopy(properties)
    for key in ("shape_before_cropping", "shape_after_cropping_and_before_resampling"):
        hr[key] = (r * properties[key][0], *properties[key][1:])
    bbox = [list(b) for b in properties["bbox_used_for_cropping"]]
    bbox[0] = [r * bbox[0][0], r * bbox[0][1]]
    hr["bbox_used_for_cropping"] = bbox
    lr_numpy_axis = numpy_axis_of(block.lr_axis_sitk)
    hr["spacing"] = [s / r if i == lr_numpy_axis else s for i, s in enumerate(properties["spacing"])]
    stuff = properties.get("sitk_stuff")
    if stuff is not None:   # absent for arrays handed in without a header: the segmentation is returned, not written
        size_zyx = [properties["shape_before_cropping"][transpose_backward[i]] for i in range(3)]
        grid = hr_grid(Grid(tuple(size_zyx[::-1]), tuple(stuff["spacing"]), tuple(stuff["origin"]),
                            tuple(stuff["direction"])), block.lr_axis_sitk, r)
        hr["sitk_stuff"] = {**stuff, "spacing": grid.spacing, "origin": grid.origin, "direction": grid.direction}
    return hr


def fold_hr_into_channels(lr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """(B, K, D, ...) and (B, K, r*D, ...) -> (B, K + K*r, D, ...): HR sub-slice j of LR slice d at channel K + k*r + j."""
    b, k, d = lr.shape[:3]
    r = hr.shape[2] // d
    hr = hr.reshape(b, k, d, r, *hr.shape[3:]).transpose(2, 3).reshape(b, k * r, d, *hr.shape[3:])
    return torch.cat([lr, hr], 1)


def split_folded(folded: Union[torch.Tensor, np.ndarray], num_classes: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(K + K*r, D, ...) -> LR logits (K, D, ...) and HR logits (K, r*D, ...), in the accumulators' dtype (nnU-Net's
    half precision: its export takes them as they are, and a float32 copy of K x the HR voxels is what big volumes
    with many classes cannot afford)."""
    folded = torch.as_tensor(folded)
    k, d = num_classes, folded.shape[1]
    r = (folded.shape[0] - k) // k
    hr = folded[k:].reshape(k, r, d, *folded.shape[2:]).transpose(1, 2).reshape(k, r * d, *folded.shape[2:])
    return folded[:k], hr


def segmentation_in_input_space(segmentation: Union[np.ndarray, torch.Tensor], properties: dict,
                                plans_manager: PlansManager, label_manager) -> np.ndarray:
    """A segmentation on the case's preprocessed grid, with no resampling between that grid and the image's (the slab
    path), as nnU-Net's export gives it: cropping reverted, axes transposed back."""
    dtype = segmentation_dtype(label_manager)
    full = np.zeros(properties["shape_before_cropping"], dtype=dtype)
    full = insert_crop_into_image(full, np.asarray(segmentation).astype(dtype, copy=False),
                                  properties["bbox_used_for_cropping"])
    return full.transpose(plans_manager.transpose_backward)


def segmentation_dtype(label_manager):
    return np.uint8 if len(label_manager.foreground_labels) < 255 else np.uint16


def write_case(lr, hr, properties: dict, plans_manager: PlansManager,
               hr_configuration: ConfigurationManager, lr_configuration_manager: ConfigurationManager,
               block: REHRSegPlanBlock, dataset_json: dict, hr_file_truncated: str, lr_file_truncated: Optional[str],
               save_probabilities: bool, swap: Optional[Tuple[int, int]] = None) -> None:
    """Write one case (HR segmentation; LR too if asked; probabilities if asked) through a per-case temporary folder
    and rename the files into place, HR segmentation last: its presence means the case is complete. `lr` and `hr`
    are logits (K, ...), or segmentations (integer arrays, from the slab path) that are written as they are. `swap`:
    the two SimpleITK axes the input was reoriented by (a case acquired along another axis than the model's): the
    outputs are turned back into the input's own index order before they are moved into place."""
    partial = Path(hr_file_truncated).parent / PARTIAL / Path(hr_file_truncated).name
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    outputs = [("hr", hr, hr_properties(properties, block, plans_manager.transpose_backward), hr_configuration,
                Path(hr_file_truncated))]
    if lr_file_truncated is not None:
        outputs.insert(0, ("lr", lr, properties, lr_configuration_manager, Path(lr_file_truncated)))
    for stem, array, its_properties, configuration, _ in outputs:
        if is_segmentation(array):
            segmentation = segmentation_in_input_space(array, its_properties, plans_manager,
                                                       plans_manager.get_label_manager(dataset_json))
            plans_manager.image_reader_writer_class().write_seg(
                segmentation, str(partial / stem) + dataset_json["file_ending"], its_properties)
        else:
            export_prediction_from_logits(array, its_properties, configuration, plans_manager, dataset_json,
                                          str(partial / stem), save_probabilities)
    endings = ([".npz", ".pkl"] if save_probabilities else []) + [dataset_json["file_ending"]]
    label_manager = plans_manager.get_label_manager(dataset_json)
    record = case_record(Path(hr_file_truncated).name, partial / f"hr{dataset_json['file_ending']}",
                         head_disagreement(labels_of_output(lr, label_manager), labels_of_output(hr, label_manager),
                                           block.r, label_manager), label_manager)
    if swap is not None:
        for stem, *_ in outputs:
            swap_outputs_back(partial / stem, dataset_json["file_ending"], save_probabilities, *swap)
    for stem, _, _, _, target in outputs:
        target.parent.mkdir(parents=True, exist_ok=True)
        for ending in endings:
            os.replace(partial / f"{stem}{ending}", f"{target}{ending}")
    write_case_record(record, Path(hr_file_truncated).parent / REVIEW_FOLDER)
    shutil.rmtree(partial, ignore_errors=True)


def labels_of_output(array, label_manager) -> np.ndarray:
    """A segmentation as it is, or the segmentation of logits (K, ...)."""
    if is_segmentation(array):
        return np.asarray(array)
    segmentation = label_manager.convert_logits_to_segmentation(torch.as_tensor(array).float())
    return np.asarray(segmentation)


def swap_outputs_back(stem: Path, file_ending: str, probabilities: bool, a: int, b: int) -> None:
    """A case's written outputs (segmentation; .npz and .pkl probabilities) with SimpleITK axes a and b exchanged:
    the same world geometry in the input's own index order."""
    import pickle

    import SimpleITK as sitk

    seg_file = f"{stem}{file_ending}"
    image = sitk.ReadImage(seg_file)
    order = [0, 1, 2]
    order[a], order[b] = b, a
    sitk.WriteImage(sitk.PermuteAxes(image, order), seg_file)
    if probabilities:
        with np.load(f"{stem}.npz") as npz:
            arrays = {k: npz[k] for k in npz.files}
        arrays["probabilities"] = swap_array_axes(arrays["probabilities"], a, b, channel_first=True)
        np.savez_compressed(f"{stem}.npz", **arrays)
        with open(f"{stem}.pkl", "rb") as f:
            properties = pickle.load(f)
        with open(f"{stem}.pkl", "wb") as f:
            pickle.dump(swap_properties(properties, a, b), f)


def swap_properties(properties: dict, a: int, b: int) -> dict:
    """nnU-Net's case properties (numpy-order shapes, spacing and crop box; SimpleITK header) with SimpleITK axes a and
    b exchanged."""
    properties = deepcopy(properties)
    i, j = numpy_axis_of(a), numpy_axis_of(b)
    for key in ("shape_before_cropping", "shape_after_cropping_and_before_resampling", "spacing",
                "bbox_used_for_cropping"):
        if key in properties:
            values = list(properties[key])
            values[i], values[j] = values[j], values[i]
            properties[key] = type(properties[key])(values) if isinstance(properties[key], tuple) else values
    stuff = properties.get("sitk_stuff")
    if stuff is not None:
        # the header alone (its size is not kept in the properties' sitk_stuff and not needed for the swap)
        grid = axes_swap(Grid((0, 0, 0), tuple(stuff["spacing"]), tuple(stuff["origin"]), tuple(stuff["direction"])),
                         a, b)
        properties["sitk_stuff"] = {**stuff, "spacing": grid.spacing, "origin": grid.origin,
                                    "direction": grid.direction}
    return properties


def is_segmentation(array: Union[np.ndarray, torch.Tensor]) -> bool:
    if isinstance(array, torch.Tensor):
        return not array.is_floating_point()
    return np.issubdtype(array.dtype, np.integer)


def slabs(width: int, core: int, margin: int) -> List[Tuple[int, int, int, int]]:
    """Cover [0, width) with slabs of at most `core` voxels, each predicted with `margin` voxels of context on both
    sides: [(keep_from, keep_to, predict_from, predict_to)]."""
    bounds = []
    for start in range(0, width, core):
        stop = min(start + core, width)
        bounds.append((start, stop, max(0, start - margin), min(width, stop + margin)))
    return bounds


def export_case(prediction: Union[np.ndarray, Tuple[np.ndarray, np.ndarray]], properties: dict,
                plans_manager: PlansManager, hr_configuration: ConfigurationManager,
                lr_configuration_manager: ConfigurationManager, block: REHRSegPlanBlock, dataset_json: dict,
                hr_file_truncated: str, lr_file_truncated: Optional[str], save_probabilities: bool,
                swap: Optional[Tuple[int, int]] = None) -> Optional[str]:
    """write_case in an export worker, for what `REHRSegPredictor.predict_case` returns (folded logits, or LR and HR
    segmentations). Returns None, or the reason the case failed (one bad case must not stop the others)."""
    try:
        write_case(*unfold_prediction(prediction, plans_manager, dataset_json), properties, plans_manager,
                   hr_configuration, lr_configuration_manager, block, dataset_json, hr_file_truncated,
                   lr_file_truncated, save_probabilities, swap)
        return None
    except Exception as e:   # reported per case by the caller
        return f"{type(e).__name__}: {e}"


def unfold_prediction(prediction, plans_manager: PlansManager, dataset_json: dict):
    if isinstance(prediction, tuple):
        return prediction
    return split_folded(prediction, plans_manager.get_label_manager(dataset_json).num_segmentation_heads)


class _OutputChannels:
    """Stands in for the label manager inside nnU-Net's sliding window, which sizes its accumulator by it."""

    def __init__(self, num_segmentation_heads: int):
        self.num_segmentation_heads = num_segmentation_heads


class REHRSegPredictor(nnUNetPredictor):
    """nnU-Net's predictor for REHRSeg models: LR images in, HR (and optionally LR) segmentations out.

    Example::

        predictor = REHRSegPredictor(device=torch.device("cuda"), lr_output=True)
        predictor.initialize_from_trained_model_folder(model_folder, use_folds=(0, 1))
        failures = predictor.predict_from_files("LR_DIR", "OUT_DIR")   # {} when every case was written
        seg = predictor.predict_single_npy_array(image, properties)                    # HR segmentation as an array
    """

    def __init__(self, *args, lr_output: bool = False, max_logits_gb: float = DEFAULT_MAX_LOGITS_GB, **kwargs):
        """nnUNetPredictor's arguments; lr_output: also write the LR-grid segmentations (OUT/lr/); max_logits_gb: the
        largest logits accumulator (LR + HR logits of one piece of a case, half precision) held at once: a bigger case
        is predicted in slabs along an in-plane axis and only its segmentations are kept (unless probabilities are
        asked for, or the case is resampled on export: then it is predicted whole). A slab is at least two patches
        wide, which sets a floor on the accumulator for many classes."""
        super().__init__(*args, **kwargs)
        self.block: Optional[REHRSegPlanBlock] = None
        self.hr_configuration_manager: Optional[ConfigurationManager] = None
        self.lr_output = lr_output
        self.max_logits_gb = max_logits_gb
        self.failures = {}   # case file or id -> reason, for the last predict_from_files call
        self.reoriented = {}   # output file (truncated) -> the two SimpleITK axes its input was swapped by
        self._reorient_dir: Optional[str] = None
        self._last_swap: Optional[Tuple[int, int]] = None

    # ---------------------------------------------------------------- set-up
    def initialize_from_trained_model_folder(self, model_training_output_dir: str,
                                             use_folds: Union[Sequence[Union[int, str]], None],
                                             checkpoint_name: str = "checkpoint_final.pth"):
        """A trained REHRSeg model (nnUNet_results/<dataset>/<trainer>__<plans>__3d_fullres or an installed zip)."""
        folder = Path(model_training_output_dir)
        for name in ("plans.json", "dataset.json"):
            if not (folder / name).is_file():
                raise InputError(f"{folder / name} not found: no trained model there; check -d, -tr, -p, -c or -m")
        if use_folds is None:
            use_folds = self.auto_detect_available_folds(str(folder), checkpoint_name)
            if not use_folds:
                raise InputError(f"{folder}: no fold_X/{checkpoint_name}; train a fold first or pass -f/-chk")
        plans_manager = PlansManager(json.loads((folder / "plans.json").read_text()))
        dataset_json = json.loads((folder / "dataset.json").read_text())
        configuration_manager = plans_manager.get_configuration(CONFIGURATION)
        parameters, mirror_axes, trainer_name = [], None, None
        for fold in use_folds:
            fold = int(fold) if str(fold) != "all" else "all"
            path = folder / f"fold_{fold}" / checkpoint_name
            if not path.is_file():
                raise InputError(f"{path} not found: fold {fold} is not trained (or use -chk checkpoint_best.pth)")
            try:
                checkpoint = load_trained_checkpoint(path)
            except ValueError as e:
                raise InputError(str(e)) from None
            trainer_name = checkpoint.get("trainer_name", "")
            if not trainer_name.startswith("REHRSegTrainer"):
                raise InputError(f"{path}: trained with {trainer_name}, not a REHRSeg trainer; use nnUNetv2_predict "
                                 f"for stock nnU-Net models")
            parameters.append(checkpoint["network_weights"])
            mirror_axes = checkpoint.get("inference_allowed_mirroring_axes", mirror_axes)
        arch = configuration_manager
        network = build_rehrseg_network(arch.network_arch_class_name, arch.network_arch_init_kwargs,
                                        arch.network_arch_init_kwargs_req_import, len(dataset_json["channel_names"]),
                                        plans_manager.get_label_manager(dataset_json).num_segmentation_heads,
                                        deep_supervision=False, hr_head_form=hr_head_form_of(parameters[0])
                                        ).enable_rehrseg_forward()
        self.manual_initialization(network, plans_manager, configuration_manager, parameters, dataset_json,
                                   trainer_name, mirror_axes)

    def manual_initialization(self, network: torch.nn.Module, plans_manager: PlansManager,
                              configuration_manager: ConfigurationManager, parameters: Optional[List[dict]],
                              dataset_json: dict, trainer_name: str,
                              inference_allowed_mirroring_axes: Optional[Tuple[int, ...]]):
        """`configuration_manager` is the REHRSeg (HR) configuration; the predictor works on its LR grid."""
        self.block = REHRSegPlanBlock.from_configuration(configuration_manager.configuration)
        self.hr_configuration_manager = hr_configuration(configuration_manager)
        super().manual_initialization(network, plans_manager, lr_configuration(configuration_manager, self.block),
                                      parameters, dataset_json, trainer_name, inference_allowed_mirroring_axes)

    # ---------------------------------------------------------------- network and sliding window
    @torch.inference_mode()
    def _internal_maybe_mirror_and_predict(self, x: torch.Tensor) -> torch.Tensor:
        lr, hr, _ = self.network(x)
        mirror_axes = self.allowed_mirroring_axes if self.use_mirroring else None
        if mirror_axes:
            # flipping the LR axis maps HR sub-slices onto each other exactly (same field of view), so every flip
            # applies to both outputs
            dims = [a + 2 for a in mirror_axes]
            combos = [c for n in range(1, len(dims) + 1) for c in itertools.combinations(dims, n)]
            for axes in combos:
                lr_m, hr_m, _ = self.network(torch.flip(x, axes))
                lr = lr + torch.flip(lr_m, axes)
                hr = hr + torch.flip(hr_m, axes)
            lr, hr = lr / (len(combos) + 1), hr / (len(combos) + 1)
        return fold_hr_into_channels(lr, hr)

    @torch.inference_mode()
    def _internal_predict_sliding_window_return_logits(self, data: torch.Tensor, slicers, do_on_device: bool = True):
        labels = self.label_manager
        self.label_manager = _OutputChannels(labels.num_segmentation_heads * (1 + self.block.r))
        try:
            return super()._internal_predict_sliding_window_return_logits(data, slicers, do_on_device)
        finally:
            self.label_manager = labels

    def predict_case(self, data: Union[np.ndarray, torch.Tensor], properties: dict, save_probabilities: bool):
        """One preprocessed case (folds averaged): its folded logits (numpy), or, when its logits would not fit in
        max_logits_gb, its LR and HR segmentations, predicted slab by slab."""
        if self.needs_slabs(data.shape[1:], properties, save_probabilities):
            return self.predict_segmentations_by_slabs(torch.as_tensor(data))
        return self.predict_folded(torch.as_tensor(data)).numpy()

    def predict_folded(self, data: torch.Tensor) -> torch.Tensor:
        """Folded logits of preprocessed data on the CPU, averaged over the folds (or from the network's current
        weights when no fold parameters were given: a trainer's final validation)."""
        if self.list_of_parameters is None:
            return self.predict_sliding_window_return_logits(data).cpu()
        return self.predict_logits_from_preprocessed_data(data).cpu()

    def logits_gb(self, spatial_shape: Sequence[int]) -> float:
        """Size of the LR + HR logits accumulator (half precision) for an LR region of this shape."""
        channels = self.label_manager.num_segmentation_heads * (1 + self.block.r)
        return channels * float(np.prod(spatial_shape)) * 2 / 1e9

    def needs_slabs(self, spatial_shape: Sequence[int], properties: dict, save_probabilities: bool) -> bool:
        # probabilities are written whole; a case resampled on export needs its whole logits for the resampling
        resampled = tuple(properties["shape_after_cropping_and_before_resampling"]) != tuple(spatial_shape)
        return not save_probabilities and not resampled and self.logits_gb(spatial_shape) > self.max_logits_gb

    def predict_segmentations_by_slabs(self, data: torch.Tensor) -> Tuple[np.ndarray, np.ndarray]:
        """LR (D, H, W) and HR (r*D, H, W) segmentations of preprocessed data, predicted in slabs along the last
        (in-plane) axis, each with half a patch of context on both sides (every kept voxel has a tile centred on it,
        as in the whole-volume sliding window); only one slab's logits are held at a time, and the HR ones are reduced
        to labels straight from their folded layout (no unfolded copy)."""
        k, r = self.label_manager.num_segmentation_heads, self.block.r
        patch = self.configuration_manager.patch_size[-1]
        margin = patch // 2
        per_column = self.logits_gb((*data.shape[1:-1], 1))
        # at least half a patch kept per slab (a slab is then two patches wide, two tiles at nnU-Net's step of half a
        # patch): narrower slabs would not lower the accumulator below that, only add tiles
        core = max(patch // 2, int(self.max_logits_gb / per_column) - 2 * margin)
        dtype = segmentation_dtype(self.label_manager)
        depth = data.shape[1]
        lr_seg = np.zeros(data.shape[1:], dtype)
        hr_seg = np.zeros((r * depth, *data.shape[2:]), dtype)
        bounds = slabs(data.shape[-1], core, margin)
        for keep_from, keep_to, lo, hi in tqdm(bounds, desc="slabs", disable=not self.allow_tqdm or len(bounds) < 2):
            folded = self.predict_folded(data[..., lo:hi])
            keep = slice(keep_from - lo, keep_to - lo)
            lr_seg[..., keep_from:keep_to] = self.labels_of(folded[:k, ..., keep])
            for j in range(r):      # HR sub-slice j of every LR slice: channels k + c*r + j, c = 0..K-1
                hr_seg[j::r, ..., keep_from:keep_to] = self.labels_of(folded[k + j::r, ..., keep])
            del folded
        return lr_seg, hr_seg

    def labels_of(self, logits: torch.Tensor) -> np.ndarray:
        segmentation = self.label_manager.convert_logits_to_segmentation(logits)
        return segmentation.numpy() if isinstance(segmentation, torch.Tensor) else segmentation

    def predict_logits(self, data: Union[np.ndarray, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Preprocessed LR data (C, D, H, W) -> LR logits (K, D, H, W) and HR logits (K, r*D, H, W) on the CPU,
        averaged over the folds."""
        folded = self.predict_folded(torch.as_tensor(np.asarray(data, dtype=np.float32)))
        return split_folded(folded, self.label_manager.num_segmentation_heads)

    def export(self, lr_logits: torch.Tensor, hr_logits: torch.Tensor, properties: dict, hr_file_truncated: str,
               lr_file_truncated: Optional[str] = None, save_probabilities: bool = False) -> None:
        """Write one case from its LR and HR logits (as predict_logits returns them); raises if it cannot."""
        write_case(lr_logits, hr_logits, properties, self.plans_manager, self.hr_configuration_manager,
                   self.configuration_manager, self.block, self.dataset_json, hr_file_truncated, lr_file_truncated,
                   save_probabilities)

    def preprocess(self, image_files: List[str]) -> Tuple[np.ndarray, dict]:
        """nnU-Net's preprocessing of one case's LR image files on the LR grid: (data, properties)."""
        preprocessor = self.configuration_manager.preprocessor_class(verbose=self.verbose_preprocessing)
        data, _, properties = preprocessor.run_case(image_files, None, self.plans_manager, self.configuration_manager,
                                                    self.dataset_json)
        return data, properties

    # ---------------------------------------------------------------- files
    def prepare_inputs(self, files: List[str]) -> Tuple[List[str], Optional[Tuple[int, int]]]:
        """The files to predict a case from and the axes swap its outputs need: its own files and None, or, for a
        series acquired along another axis than the model's, copies reoriented to the model's thick axis and the two
        SimpleITK axes exchanged. Raises InputError (one line) for a case the model cannot take."""
        from nnunetv2_rehrseg.raw_dataset import read_channels

        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise InputError(f"{missing[0]}: missing channel; the model needs "
                             f"{len(self.dataset_json['channel_names'])} per case")
        _, grid = read_channels(list(files), os.path.basename(files[0]))
        geometry = case_geometry(grid, self.block, files[0])
        note = resampling_note(geometry, self.block, files[0])
        if note:
            logger.info(note)
        if geometry.axis == self.block.lr_axis_sitk:
            return list(files), None
        logger.info("%s: thick axis %d (SimpleITK order), the model's %d: predicted reoriented, written in the case's "
                    "own orientation", files[0], geometry.axis, self.block.lr_axis_sitk)
        return self.reoriented_copies(files, geometry.axis), (self.block.lr_axis_sitk, geometry.axis)

    def accepts(self, files: List[str]) -> Optional[List[str]]:
        """prepare_inputs for nnU-Net's file lists: the files to use (a swap recorded in self.reoriented by the
        caller), or None with the reason in self.failures."""
        try:
            used, swap = self.prepare_inputs(files)
            self._last_swap = swap
            return used
        except InputError as e:
            self.failures[files[0]] = str(e)
            return None

    def predict_case_files(self, files: List[str], hr_file_truncated: str, lr_file_truncated: Optional[str] = None,
                           save_probabilities: bool = False) -> None:
        """One case from its image files to its written outputs, in this process (final validation's path)."""
        try:
            used, swap = self.prepare_inputs(files)
            data, properties = self.preprocess(used)
            lr_logits, hr_logits = self.predict_logits(data)
            write_case(lr_logits, hr_logits, properties, self.plans_manager, self.hr_configuration_manager,
                       self.configuration_manager, self.block, self.dataset_json, hr_file_truncated,
                       lr_file_truncated, save_probabilities, swap)
        finally:
            self.remove_reoriented_copies()

    def remove_reoriented_copies(self) -> None:
        if self._reorient_dir is not None:
            shutil.rmtree(self._reorient_dir, ignore_errors=True)
            self._reorient_dir = None

    def reoriented_copies(self, files: List[str], axis: int) -> List[str]:
        """Copies of a case's channel files with its thick axis swapped into the model's (same world geometry), in a
        temporary folder that predict_from_files removes."""
        import tempfile

        import SimpleITK as sitk

        if self._reorient_dir is None:
            self._reorient_dir = tempfile.mkdtemp(prefix="rehrseg_reoriented_")
        order = [0, 1, 2]
        order[axis], order[self.block.lr_axis_sitk] = self.block.lr_axis_sitk, axis
        copies = []
        for f in files:
            target = os.path.join(self._reorient_dir, os.path.basename(f))
            sitk.WriteImage(sitk.PermuteAxes(sitk.ReadImage(f), order), target)
            copies.append(target)
        return copies

    def _manage_input_and_output_lists(self, list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files,
                                       folder_with_segs_from_prev_stage=None, overwrite=True, part_id=0, num_parts=1,
                                       save_probabilities=False):
        inputs, outputs, previous = super()._manage_input_and_output_lists(
            list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files,
            folder_with_segs_from_prev_stage, overwrite, part_id, num_parts, save_probabilities)
        kept_inputs, kept_outputs, kept_previous = [], [], []
        for i, files in enumerate(inputs):
            used = self.accepts(files)
            if used is None:
                continue
            if self._last_swap is not None and outputs is not None:
                self.reoriented[outputs[i]] = self._last_swap
            kept_inputs.append(used)
            kept_outputs.append(None if outputs is None else outputs[i])
            kept_previous.append(previous[i])
        return kept_inputs, None if outputs is None else kept_outputs, kept_previous

    def predict_from_files(self, list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files,
                           save_probabilities: bool = False, overwrite: bool = True,
                           num_processes_preprocessing: int = default_num_processes,
                           num_processes_segmentation_export: int = default_num_processes,
                           folder_with_segs_from_prev_stage: str = None, num_parts: int = 1, part_id: int = 0) -> dict:
        """nnU-Net's predict_from_files (same signature: nnU-Net records it); with self.lr_output the LR-grid
        segmentations go to OUT/lr/ too. Returns the cases that were not written ({input file or output name:
        reason}); every other case is."""
        if isinstance(list_of_lists_or_source_folder, str) and not os.path.isdir(list_of_lists_or_source_folder):
            raise InputError(f"{list_of_lists_or_source_folder}: input folder not found; check -i")
        self.failures, self.reoriented = {}, {}
        try:
            super().predict_from_files(list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files,
                                       save_probabilities, overwrite, num_processes_preprocessing,
                                       num_processes_segmentation_export, folder_with_segs_from_prev_stage, num_parts,
                                       part_id)
        finally:
            self.remove_reoriented_copies()
        if isinstance(output_folder_or_list_of_truncated_output_files, str):
            try:   # empty unless another part is still writing into the same folder
                os.rmdir(Path(output_folder_or_list_of_truncated_output_files) / PARTIAL)
            except OSError:
                pass
        if self.lr_output and isinstance(output_folder_or_list_of_truncated_output_files, str):
            lr_folder = Path(output_folder_or_list_of_truncated_output_files) / LR_SUBFOLDER
            lr_folder.mkdir(parents=True, exist_ok=True)
            # the LR outputs are an nnU-Net prediction folder of their own (ensembling, postprocessing)
            for name in ("dataset.json", "plans.json"):
                shutil.copyfile(Path(output_folder_or_list_of_truncated_output_files) / name, lr_folder / name)
        return self.failures

    def lr_target(self, hr_file_truncated: Optional[str]) -> Optional[str]:
        if not self.lr_output or hr_file_truncated is None:
            return None
        return os.path.join(os.path.dirname(hr_file_truncated), LR_SUBFOLDER, os.path.basename(hr_file_truncated))

    def predict_from_data_iterator(self, data_iterator, save_probabilities: bool = False,
                                   num_processes_segmentation_export: int = default_num_processes):
        """nnU-Net's loop with REHRSeg's export: each case is written as soon as it is done; a case that fails is
        recorded in self.failures and the others go on."""
        results = []
        with multiprocessing.get_context("spawn").Pool(max(1, num_processes_segmentation_export)) as export_pool:
            workers = list(export_pool._pool)
            pending = []
            for preprocessed in data_iterator:
                data = preprocessed["data"]
                if isinstance(data, str):
                    path = data
                    data = torch.from_numpy(np.load(path))
                    os.remove(path)
                ofile, properties = preprocessed["ofile"], preprocessed["data_properties"]
                while check_workers_alive_and_busy(export_pool, workers, [p for _, p in pending], allowed_num_queued=2):
                    sleep(0.1)
                try:
                    prediction = self.predict_case(data, properties, save_probabilities)
                except RuntimeError as e:   # e.g. out of memory on the CPU too: this case only
                    self.failures[ofile or f"array {len(results)}"] = f"prediction failed: {e}"
                    empty_cache(self.device)
                    continue
                if ofile is not None:
                    job = export_pool.apply_async(export_case, (
                        prediction, properties, self.plans_manager, self.hr_configuration_manager,
                        self.configuration_manager, self.block, self.dataset_json, ofile, self.lr_target(ofile),
                        save_probabilities, self.reoriented.get(ofile)))
                else:
                    job = export_pool.apply_async(hr_segmentation_from_prediction, (
                        prediction, properties, self.plans_manager, self.hr_configuration_manager, self.block,
                        self.dataset_json, save_probabilities))
                pending.append((ofile, job))
            for ofile, job in pending:
                while True:
                    if not all(w.is_alive() for w in workers):
                        raise RuntimeError("an export worker died, most likely killed for lack of CPU memory; "
                                           "use fewer -nps processes")
                    try:
                        result = job.get(timeout=0.1)
                        break
                    except multiprocessing.TimeoutError:
                        pass
                if ofile is not None and result is not None:
                    self.failures[ofile] = result
                results.append(result)
        if isinstance(data_iterator, MultiThreadedAugmenter):
            data_iterator._finish()
        compute_gaussian.cache_clear()
        empty_cache(self.device)
        return results

    def predict_single_npy_array(self, input_image: np.ndarray, image_properties: dict,
                                 segmentation_previous_stage: np.ndarray = None, output_file_truncated: str = None,
                                 save_or_return_probabilities: bool = False):
        """One LR image as an array (C, z, y, x as nnU-Net's reader gives it) with its properties ('spacing'; plus
        'sitk_stuff' to write files): the HR segmentation (and probabilities), or files if output_file_truncated. The
        array's thick axis must be the model's (files acquired along another axis are reoriented by
        predict_from_files)."""
        geometry = slice_geometry(list(image_properties["spacing"])[::-1], self.block.hr_spacing[0], "the array")
        if geometry.axis != self.block.lr_axis_sitk:
            raise InputError(f"the array's thick axis is {geometry.axis} (SimpleITK order), the model's "
                             f"{self.block.lr_axis_sitk}: swap its axes first, or predict it from its file")
        adapter = PreprocessAdapterFromNpy([input_image], [segmentation_previous_stage], [image_properties],
                                           [output_file_truncated], self.plans_manager, self.dataset_json,
                                           self.configuration_manager, num_threads_in_multithreaded=1,
                                           verbose=self.verbose)
        item = next(adapter)
        prediction = self.predict_case(item["data"], item["data_properties"], save_or_return_probabilities)
        if output_file_truncated is not None:
            lr, hr = unfold_prediction(prediction, self.plans_manager, self.dataset_json)
            self.export(lr, hr, item["data_properties"], output_file_truncated, self.lr_target(output_file_truncated),
                        save_or_return_probabilities)
            return None
        return hr_segmentation_from_prediction(prediction, item["data_properties"], self.plans_manager,
                                               self.hr_configuration_manager, self.block, self.dataset_json,
                                               save_or_return_probabilities)


def hr_segmentation_from_prediction(prediction, properties: dict, plans_manager: PlansManager,
                                    hr_configuration: ConfigurationManager, block: REHRSegPlanBlock,
                                    dataset_json: dict, return_probabilities: bool = False):
    """The HR segmentation (and probabilities) as arrays on the HR grid, in the input's axis order, from what
    `REHRSegPredictor.predict_case` returns."""
    label_manager = plans_manager.get_label_manager(dataset_json)
    _, hr = unfold_prediction(prediction, plans_manager, dataset_json)
    properties = hr_properties(properties, block, plans_manager.transpose_backward)
    if is_segmentation(hr):
        return segmentation_in_input_space(hr, properties, plans_manager, label_manager)
    return convert_predicted_logits_to_segmentation_with_correct_shape(
        hr, plans_manager, hr_configuration, label_manager, properties, return_probabilities)
