"""nnU-Net trainers of REHRSeg (found by nnU-Net through nnUNet_extTrainer; see `rehrseg_env`)."""
from nnunetv2_rehrseg.trainers.REHRSegTrainer import REHRSegTrainer
from nnunetv2_rehrseg.trainers.REHRSegTrainer_variants import (REHRSegTrainer_50epochs, REHRSegTrainer_5epochs,
                                                               REHRSegTrainer_fast, REHRSegTrainer_noKD,
                                                               REHRSegTrainer_noKD_tiny, REHRSegTrainer_noPseudoData,
                                                               REHRSegTrainer_noUncertainty, REHRSegTrainer_tiny,
                                                               nnUNetTrainer_rehrsegFastBudget,
                                                               nnUNetTrainer_rehrsegTinyBudget)

__all__ = ["REHRSegTrainer", "REHRSegTrainer_noKD", "REHRSegTrainer_noUncertainty", "REHRSegTrainer_noPseudoData",
           "REHRSegTrainer_5epochs", "REHRSegTrainer_50epochs", "REHRSegTrainer_fast", "REHRSegTrainer_tiny",
           "REHRSegTrainer_noKD_tiny", "nnUNetTrainer_rehrsegFastBudget",
           "nnUNetTrainer_rehrsegTinyBudget"]
