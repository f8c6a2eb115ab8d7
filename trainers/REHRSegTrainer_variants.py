"""The plugin's thin REHRSegTrainer variants: the start-from-LR form, soft targets and training budgets, one override
each.
Ablations and the benchmark's budgets live with the benchmark (benchmarks/research_trainers.py)."""
from typing import Optional, Tuple

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_rehrseg.trainers.REHRSegTrainer import REHRSegTrainer


class REHRSegTrainer_fromLR(REHRSegTrainer):
    """REHRSeg started from an LR nnU-Net checkpoint (`-pretrained_weights`, the paper's protocol): the same trainer
    under its own name, so that its model folder sits beside the one trained from scratch."""


class REHRSegTrainer_softTargets(REHRSegTrainer):
    """The HR head toward soft pseudo-HR targets (half the pseudo-HR label's one-hot, half stage 1's class
    probabilities): on the benchmark, the same Dice and a better HD95 at some LR-head Dice (docs/training.md)."""
    soft_targets = True


class TrainingBudget:
    """Put before a trainer class: sets nnU-Net's budget on the instance after its __init__ (nnU-Net assigns these
    there, so class attributes of the same names would be overwritten)."""
    budget: Tuple[int, int, int] = None   # epochs, iterations per epoch, validation iterations per epoch

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = self.budget
        # a checkpoint every few epochs (nnU-Net: every 50), so that an interrupted short run continues with --c
        self.save_every = max(1, min(self.save_every, self.num_epochs // 6))


def declared_budget(trainer_name: str, *namespaces: dict) -> Optional[Tuple[int, int, int]]:
    """The budget of a budget variant by name (looked up in `namespaces`, then here); None for a trainer that
    declares none (nnU-Net's own, the user's)."""
    for namespace in (*namespaces, globals()):
        budget = getattr(namespace.get(trainer_name), "budget", None)
        if budget:
            return budget
    return None


def training_steps(trainer_name: str, *namespaces: dict) -> Optional[int]:
    """Training steps (epochs x iterations) of a budget variant by name; None where no budget is declared."""
    budget = declared_budget(trainer_name, *namespaces)
    return budget[0] * budget[1] if budget else None


def iterations_per_epoch(trainer_name: str, *namespaces: dict) -> int:
    """Training iterations per epoch of a trainer by name: a budget variant's, else nnU-Net's default 250."""
    budget = declared_budget(trainer_name, *namespaces)
    return budget[1] if budget else 250


class REHRSegTrainer_5epochs(TrainingBudget, REHRSegTrainer):
    budget = (5, 250, 50)


class REHRSegTrainer_50epochs(TrainingBudget, REHRSegTrainer):
    budget = (50, 250, 50)


class REHRSegTrainer_fast(TrainingBudget, REHRSegTrainer):
    """The CPU-practical budget of the demo (with -pl REHRSegPlannerCPU): 800 steps, enough for the demo's compact
    labels to appear (docs/results-demo.md)."""
    budget = (16, 50, 5)


class nnUNetTrainer_rehrsegFastBudget(TrainingBudget, nnUNetTrainer):
    """Stock nnU-Net with REHRSegTrainer_fast's budget: the benchmark's baseline arms."""
    budget = REHRSegTrainer_fast.budget


class nnUNetTrainer_rehrsegDemoBaselineBudget(TrainingBudget, nnUNetTrainer):
    """The demo's arm 1 on a CPU: twice REHRSegTrainer_fast's steps. At the same 800 steps the stock LR nnU-Net
    sometimes has not learned the smallest label yet, and a comparison with a baseline that misses a label measures
    the baseline's luck; REHRSeg then starts from this checkpoint and trains its own 800 steps on top."""
    budget = (2 * REHRSegTrainer_fast.budget[0], *REHRSegTrainer_fast.budget[1:])


class nnUNetTrainer_rehrsegTinyBudget(TrainingBudget, nnUNetTrainer):
    """Stock nnU-Net with REHRSegTrainer_tiny's budget (miniature demo runs)."""
    budget = (2, 2, 1)


class REHRSegTrainer_tiny(TrainingBudget, REHRSegTrainer):
    """Two epochs of two iterations: for tests and smoke runs."""
    budget = (2, 2, 1)


class REHRSegTrainer_selftest(TrainingBudget, REHRSegTrainer):
    """rehrseg_selftest on a GPU: 6 x 25 steps on its tiny generated dataset."""
    budget = (6, 25, 5)


class nnUNetTrainer_rehrsegSelftestBudget(TrainingBudget, nnUNetTrainer):
    budget = REHRSegTrainer_selftest.budget


class REHRSegTrainer_selftestCPU(TrainingBudget, REHRSegTrainer):
    """rehrseg_selftest on a CPU (and in CI): 4 x 5 steps."""
    budget = (4, 5, 1)


class nnUNetTrainer_rehrsegSelftestCPUBudget(TrainingBudget, nnUNetTrainer):
    budget = REHRSegTrainer_selftestCPU.budget
