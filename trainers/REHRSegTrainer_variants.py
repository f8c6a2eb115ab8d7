"""Thin REHRSegTrainer variants: ablations and training budgets, one override each."""
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


class REHRSegTrainer_5epochs(REHRSegTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 5


class REHRSegTrainer_50epochs(REHRSegTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 50


class REHRSegTrainer_fast(REHRSegTrainer):
    """The CPU-practical budget of the demo: 40 epochs x 50 iterations, 10 validation batches per epoch."""
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 40
        self.num_iterations_per_epoch = 50
        self.num_val_iterations_per_epoch = 10


class nnUNetTrainer_rehrsegFastBudget(nnUNetTrainer):
    """Stock nnU-Net with REHRSegTrainer_fast's budget: the benchmark's baseline arms."""
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 40
        self.num_iterations_per_epoch = 50
        self.num_val_iterations_per_epoch = 10


class REHRSegTrainer_tiny(REHRSegTrainer):
    """Two epochs of two iterations: for tests and smoke runs."""
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 2
        self.num_iterations_per_epoch = 2
        self.num_val_iterations_per_epoch = 1


class REHRSegTrainer_noKD_tiny(REHRSegTrainer_tiny):
    kd_spatial_weight = 0.0
    kd_correlation_weight = 0.0
