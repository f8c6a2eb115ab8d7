"""REHRSeg plans for a made-up dataset (one channel, thick axis given, LR patch given) and a stand-in network, without
planning or training: for inference tests and benchmarks that need a predictor but no trained model."""
from typing import Sequence

import torch

from nnunetv2_rehrseg.geometry import numpy_axis_of
from nnunetv2_rehrseg.planners.plans import REHRSegPlanBlock

DATASET_JSON = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "outer": 1, "inner": 2},
                "numTraining": 1, "file_ending": ".nii.gz"}


def dataset_json(num_classes: int) -> dict:
    """DATASET_JSON with labels 0 .. num_classes - 1."""
    return {**DATASET_JSON, "labels": {"background": 0, **{f"label{i}": i for i in range(1, num_classes)}}}


def make_plans(lr_axis_sitk: int, r: int, hr_spacing_sitk: Sequence[float], lr_patch: Sequence[int]) -> dict:
    lr_numpy = numpy_axis_of(lr_axis_sitk)
    forward = [lr_numpy] + [i for i in range(3) if i != lr_numpy]
    spacing_zyx = list(hr_spacing_sitk[::-1])
    hr_spacing = [spacing_zyx[i] for i in forward]
    block = REHRSegPlanBlock(r=r, lr_axis=0, lr_axis_sitk=lr_axis_sitk, slice_profile="gaussian",
                             slice_thickness=r * hr_spacing[0], fwhm=float(r), hr_spacing=hr_spacing,
                             lr_spacing=[r * hr_spacing[0], *hr_spacing[1:]], lr_patch_size=list(lr_patch))
    resampling = {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None}
    config = {"data_identifier": "REHRSegPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
              "batch_size": 2, "patch_size": [r * lr_patch[0], *lr_patch[1:]], "median_image_size_in_voxels": [1, 1, 1],
              "spacing": hr_spacing, "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
              "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": resampling,
              "resampling_fn_seg": "resample_data_or_seg_to_shape",
              "resampling_fn_seg_kwargs": {**resampling, "is_seg": True},
              "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
              "resampling_fn_probabilities_kwargs": resampling, "batch_dice": False, "rehrseg": block.to_dict(),
              "architecture": {"network_class_name": "unused", "arch_kwargs": {}, "_kw_requires_import": []}}
    return {"dataset_name": "Dataset999_Geometry", "plans_name": "REHRSegPlans",
            "original_median_spacing_after_transp": hr_spacing, "original_median_shape_after_transp": [1, 1, 1],
            "image_reader_writer": "SimpleITKIO", "transpose_forward": forward,
            "transpose_backward": [forward.index(i) for i in range(3)], "configurations": {"3d_fullres": config},
            "experiment_planner_used": "REHRSegPlanner", "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": {"0": {"mean": 0, "std": 1, "percentile_00_5": 0,
                                                                  "percentile_99_5": 1}}}


class StandInNetwork(torch.nn.Module):
    """LR logits and, per HR sub-slice, logits of their own (a sub-slice put in the wrong place shows), from fixed
    random weights. hidden=0: one 1x1x1 convolution, pointwise, so every tile layout gives the same logits; hidden>0:
    a 3x3x3 convolution of that width first (a network's per-tile work, for timings)."""

    def __init__(self, r: int, classes: int = 3, hidden: int = 0, seed: int = 0):
        super().__init__()
        self.r, self.classes = r, classes
        layers = [torch.nn.Conv3d(1, hidden, 3, padding=1), torch.nn.ReLU()] if hidden else []
        self.layers = torch.nn.Sequential(*layers, torch.nn.Conv3d(hidden or 1, classes * (1 + r), 1))
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator))

    def forward(self, x):
        y = self.layers(x)
        b, _, d, h, w = y.shape
        hr = y[:, self.classes:].reshape(b, self.classes, self.r, d, h, w).transpose(2, 3)
        return y[:, :self.classes], hr.reshape(b, self.classes, self.r * d, h, w), None
