"""LR volume in, HR segmentation out: nnU-Net preprocessing on the LR grid, a sliding window over LR tiles that
accumulates LR and HR logits (Gaussian-weighted, mirror TTA), and nnU-Net's own export for both grids.

The REHRSeg plans' configuration describes the HR data (spacing, patch); the LR grid is the same configuration with
the `rehrseg` block's LR spacing and LR patch. The HR export reuses nnU-Net's export with the case's properties
mapped onto the HR grid (r x along the LR axis, geometry derived from the LR header).
"""
import itertools
import json
import logging
from copy import deepcopy
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from acvl_utils.cropping_and_padding.padding import pad_nd_image

from nnunetv2.inference.export_prediction import export_prediction_from_logits
from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.utilities.helpers import dummy_context
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunetv2_rehrseg.checkpoint import load_trained_checkpoint
from nnunetv2_rehrseg.errors import InputError
from nnunetv2_rehrseg.geometry import Grid, hr_grid, numpy_axis_of
from nnunetv2_rehrseg.segmenter.network import build_rehrseg_network, hr_head_form_of
from nnunetv2_rehrseg.segmenter.plans import CONFIGURATION, REHRSegPlanBlock

logger = logging.getLogger(__name__)


def check_input_grid(grid: Grid, block: REHRSegPlanBlock, source: str) -> Optional[str]:
    """Refuse inputs the model cannot map to a correct HR grid; a warning when the slice spacing is resampled."""
    spacing = np.asarray(grid.spacing, dtype=float)
    in_plane = np.delete(spacing, block.lr_axis_sitk)
    if spacing[block.lr_axis_sitk] < 1.5 * in_plane.max():
        raise InputError(f"{source}: spacing {tuple(spacing.round(3))} has no thick axis {block.lr_axis_sitk} (SimpleITK "
                         f"order) as the model was trained on; reorient it or use a model trained for this axis")
    ratio = spacing[block.lr_axis_sitk] / block.hr_spacing[0]
    if round(ratio) != block.r:
        raise InputError(f"{source}: slice spacing {spacing[block.lr_axis_sitk]:.3g} mm is {ratio:.2f} x the model's "
                         f"HR spacing {block.hr_spacing[0]:.3g} mm; the model maps r={block.r} thin slices per thick "
                         f"slice. Train a model for this slice spacing")
    if abs(spacing[block.lr_axis_sitk] - block.lr_spacing[0]) > 1e-3 * block.lr_spacing[0]:
        return (f"{source}: slice spacing {spacing[block.lr_axis_sitk]:.4g} mm differs from the model's "
                f"{block.lr_spacing[0]:.4g} mm: resampled along the thick axis to {block.lr_spacing[0]:.4g} mm")
    return None


def lr_configuration(configuration_manager: ConfigurationManager, block: REHRSegPlanBlock) -> ConfigurationManager:
    config = deepcopy(configuration_manager.configuration)
    config.update(spacing=block.lr_spacing, patch_size=block.lr_patch_size)
    return ConfigurationManager(config)


def hr_properties(properties: dict, block: REHRSegPlanBlock, transpose_backward: Sequence[int]) -> dict:
    """The case's preprocessing properties as they would read for its HR grid (same FOV, r x along the LR axis)."""
    r = block.r
    hr = deepcopy(properties)
    for key in ("shape_before_cropping", "shape_after_cropping_and_before_resampling"):
        hr[key] = (r * properties[key][0], *properties[key][1:])
    bbox = [list(b) for b in properties["bbox_used_for_cropping"]]
    bbox[0] = [r * bbox[0][0], r * bbox[0][1]]
    hr["bbox_used_for_cropping"] = bbox
    lr_numpy_axis = numpy_axis_of(block.lr_axis_sitk)
    hr["spacing"] = [s / r if i == lr_numpy_axis else s for i, s in enumerate(properties["spacing"])]
    stuff = properties["sitk_stuff"]
    size_zyx = [properties["shape_before_cropping"][transpose_backward[i]] for i in range(3)]
    grid = hr_grid(Grid(tuple(size_zyx[::-1]), tuple(stuff["spacing"]), tuple(stuff["origin"]),
                        tuple(stuff["direction"])), block.lr_axis_sitk, r)
    hr["sitk_stuff"] = {**stuff, "spacing": grid.spacing, "origin": grid.origin, "direction": grid.direction}
    return hr


