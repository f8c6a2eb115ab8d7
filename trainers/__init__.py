"""nnU-Net trainers of REHRSeg (found by nnU-Net through nnUNet_extTrainer; see `rehrseg_env`)."""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_rehrseg.trainers import REHRSegTrainer_variants as _variants
from nnunetv2_rehrseg.trainers.REHRSegTrainer import REHRSegTrainer

# every public trainer class of the variants module, so that a new variant cannot be left out of the export
_VARIANTS = {name: obj for name, obj in vars(_variants).items()
             if isinstance(obj, type) and issubclass(obj, nnUNetTrainer) and not name.startswith("_")
             and obj not in (nnUNetTrainer, REHRSegTrainer)}
globals().update(_VARIANTS)
__all__ = ["REHRSegTrainer", *sorted(_VARIANTS)]
