"""Thin REHRSegTrainer variants: ablations and training budgets, one override each."""
from typing import Tuple

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_rehrseg.trainers.REHRSegTrainer import REHRSegTrainer


class REHRSegTrainer_noKD(REHRSegTrainer):
    kd_spatial_weight = 0.0
    kd_correlation_weight = 0.0


class REHRSegTrainer_noUncertainty(REHRSegTrainer):
    uncertainty_weighting = False


class REHRSegTrainer_noPseudoData(REHRSegTrainer):
    """Only the real LR phase: one LR volume per case instead of r."""
    random_phase = False


class REHRSegTrainer_paperR5(REHRSegTrainer):
    """The LR-head loss as in the paper: uncertainty-weighted CE without the Dice term."""
    lr_dice_weight = 0.0


class REHRSegTrainer_noResidualHead(REHRSegTrainer):
    """HR logits from the decoder features alone, not as a correction to the upsampled LR logits."""
    hr_head_residual = False


class REHRSegTrainer_transposedHead(REHRSegTrainer):
    """The HR head's first form: a transposed convolution, then a 3x3x3 convolution on the HR grid (r x the voxels at
    a narrow width; the costliest form on a CPU: step 1.85x stock's against about 1.23x for the default, README)."""
    hr_head_form = "transposed"


class REHRSegTrainer_subpixelHead(REHRSegTrainer):
    """The HR head's second form: a 3x3x3 convolution on the LR grid, depth-to-space, the readout on the HR grid."""
    hr_head_form = "subpixel"


class REHRSegTrainer_subsliceHead(REHRSegTrainer):
    """The HR head's third form: a hidden layer between the (3, 1, 1) convolution and the readout, on the LR grid."""
    hr_head_form = "subslice"


class REHRSegTrainer_kdEveryStep(REHRSegTrainer):
    """Distillation on every training step at the KD weights as given (the default: every 4th step, 4x the weights)."""
    kd_every_n_steps = 1


class REHRSegTrainer_annotatedLR(REHRSegTrainer):
    """The LR head learns from the annotation alone (phase-0 samples, drawn half of the time), the HR head from every
    phase's pseudo-HR labels."""
    annotated_phase_probability = 0.5
    lr_loss_annotated_phase_only = True


class REHRSegTrainer_fromLR(REHRSegTrainer):
    """REHRSeg started from an LR nnU-Net checkpoint (`-pretrained_weights`, the paper's protocol): the same trainer
    under its own name, so that its model folder sits beside the one trained from scratch."""


class REHRSegTrainer_fromLRSkipSegLayers(REHRSegTrainer):
    """`-pretrained_weights` as nnU-Net loads them: every segmentation layer skipped, even for the same labels."""
    pretrained_lr_seg_layers = False