class REHRSegPredictor:
    def __init__(self, network: torch.nn.Module, plans_manager: PlansManager,
                 configuration_manager: ConfigurationManager, dataset_json: dict, device: torch.device,
                 tile_step_size: float = 0.5, mirror_axes: Optional[Sequence[int]] = (0, 1, 2),
                 fold_weights: Optional[List[dict]] = None):
        self.network = network
        self.fold_weights = fold_weights or [None]   # None: use the network's current weights
        self.plans_manager = plans_manager
        self.configuration_manager = configuration_manager
        self.dataset_json = dataset_json
        self.device = device
        self.block = REHRSegPlanBlock.from_configuration(configuration_manager.configuration)
        self.lr_configuration = lr_configuration(configuration_manager, self.block)
        self.tile_step_size = tile_step_size
        self.mirror_axes = tuple(mirror_axes or ())

    @classmethod
    def from_trained_model_folder(cls, folder: str, folds: Sequence[str], checkpoint_name: str,
                                  device: torch.device, tile_step_size: float = 0.5,
                                  use_mirroring: bool = True) -> "REHRSegPredictor":
        """A trained REHRSeg model (nnUNet_results/<dataset>/<trainer>__<plans>__3d_fullres), one or more folds."""
        folder = Path(folder)
        for name in ("plans.json", "dataset.json"):
            if not (folder / name).is_file():
                raise InputError(f"{folder / name} not found: no trained model there; check -d, -tr, -p, -c")
        plans_manager = PlansManager(json.loads((folder / "plans.json").read_text()))
        dataset_json = json.loads((folder / "dataset.json").read_text())
        configuration_manager = plans_manager.get_configuration(CONFIGURATION)
        weights, mirror_axes = [], None
        for fold in folds:
            path = folder / (f"fold_{fold}" if fold != "all" else "fold_all") / checkpoint_name
            if not path.is_file():
                raise InputError(f"{path} not found: fold {fold} is not trained (or use -chk checkpoint_best.pth)")
            try:
                checkpoint = load_trained_checkpoint(path)
            except ValueError as e:
                raise InputError(str(e)) from None
            if not checkpoint.get("trainer_name", "").startswith("REHRSegTrainer"):
                raise InputError(f"{path}: trained with {checkpoint.get('trainer_name')}, not a REHRSeg trainer; "
                                 f"use nnUNetv2_predict for stock nnU-Net models")
            weights.append(checkpoint["network_weights"])
            mirror_axes = checkpoint.get("inference_allowed_mirroring_axes", mirror_axes)
        arch = configuration_manager
        num_inputs = len(dataset_json["channel_names"])
        num_outputs = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
        network = build_rehrseg_network(arch.network_arch_class_name, arch.network_arch_init_kwargs,
                                        arch.network_arch_init_kwargs_req_import, num_inputs, num_outputs,
                                        deep_supervision=False, hr_head_form=hr_head_form_of(weights[0])
                                        ).enable_rehrseg_forward().to(device).eval()
        network.load_state_dict(weights[0])
        return cls(network, plans_manager, configuration_manager, dataset_json, device, tile_step_size,
                   mirror_axes if use_mirroring else None, weights if len(weights) > 1 else None)

    def preprocess(self, image_files: List[str]) -> Tuple[np.ndarray, dict]:
        data, _, properties = DefaultPreprocessor(verbose=False).run_case(
            image_files, None, self.plans_manager, self.lr_configuration, self.dataset_json)
        return data, properties

    def _forward_with_mirroring(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        lr, hr, _ = self.network(x)
        # flipping the LR axis maps HR sub-slices onto each other exactly (same field of view), so every flip applies
        # to both outputs
        combos = [c for n in range(1, len(self.mirror_axes) + 1) for c in itertools.combinations(self.mirror_axes, n)]
        for axes in combos:
            dims = [a + 2 for a in axes]
            lr_m, hr_m, _ = self.network(torch.flip(x, dims))
            lr = lr + torch.flip(lr_m, dims)
            hr = hr + torch.flip(hr_m, dims)
        return lr / (len(combos) + 1), hr / (len(combos) + 1)

    @torch.inference_mode()
    def predict_logits(self, data: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
        """(C, D, H, W) preprocessed LR data -> LR logits (K, D, H, W) and HR logits (K, r*D, H, W), on the CPU;
        folds are ensembled by summing their Gaussian-weighted logits (the same normalisation divides them out)."""
        r, patch = self.block.r, tuple(self.block.lr_patch_size)
        padded, slicer = pad_nd_image(torch.from_numpy(np.ascontiguousarray(data)).float(), patch, "constant",
                                      {"value": 0}, True)
        shape = padded.shape[1:]
        hr_patch = (r * patch[0], *patch[1:])
        g_lr = compute_gaussian(patch, value_scaling_factor=10, dtype=torch.float32, device=self.device)
        g_hr = compute_gaussian(hr_patch, value_scaling_factor=10, dtype=torch.float32, device=self.device)
        k = self.plans_manager.get_label_manager(self.dataset_json).num_segmentation_heads
        lr_sum = torch.zeros((k, *shape), device=self.device)
        lr_weight = torch.zeros(shape, device=self.device)
        hr_sum = torch.zeros((k, r * shape[0], *shape[1:]), device=self.device)
        hr_weight = torch.zeros((r * shape[0], *shape[1:]), device=self.device)
        steps = compute_steps_for_sliding_window(shape, patch, self.tile_step_size)
        amp = torch.autocast(self.device.type) if self.device.type == "cuda" else dummy_context()
        tiles = list(itertools.product(*steps))
        for weights, start in itertools.product(self.fold_weights, tiles):
            if weights is not None and start == tiles[0]:
                self.network.load_state_dict(weights)
            lr_tile = tuple(slice(s, s + p) for s, p in zip(start, patch))
            hr_tile = (slice(r * start[0], r * (start[0] + patch[0])), *lr_tile[1:])
            x = padded[(slice(None), *lr_tile)][None].to(self.device)
            with amp:
                lr, hr = self._forward_with_mirroring(x)
            lr_sum[(slice(None), *lr_tile)] += lr[0].float() * g_lr
            lr_weight[lr_tile] += g_lr
            hr_sum[(slice(None), *hr_tile)] += hr[0].float() * g_hr
            hr_weight[hr_tile] += g_hr
        lr_logits = (lr_sum / lr_weight)[(slice(None), *slicer[1:])]
        hr_slicer = (slice(r * slicer[1].start, r * slicer[1].stop), *slicer[2:])
        hr_logits = (hr_sum / hr_weight)[(slice(None), *hr_slicer)]
        return lr_logits.cpu(), hr_logits.cpu()

    def export(self, lr_logits: torch.Tensor, hr_logits: torch.Tensor, properties: dict, hr_file_truncated: str,
               lr_file_truncated: Optional[str] = None, save_probabilities: bool = False) -> None:
        """Segmentations (and optionally probabilities) on the HR grid and, if asked, on the input's LR grid."""
        for target in (hr_file_truncated, lr_file_truncated):
            if target is not None:
                Path(target).parent.mkdir(parents=True, exist_ok=True)
        export_prediction_from_logits(hr_logits, hr_properties(properties, self.block,
                                                               self.plans_manager.transpose_backward),
                                      self.configuration_manager, self.plans_manager, self.dataset_json,
                                      hr_file_truncated, save_probabilities)
        if lr_file_truncated is not None:
            export_prediction_from_logits(lr_logits, properties, self.lr_configuration, self.plans_manager,
                                          self.dataset_json, lr_file_truncated, save_probabilities)
