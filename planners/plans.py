"""The `rehrseg` block of a REHRSegPlans configuration: what stage 2 needs beyond nnU-Net's own plan.

In `REHRSegPlans.json` -> configurations -> 3d_fullres:
  spacing, patch_size   the HR (pseudo-HR data) grid, LR axis first (nnU-Net's transpose puts it there)
  architecture          the topology planned for the LR patch at the LR spacing, plus `hr_scale` in arch_kwargs
  rehrseg               this block
"""
from dataclasses import asdict, dataclass, fields
from typing import List

PLANS_NAME = "REHRSegPlans"
CONFIGURATION = "3d_fullres"
# arch_kwargs key carrying the HR head's upsampling along the LR axis: build_network_architecture is static and only
# sees the architecture entry of the plans, so r travels there
HR_SCALE_KWARG = "hr_scale"


@dataclass
class REHRSegPlanBlock:
    r: int
    lr_axis: int                  # array axis after nnU-Net's transpose (always 0: the LR axis goes first)
    lr_axis_sitk: int             # the thick axis of the raw images in SimpleITK index order (0 = x)
    slice_profile: str
    slice_thickness: float        # mm
    fwhm: float                   # slice-profile FWHM in HR voxels
    hr_spacing: List[float]       # after transpose
    lr_spacing: List[float]       # after transpose: hr_spacing with the LR axis times r
    lr_patch_size: List[int]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "REHRSegPlanBlock":
        names = {f.name for f in fields(cls)}
        missing = names - set(d)
        if missing:
            raise KeyError(f"rehrseg plans block lacks {sorted(missing)}")
        return cls(**{k: d[k] for k in names})

    @classmethod
    def from_configuration(cls, configuration: dict, plans_file: str = "the plans") -> "REHRSegPlanBlock":
        if "rehrseg" not in configuration:
            raise KeyError(f"{plans_file} has no 'rehrseg' block in this configuration: it was not made by "
                           f"rehrseg_plan_and_preprocess (REHRSeg trainers need -p {PLANS_NAME})")
        return cls.from_dict(configuration["rehrseg"])


def stock_lr_plans(plans: dict) -> dict:
    """Stock nnU-Net plans for the LR grid with the same topology: LR spacing and patch, no HR head (for fair
    side-by-side timing and baselines)."""
    from copy import deepcopy

    lr = deepcopy(plans)
    config = lr["configurations"][CONFIGURATION]
    block = REHRSegPlanBlock.from_configuration(config)
    config.update(spacing=block.lr_spacing, patch_size=block.lr_patch_size)
    config["architecture"]["arch_kwargs"].pop(HR_SCALE_KWARG, None)
    config.pop("rehrseg")
    return lr


def load_dataset_plans(dataset_name_or_id, plans_name: str = PLANS_NAME):
    """(plans, dataset.json) of a dataset preprocessed by rehrseg_plan_and_preprocess."""
    import json
    from pathlib import Path

    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    base = Path(str(nnUNet_preprocessed)) / maybe_convert_to_dataset_name(dataset_name_or_id)
    return (json.loads((base / f"{plans_name}.json").read_text()),
            json.loads((base / "dataset.json").read_text()))


def save_stock_lr_plans(dataset_name_or_id, plans_name: str, rehrseg_plans: str = PLANS_NAME) -> None:
    """Write stock_lr_plans of the dataset's REHRSeg plans (`rehrseg_plans`) as `plans_name`.json (own data
    identifier), ready for nnU-Net's preprocessing: the LR nnU-Net baseline with REHRSeg's topology, patch and budget
    (rehrseg_plan_and_preprocess -stock_lr_plans)."""
    import json
    from pathlib import Path

    from nnunetv2.paths import nnUNet_preprocessed

    plans, _ = load_dataset_plans(dataset_name_or_id, rehrseg_plans)
    stock = stock_lr_plans(plans)
    stock["plans_name"] = plans_name
    stock["configurations"][CONFIGURATION]["data_identifier"] = f"{plans_name}_{CONFIGURATION}"
    path = Path(str(nnUNet_preprocessed)) / plans["dataset_name"] / f"{plans_name}.json"
    path.write_text(json.dumps(stock, indent=1))
