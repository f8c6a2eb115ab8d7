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
