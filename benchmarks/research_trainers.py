"""Research trainers of the benchmark (not installed with the plugin): ablations, earlier HR head forms, the
benchmark's step budgets and every ablation at every budget. nnU-Net finds them through benchmarks/nnunet_ext
(listed in nnUNet_extTrainer by the benchmark scripts and the tests)."""
import os
from pathlib import Path

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_rehrseg.trainers.REHRSegTrainer import REHRSegTrainer
from nnunetv2_rehrseg.trainers.REHRSegTrainer_variants import (REHRSegTrainer_50epochs, REHRSegTrainer_fast,
                                                               REHRSegTrainer_fromLR, REHRSegTrainer_softTargets,
                                                               REHRSegTrainer_tiny,
                                                               TrainingBudget)
from nnunetv2_rehrseg.trainers.REHRSegTrainer_variants import iterations_per_epoch as _plugin_iterations_per_epoch


class REHRSegTrainer_fastScratch(REHRSegTrainer_fast):
    """REHRSegTrainer_fast under another name: a from-scratch arm beside the one started from the LR nnU-Net (same
    plans, its own results folder; benchmarks/mixed_thickness.py)."""


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
    a narrow width: the costliest form, docs/results-speed.md)."""
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


class REHRSegTrainer_hardTargets(REHRSegTrainer):
    """The HR head toward the hard pseudo-HR labels alone (REHRSeg before soft targets)."""
    soft_targets = False


class REHRSegTrainer_softTargetsOnly(REHRSegTrainer):
    """The HR head toward stage 1's class probabilities alone (the written labels only where a crop is padded)."""
    soft_targets = True
    soft_target_weight = 1.0


class REHRSegTrainer_annotatedPhaseHalf(REHRSegTrainer):
    """The annotated phase drawn half of the time (1/r by default), both heads learning from every phase: the middle
    way between the r phases of pseudo-data and the real LR phase alone (noPseudoData), for the LR head."""
    annotated_phase_probability = 0.5


class REHRSegTrainer_fromLRSoftTargets(REHRSegTrainer_softTargets):
    """Soft targets started from an LR nnU-Net checkpoint (`-pretrained_weights`): arm 5b's soft counterpart, under
    its own name so that its model folder sits beside the one trained from scratch."""


class REHRSegTrainer_fromLRSkipSegLayers(REHRSegTrainer):
    """`-pretrained_weights` as nnU-Net loads them: every segmentation layer skipped, even for the same labels."""
    pretrained_lr_seg_layers = False


class REHRSegTrainer_noKD_tiny(REHRSegTrainer_tiny):
    kd_spatial_weight = 0.0
    kd_correlation_weight = 0.0


class REHRSegTrainer_1500steps(TrainingBudget, REHRSegTrainer):
    """30 x 50 steps: every learned arm of `benchmarks/run_all.py -preset fast` (CPU plans). Chosen from learning
    curves on the benchmark's data: at 1000 steps the ventricle label appeared at 550-600 steps (REHRSeg) and 750-800
    (stock LR nnU-Net), too late for either curve to level off within the run (docs/results-benchmark.md)."""
    budget = (30, 50, 5)


class nnUNetTrainer_rehrseg1500StepsBudget(TrainingBudget, nnUNetTrainer):
    budget = REHRSegTrainer_1500steps.budget


class REHRSegTrainer_3000steps(TrainingBudget, REHRSegTrainer):
    """60 x 50 steps: `benchmarks/run_all.py -preset converged`. At 1500 steps only the arms that had seen 3000 (5b:
    arm 1's 1500 + 1500) or learn fastest (the HR upper bound) levelled off; the others still rose 1.3-3.1 points
    over their last quarter (docs/results-benchmark.md)."""
    budget = (60, 50, 5)


class nnUNetTrainer_rehrseg3000StepsBudget(TrainingBudget, nnUNetTrainer):
    budget = REHRSegTrainer_3000steps.budget


class REHRSegTrainer_6000steps(TrainingBudget, REHRSegTrainer):
    """120 x 50 steps, twice the converged preset's: separates what more steps buy (closer fit to the pseudo-HR
    targets) from what the targets allow (docs/results-benchmark.md: the HR head's ceiling)."""
    budget = (120, 50, 5)


# every variant above at every named budget, e.g. REHRSegTrainer_noKD_1500steps: thin classes that nnU-Net finds by
# name like hand-written ones (the demo's budget: _fast; the benchmark's: _1500steps and _3000steps; a GPU's: _50epochs)
VARIANTS_WITH_BUDGETS = (REHRSegTrainer_noKD, REHRSegTrainer_noUncertainty, REHRSegTrainer_noPseudoData,
                         REHRSegTrainer_paperR5, REHRSegTrainer_noResidualHead, REHRSegTrainer_annotatedLR,
                         REHRSegTrainer_fromLR, REHRSegTrainer_fromLRSkipSegLayers, REHRSegTrainer_transposedHead,
                         REHRSegTrainer_subpixelHead, REHRSegTrainer_subsliceHead, REHRSegTrainer_kdEveryStep,
                         REHRSegTrainer_softTargets, REHRSegTrainer_softTargetsOnly, REHRSegTrainer_hardTargets,
                         REHRSegTrainer_annotatedPhaseHalf, REHRSegTrainer_fromLRSoftTargets)
BUDGETS = {"fast": REHRSegTrainer_fast.budget, "1500steps": REHRSegTrainer_1500steps.budget,
           "3000steps": REHRSegTrainer_3000steps.budget, "50epochs": REHRSegTrainer_50epochs.budget}


def _with_budget(variant: type, suffix: str) -> type:
    name = f"{variant.__name__}_{suffix}"
    return type(name, (TrainingBudget, variant), {"budget": BUDGETS[suffix], "__module__": __name__,
                                                   "__qualname__": name, "__doc__": variant.__doc__})


for _variant in VARIANTS_WITH_BUDGETS:
    for _suffix in BUDGETS:
        _budgeted = _with_budget(_variant, _suffix)
        globals()[_budgeted.__name__] = _budgeted


def iterations_per_epoch(trainer_name: str) -> int:
    """Training iterations per epoch of a plugin or research trainer by name."""
    return _plugin_iterations_per_epoch(trainer_name, globals())


SHIM_FOLDER = Path(__file__).resolve().parent / "nnunet_ext"


def with_research_trainers(ext_trainer: str) -> str:
    """An nnUNet_extTrainer value that lets nnU-Net find the plugin's and the research trainers."""
    from nnunetv2_rehrseg.trainer_registration import with_plugin_trainers

    folders = [f for f in with_plugin_trainers(ext_trainer).split(os.pathsep) if f]
    return os.pathsep.join(folders + ([str(SHIM_FOLDER)] if str(SHIM_FOLDER) not in folders else []))


__all__ = sorted(name for name, obj in globals().items() if isinstance(obj, type) and issubclass(obj, nnUNetTrainer)
                 and obj.__module__ == __name__)
