"""REHRSegPlanner: nnU-Net planning on the pseudo-HR data, with the network topology of the LR patch.

nnU-Net's planners read nnUNet_raw/<dataset> and the dataset's fingerprint. The REHRSeg planner reads the pseudo-HR
dataset of stage 1 (nnUNet_preprocessed/<dataset>/rehrseg/pseudo_hr) and its own fingerprint instead, under the
user's dataset id, and writes only its plans file (REHRSegPlans.json, 3d_fullres only): the files nnU-Net keeps
once per dataset (dataset.json, dataset_fingerprint.json) stay stock LR files.

The segmenter runs on the LR grid, so its topology is planned for an LR patch at the LR spacing (nnU-Net's own
get_plans_for_configuration, any planner's network class); the configuration's spacing and patch size describe the
HR data the loader crops (r x the LR patch along the LR axis).
"""
import logging
import os
from pathlib import Path
from typing import Optional, Type, Union

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import load_json

from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape
from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

from nnunetv2_rehrseg.errors import InputError
from nnunetv2_rehrseg.geometry import numpy_axis_of
from nnunetv2_rehrseg.planners.plans import CONFIGURATION, HR_SCALE_KWARG, PLANS_NAME, REHRSegPlanBlock
from nnunetv2_rehrseg.layout import Stage1Folder
from nnunetv2_rehrseg.segmenter.network import hr_head_feature_map_size
from nnunetv2_rehrseg.selfsr.stage1 import Stage1Settings


logger = logging.getLogger(__name__)


class REHRSegPlannerMixin:
    """Put in front of any nnU-Net ExperimentPlanner subclass (see `rehrseg_planner_class`)."""

    def __init__(self, dataset_name_or_id: Union[str, int], plans_name: str = PLANS_NAME, **kwargs):
        # the base reads the raw LR dataset.json and the stock LR fingerprint (both must exist); the planner then
        # switches to the pseudo-HR dataset and its fingerprint
        super().__init__(dataset_name_or_id, plans_name=plans_name, **kwargs)
        folder = Stage1Folder.of(self.dataset_name)
        self.stage1 = Stage1Settings.load(folder.settings)
        self.raw_dataset_folder = str(folder.pseudo_hr)
        self.dataset_json = load_json(str(folder.pseudo_hr / "dataset.json"))
        self.dataset = get_filenames_of_train_images_and_targets(self.raw_dataset_folder, self.dataset_json)
        fingerprint = folder.fingerprint
        if not fingerprint.is_file():
            raise InputError(f"{fingerprint} is missing: run rehrseg_plan_and_preprocess -d {dataset_name_or_id}")
        self.dataset_fingerprint = load_json(str(fingerprint))

    def report_hr_head_memory(self, lr_patch, plan: dict) -> float:
        """nnU-Net sized the LR patch and batch for the LR network; the HR head and its loss (r x the patch's voxels,
        per class) come on top. The plan is kept as nnU-Net makes it for the LR data, so that an LR nnU-Net's
        checkpoint fits (-pretrained_weights); the extra share is reported, with the -gpu_memory_target that leaves
        room for it (a smaller patch, whose topology may then differ from a stock LR model's)."""
        arch = plan["architecture"]
        from nnunetv2.utilities.label_handling.label_handling import LabelManager

        # the network's outputs: one per class or region, none for the ignore label
        classes = LabelManager(self.dataset_json["labels"],
                               self.dataset_json.get("regions_class_order")).num_segmentation_heads
        lr_network = self.static_estimate_VRAM_usage(lr_patch, len(self.dataset_json["channel_names"]), classes,
                                                     arch["network_class_name"], arch["arch_kwargs"],
                                                     arch["_kw_requires_import"])
        top_features = arch["arch_kwargs"]["features_per_stage"][0]
        factor = 1 + hr_head_feature_map_size(lr_patch, classes, self.stage1.r, top_features) / lr_network
        if factor > 1.1:
            logger.warning("the HR head and its loss add about %.0f%% to nnU-Net's memory estimate of the planned LR "
                           "patch %s; if training runs out of GPU memory, plan with -gpu_memory_target %.1f", 100 *
                           (factor - 1), lr_patch, self.UNet_vram_target_GB / factor)
        return factor

    def determine_transpose(self):
        """The LR axis goes first, as nnU-Net does with the largest spacing of anisotropic data."""
        lr = numpy_axis_of(self.stage1.lr_axis)
        forward = [lr] + [i for i in range(3) if i != lr]
        backward = [forward.index(i) for i in range(3)]
        return forward, backward

    def determine_fullres_target_spacing(self) -> np.ndarray:
        """The pseudo-HR data's own (median) spacing: stage 1 already chose the HR grid."""
        return np.median(np.vstack(self.dataset_fingerprint["spacings"]), 0)

    def generate_data_identifier(self, configuration_name: str) -> str:
        # ResEnc planners reuse 'nnUNetPlans_3d_fullres', which here is stock LR data
        return self.plans_identifier + "_" + configuration_name

    def plan_experiment(self) -> dict:
        r = self.stage1.r
        transpose_forward, transpose_backward = self.determine_transpose()
        spacing = self.determine_fullres_target_spacing()
        hr_spacing = spacing[transpose_forward]
        shapes = [compute_new_shape(shape, s, spacing) for s, shape in
                  zip(self.dataset_fingerprint["spacings"], self.dataset_fingerprint["shapes_after_crop"])]
        hr_median_shape = np.median(shapes, 0)[transpose_forward]
        lr_spacing = hr_spacing.copy()
        lr_spacing[0] *= r
        lr_median_shape = hr_median_shape.copy()
        lr_median_shape[0] = max(1, round(hr_median_shape[0] / r))
        n_voxels = float(np.prod(lr_median_shape, dtype=np.float64) * self.dataset_json["numTraining"])

        plan = self.get_plans_for_configuration(lr_spacing, lr_median_shape,
                                                self.generate_data_identifier(CONFIGURATION), n_voxels, {})
        lr_patch = [int(i) for i in plan["patch_size"]]
        self.report_hr_head_memory(lr_patch, plan)
        block = REHRSegPlanBlock(r=r, lr_axis=0, lr_axis_sitk=self.stage1.lr_axis, slice_profile=self.stage1.profile,
                                 slice_thickness=self.stage1.slice_thickness, fwhm=self.stage1.fwhm,
                                 hr_spacing=[float(i) for i in hr_spacing], lr_spacing=[float(i) for i in lr_spacing],
                                 lr_patch_size=lr_patch)
        plan.update({"spacing": hr_spacing, "patch_size": [r * lr_patch[0]] + lr_patch[1:],
                     "median_image_size_in_voxels": hr_median_shape, "batch_dice": False,
                     "rehrseg": block.to_dict()})
        plan["architecture"]["arch_kwargs"][HR_SCALE_KWARG] = r
        fingerprint = self.dataset_fingerprint
        plans = {
            "dataset_name": self.dataset_name,
            "plans_name": self.plans_identifier,
            "original_median_spacing_after_transp": [float(i) for i in hr_spacing],
            "original_median_shape_after_transp": [int(round(i)) for i in
                                                   np.median(fingerprint["shapes_after_crop"], 0)[transpose_forward]],
            "image_reader_writer": self.determine_reader_writer().__name__,
            "transpose_forward": [int(i) for i in transpose_forward],
            "transpose_backward": [int(i) for i in transpose_backward],
            "configurations": {CONFIGURATION: plan},
            "experiment_planner_used": self.__class__.__name__,
            "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": fingerprint["foreground_intensity_properties_per_channel"],
        }
        self.plans = plans
        self.save_plans(plans)
        return plans