class _TrainingBudget:
    """Put before a trainer class: sets nnU-Net's budget on the instance after its __init__ (nnU-Net assigns these
    there, so class attributes of the same names would be overwritten)."""
    budget: Tuple[int, int, int] = None   # epochs, iterations per epoch, validation iterations per epoch

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = self.budget
        # a checkpoint every few epochs (nnU-Net: every 50), so that an interrupted short run continues with --c
        self.save_every = max(1, min(self.save_every, self.num_epochs // 6))


def iterations_per_epoch(trainer_name: str) -> int:
    """Training iterations per epoch of a trainer by name: a budget variant's, else nnU-Net's default 250."""
    budget = getattr(globals().get(trainer_name), "budget", None)
    return budget[1] if budget else 250


class REHRSegTrainer_5epochs(_TrainingBudget, REHRSegTrainer):
    budget = (5, 250, 50)


class REHRSegTrainer_50epochs(_TrainingBudget, REHRSegTrainer):
    budget = (50, 250, 50)


class REHRSegTrainer_fast(_TrainingBudget, REHRSegTrainer):
    """The CPU-practical budget of the demo (with -pl REHRSegPlannerCPU: about 12 minutes on 2 cores). 800 steps:
    the lateral ventricles, a compact label told from the CSF only by context, appear after 550-600 steps."""
    budget = (16, 50, 5)


class nnUNetTrainer_rehrsegFastBudget(_TrainingBudget, nnUNetTrainer):
    """Stock nnU-Net with REHRSegTrainer_fast's budget: the benchmark's baseline arms."""
    budget = REHRSegTrainer_fast.budget


class nnUNetTrainer_rehrsegTinyBudget(_TrainingBudget, nnUNetTrainer):
    """Stock nnU-Net with REHRSegTrainer_tiny's budget (miniature demo runs)."""
    budget = (2, 2, 1)


class REHRSegTrainer_tiny(_TrainingBudget, REHRSegTrainer):
    """Two epochs of two iterations: for tests and smoke runs."""
    budget = (2, 2, 1)


class REHRSegTrainer_noKD_tiny(REHRSegTrainer_tiny):
    kd_spatial_weight = 0.0
    kd_correlation_weight = 0.0


class REHRSegTrainer_selftest(_TrainingBudget, REHRSegTrainer):
    """rehrseg_selftest on a GPU: 6 x 25 steps on its tiny generated dataset."""
    budget = (6, 25, 5)


class nnUNetTrainer_rehrsegSelftestBudget(_TrainingBudget, nnUNetTrainer):
    budget = REHRSegTrainer_selftest.budget


class REHRSegTrainer_selftestCPU(_TrainingBudget, REHRSegTrainer):
    """rehrseg_selftest on a CPU (and in CI): 4 x 5 steps."""
    budget = (4, 5, 1)


class nnUNetTrainer_rehrsegSelftestCPUBudget(_TrainingBudget, nnUNetTrainer):
    budget = REHRSegTrainer_selftestCPU.budget


class REHRSegTrainer_1500steps(_TrainingBudget, REHRSegTrainer):
    """30 x 50 steps: every learned arm of `benchmarks/run_all.py -preset fast` (CPU plans). Chosen from learning
    curves on the benchmark's data: at 1000 steps the ventricle label appeared at 550-600 steps (REHRSeg) and 750-800
    (stock LR nnU-Net), too late for either curve to level off within the run (README)."""
    budget = (30, 50, 5)


class nnUNetTrainer_rehrseg1500StepsBudget(_TrainingBudget, nnUNetTrainer):
    budget = REHRSegTrainer_1500steps.budget


class REHRSegTrainer_3000steps(_TrainingBudget, REHRSegTrainer):
    """60 x 50 steps: `benchmarks/run_all.py -preset converged`. At 1500 steps only the arms that had seen 3000 (5b:
    arm 1's 1500 + 1500) or learn fastest (the HR upper bound) levelled off; the others still rose 1.3-3.1 points
    over their last quarter (README)."""
    budget = (60, 50, 5)


class nnUNetTrainer_rehrseg3000StepsBudget(_TrainingBudget, nnUNetTrainer):
    budget = REHRSegTrainer_3000steps.budget


class REHRSegTrainer_6000steps(_TrainingBudget, REHRSegTrainer):
    """120 x 50 steps, twice the converged preset's: separates what more steps buy (closer fit to the pseudo-HR
    targets) from what the targets allow (README: the HR head's ceiling)."""
    budget = (120, 50, 5)


# every variant above at every named budget, e.g. REHRSegTrainer_noKD_1500steps: thin classes that nnU-Net finds by
# name like hand-written ones (the demo's budget: _fast; the benchmark's: _1500steps and _3000steps; a GPU's: _50epochs)
VARIANTS_WITH_BUDGETS = (REHRSegTrainer_noKD, REHRSegTrainer_noUncertainty, REHRSegTrainer_noPseudoData,
                         REHRSegTrainer_paperR5, REHRSegTrainer_noResidualHead, REHRSegTrainer_annotatedLR,
                         REHRSegTrainer_fromLR, REHRSegTrainer_fromLRSkipSegLayers, REHRSegTrainer_transposedHead,
                         REHRSegTrainer_subpixelHead, REHRSegTrainer_subsliceHead, REHRSegTrainer_kdEveryStep)
BUDGETS = {"fast": REHRSegTrainer_fast.budget, "1500steps": REHRSegTrainer_1500steps.budget,
           "3000steps": REHRSegTrainer_3000steps.budget, "50epochs": REHRSegTrainer_50epochs.budget}


def _with_budget(variant: type, suffix: str) -> type:
    name = f"{variant.__name__}_{suffix}"
    return type(name, (_TrainingBudget, variant), {"budget": BUDGETS[suffix], "__module__": __name__,
                                                   "__qualname__": name, "__doc__": variant.__doc__})


for _variant in VARIANTS_WITH_BUDGETS:
    for _suffix in BUDGETS:
        _budgeted = _with_budget(_variant, _suffix)
        globals()[_budgeted.__name__] = _budgeted
