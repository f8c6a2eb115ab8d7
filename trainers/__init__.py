"""nnU-Net trainers of REHRSeg (found by nnU-Net through nnUNet_extTrainer; see `rehrseg_env`)."""
from nnunetv2_rehrseg.trainers.REHRSegTrainer import REHRSegTrainer
from nnunetv2_rehrseg.trainers.REHRSegTrainer_variants import (
    REHRSegTrainer_5epochs, REHRSegTrainer_50epochs, REHRSegTrainer_fast, REHRSegTrainer_noKD,
    REHRSegTrainer_noKD_50epochs, REHRSegTrainer_noKD_fast, REHRSegTrainer_noKD_tiny, REHRSegTrainer_noPseudoData,
    REHRSegTrainer_noPseudoData_50epochs, REHRSegTrainer_noPseudoData_fast, REHRSegTrainer_noUncertainty,
    REHRSegTrainer_noUncertainty_50epochs, REHRSegTrainer_noUncertainty_fast, REHRSegTrainer_tiny,
    nnUNetTrainer_rehrsegFastBudget, nnUNetTrainer_rehrsegTinyBudget, REHRSegTrainer_quick, REHRSegTrainer_noKD_quick,
    REHRSegTrainer_noUncertainty_quick, REHRSegTrainer_noPseudoData_quick, nnUNetTrainer_rehrsegQuickBudget,
    REHRSegTrainer_selftest, REHRSegTrainer_selftestCPU, nnUNetTrainer_rehrsegSelftestBudget,
    nnUNetTrainer_rehrsegSelftestCPUBudget)

__all__ = ["REHRSegTrainer", "REHRSegTrainer_noKD", "REHRSegTrainer_noUncertainty", "REHRSegTrainer_noPseudoData",
           "REHRSegTrainer_5epochs", "REHRSegTrainer_50epochs", "REHRSegTrainer_fast", "REHRSegTrainer_tiny",
           "REHRSegTrainer_noKD_tiny", "REHRSegTrainer_noKD_fast", "REHRSegTrainer_noUncertainty_fast",
           "REHRSegTrainer_noPseudoData_fast", "REHRSegTrainer_noKD_50epochs", "REHRSegTrainer_noUncertainty_50epochs",
           "REHRSegTrainer_noPseudoData_50epochs", "nnUNetTrainer_rehrsegFastBudget",
           "nnUNetTrainer_rehrsegTinyBudget", "REHRSegTrainer_quick", "REHRSegTrainer_noKD_quick",
           "REHRSegTrainer_noUncertainty_quick", "REHRSegTrainer_noPseudoData_quick", "nnUNetTrainer_rehrsegQuickBudget",
           "REHRSegTrainer_selftest", "REHRSegTrainer_selftestCPU", "nnUNetTrainer_rehrsegSelftestBudget",
           "nnUNetTrainer_rehrsegSelftestCPUBudget"]