class REHRSegPlanner(REHRSegPlannerMixin, ExperimentPlanner):
    pass


class CPUBudgetMixin:
    """A CPU-practical segmenter: 16..128 features and nnU-Net's patch search run with a 1/8 GB budget, used here as
    a compute budget (training steps short enough for a 2-core CPU). Its topology differs from
    default plans, so -pretrained_weights of a default-width model do not fit."""

    def __init__(self, dataset_name_or_id: Union[str, int], *args, **kwargs):
        super().__init__(dataset_name_or_id, *args, **kwargs)
        self.UNet_base_num_features = 16
        self.UNet_max_features_3d = 128
        if kwargs.get("gpu_memory_target_in_gb") is None:
            self.UNet_vram_target_GB = 0.125


class REHRSegPlannerCPU(CPUBudgetMixin, REHRSegPlanner):
    """`-pl REHRSegPlannerCPU`: REHRSeg plans at the CPU budget."""


class nnUNetPlannerCPU(CPUBudgetMixin, ExperimentPlanner):
    """Stock nnU-Net plans at the same CPU budget (the benchmark's stock arms; plans name nnUNetPlans_rehrsegCPU)."""

    def __init__(self, dataset_name_or_id: Union[str, int], plans_name: str = "nnUNetPlans_rehrsegCPU", **kwargs):
        super().__init__(dataset_name_or_id, plans_name=plans_name, **kwargs)


def rehrseg_planner_class(base_name: str = "ExperimentPlanner") -> Type[ExperimentPlanner]:
    """REHRSeg planning on top of an nnU-Net planner chosen by name (-pl), e.g. nnUNetPlannerResEncM."""
    if base_name in ("ExperimentPlanner", "REHRSegPlanner"):
        return REHRSegPlanner
    if base_name == "REHRSegPlannerCPU":
        return REHRSegPlannerCPU
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    base = recursive_find_python_class(str(Path(nnunetv2.__path__[0]) / "experiment_planning"), base_name,
                                       current_module="nnunetv2.experiment_planning")
    if base is None or not issubclass(base, ExperimentPlanner):
        raise InputError(f"-pl {base_name}: no such nnU-Net experiment planner (e.g. ExperimentPlanner, "
                         f"nnUNetPlannerResEncM, nnUNetPlannerResEncL)")
    return type(f"REHRSeg{base.__name__}", (REHRSegPlannerMixin, base), {})


def plan_dataset(dataset_id: int, planner_class: Type[ExperimentPlanner], gpu_memory_target: Optional[float] = None,
                 overwrite_plans_name: Optional[str] = None) -> str:
    """nnU-Net's plan_experiment_dataset with any planner class; returns the plans name. nnUNet_n_proc_DA=0 (a
    training setting) is read as 1 meanwhile: nnU-Net's VRAM estimate passes it to torch.set_num_threads."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiment_dataset

    previous = os.environ.get("nnUNet_n_proc_DA")
    if previous == "0":
        os.environ["nnUNet_n_proc_DA"] = "1"
    try:
        return plan_experiment_dataset(dataset_id, planner_class, gpu_memory_target,
                                       overwrite_plans_name=overwrite_plans_name)[1]
    finally:
        if previous == "0":
            os.environ["nnUNet_n_proc_DA"] = previous
