"""REHRSegTrainer: nnU-Net training on pseudo-HR data, LR-grid network with an HR head.

In the loader: HR patches (phase-aligned, with a margin of whole thick slices) -> pseudo-LR input by slice-profile
blur and r-fold subsampling -> nnU-Net's augmentation on the LR grid -> pseudo-LR labels (thick-slice majority of the
HR labels) and deep-supervision targets. Per training step, on the device: network on the LR grid -> losses:
uncertainty-weighted CE + soft Dice on the deep-supervised LR head vs the pseudo-LR labels, Dice+CE on the HR head
(upsampled LR logits + a learned correction) vs the pseudo-HR labels (with soft_targets: vs their blend with stage
1's class probabilities), and on every kd_every_n_steps-th step (at that
many times the KD weights) spatial and correlation distillation from the frozen self-SR encoder (which sees the
pseudo-LR image and one-hot pseudo-LR labels). The teacher lives outside `self.network` and is built in
on_train_start; the KD adapter joins the optimizer and is saved under an extra checkpoint key.
"""
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from torch import autocast
from torch import distributed as dist

from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.helpers import dummy_context, softmax_helper_dim1

from nnunetv2_rehrseg.segmenter.augmentation import for_lr_grid_samples
from nnunetv2_rehrseg.checkpoint import SELFSR_CHECKPOINT_KEY, load_safe, load_trained_checkpoint, save_atomic
from nnunetv2_rehrseg.image_io import copy_atomic
from nnunetv2_rehrseg.layout import Stage1Folder
from nnunetv2_rehrseg.segmenter.dataloading import REHRSegDataLoader, REHRSegDataset
from nnunetv2_rehrseg.segmenter.distillation import (StructuralDistillation, all_reduce_gradients,
                                                      broadcast_parameters, teacher_stage_for)
from nnunetv2_rehrseg.segmenter.label_targets import LabelTargets
from nnunetv2_rehrseg.segmenter.losses import (IgnoringUncertainty, SoftDiceCE, UncertaintyWeightedBCE,
                                               UncertaintyWeightedCE, deep_supervision_weights)
from nnunetv2_rehrseg.segmenter.network import build_rehrseg_network, hr_head_form_of, unwrap
from nnunetv2_rehrseg.planners.plans import REHRSegPlanBlock
from nnunetv2_rehrseg.segmenter import pretrained
from nnunetv2_rehrseg.planners.preprocessing import load_stamp
from nnunetv2_rehrseg.progress import plot_loss_terms
from nnunetv2_rehrseg.segmenter.pseudo_lr import PseudoLRBatch, lr_training_targets, margin_slices
from nnunetv2_rehrseg.selfsr.config import SelfSRConfig
from nnunetv2_rehrseg.selfsr.training import network_from_checkpoint

SELFSR_COPY = "selfsr_checkpoint.pth"          # beside plans.json in the trained model's folder
KD_CHECKPOINT_KEY = "rehrseg_kd_adapter"
pretrained.install()   # -pretrained_weights of an LR nnU-Net of the same labels: its LR segmentation layers too


class REHRSegTrainer(nnUNetTrainer):
    ### REHRSeg settings (class attributes; nnU-Net's own hyperparameters are set on the instance in __init__)
    uncertainty_weighting = True       # R5 on the LR head; False: nnU-Net's Dice+CE
    uncertainty_scale = 0.99           # w = 1 - 0.99 U
    lr_dice_weight = 1.0               # soft Dice beside R5's weighted CE (0: the paper's CE-only R5)
    hr_head_residual = True            # HR logits = upsampled LR logits + a correction starting at zero
    hr_head_form = "linear"            # how the correction reaches the HR grid (network.HR_HEAD_FORMS)
    random_phase = True                # pseudo-data: r LR volumes per case; False: the real LR phase only
    annotated_phase_probability = None # chance of the annotated phase 0 (None: 1/r, every phase alike)
    lr_loss_annotated_phase_only = False  # LR-head loss only where the pseudo-LR labels are the annotation itself
    lr_loss_weight = 1.0
    hr_loss_weight = 1.0
    kd_spatial_weight = 1.0
    kd_correlation_weight = 1.0
    kd_student_stage = 1               # nnU-Net encoder stage distilled from the self-SR encoder
    pretrained_lr_seg_layers = True    # -pretrained_weights with the same labels: take its LR segmentation layers too
    kd_every_n_steps = 4               # distil on every n-th training step at n x the KD weights: the same expected
                                       # gradient for a quarter of the teacher's and the KD terms' cost
    soft_targets = False               # the HR head trains toward stage 1's class probabilities too, where the
                                       # stage-1 folder holds them (else on the hard pseudo-HR labels, logged)
    soft_target_weight = 0.5           # its target: (1 - w) one-hot(pseudo-HR label) + w probabilities; below 0.5
                                       # the written label stays the target's most probable class

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.rehrseg = REHRSegPlanBlock.from_configuration(self.configuration_manager.configuration,
                                                           f"{self.plans_manager.plans_name}.json")
        self.margin = margin_slices(self.rehrseg.r, self.rehrseg.fwhm, self.rehrseg.slice_profile)
        self.targets = LabelTargets(self.label_manager)   # integer label maps -> what the losses take
        self.teacher = None            # frozen self-SR, built in on_train_start (training only)
        self.distillation = None       # KD adapter, built with the optimizer
        self.teacher_stage = None
        self.hr_loss = None
        self.hr_soft_loss = None       # the HR-head loss toward soft targets (used on batches that carry them)
        self.selfsr_state = None       # the stage-1 model file's content (load_selfsr)
        self.steps_this_epoch = 0      # kd_every_n_steps counts from each epoch's first step (every epoch distils)
        for key in self.loss_term_keys():
            self.logger.local_logger.my_fantastic_logging.setdefault(key, [])

    # ---------------------------------------------------------------- configuration
    @property
    def kd_enabled(self) -> bool:
        return self.kd_spatial_weight > 0 or self.kd_correlation_weight > 0

    def loss_weights(self) -> Dict[str, float]:
        weights = {"loss_lr": self.lr_loss_weight, "loss_hr": self.hr_loss_weight}
        if self.kd_enabled:
            weights.update(kd_spatial=self.kd_spatial_weight, kd_correlation=self.kd_correlation_weight)
        return weights

    def loss_term_keys(self) -> List[str]:
        return [f"train_{k}" for k in self.loss_weights()]

    def selfsr_checkpoint(self) -> str:
        """The stage-1 model: from the dataset's stage-1 folder, else the copy in the trained model's folder."""
        candidates = []
        if self.preprocessed_dataset_folder_base is not None:
            candidates.append(Stage1Folder.of(self.plans_manager.dataset_name).selfsr_final)
        if self.output_folder_base is not None:
            candidates.append(Path(self.output_folder_base) / SELFSR_COPY)
        for path in candidates:
            if path.is_file():
                return str(path)
        raise RuntimeError(f"self-SR checkpoint not found ({', '.join(map(str, candidates))}): run "
                           f"rehrseg_plan_and_preprocess -d {self.plans_manager.dataset_name} first")

    def load_selfsr(self) -> dict:
        """The stage-1 model file's content, read once: it sizes the KD adapter, builds the teacher and is embedded
        in every checkpoint."""
        if self.selfsr_state is None:
            self.selfsr_state = load_safe(self.selfsr_checkpoint())
        return self.selfsr_state

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        # a classmethod (nnU-Net calls it on the class or the instance alike) so that variants choose the head form
        return build_rehrseg_network(configuration_manager.network_arch_class_name,
                                     configuration_manager.network_arch_init_kwargs,
                                     configuration_manager.network_arch_init_kwargs_req_import,
                                     num_input_channels, num_output_channels, enable_deep_supervision,
                                     cls.hr_head_form)

    def initialize(self):
        super().initialize()
        network = unwrap(self.network).enable_rehrseg_forward()
        pretrained.mark_for_lr_seg_layers(network, self.dataset_json["labels"] if self.pretrained_lr_seg_layers
                                          else None)
        if not self.hr_head_residual:
            network.hr_head.reset_parameters(residual=False)

    def _build_distillation(self) -> StructuralDistillation:
        arch = self.configuration_manager.network_arch_init_kwargs
        strides = np.prod(np.array(arch["strides"][:self.kd_student_stage + 1]), axis=0)
        teacher_features = SelfSRConfig.from_dict(self.load_selfsr()["config"]).features
        self.teacher_stage = teacher_stage_for(int(strides[-1]), len(teacher_features))
        return StructuralDistillation(arch["features_per_stage"][self.kd_student_stage],
                                      teacher_features[self.teacher_stage])

    def configure_optimizers(self):
        params = list(self.network.parameters())
        if self.kd_enabled:
            self.distillation = self._build_distillation().to(self.device)
            broadcast_parameters(self.distillation)   # outside the DDP-wrapped network: one start for every rank
            params += list(self.distillation.parameters())
        optimizer = torch.optim.SGD(params, self.initial_lr, weight_decay=self.weight_decay, momentum=0.99,
                                    nesterov=True)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def _dice_kwargs(self) -> dict:
        # regions have no background channel: every output is scored (as nnU-Net does)
        return {"batch_dice": self.configuration_manager.batch_dice, "smooth": 1e-5,
                "do_bg": self.label_manager.has_regions, "ddp": self.is_ddp}

    def _dice_ce(self):
        """nnU-Net's loss of this dataset: Dice + CE, or Dice + BCE for regions; the ignore label masked."""
        labels = self.label_manager
        if labels.has_regions:
            return DC_and_BCE_loss({}, self._dice_kwargs(), use_ignore_label=labels.ignore_label is not None,
                                   dice_class=MemoryEfficientSoftDiceLoss)
        return DC_and_CE_loss(self._dice_kwargs(), {}, weight_ce=1, weight_dice=1, ignore_label=labels.ignore_label,
                              dice_class=MemoryEfficientSoftDiceLoss)

    def _soft_dice_ce(self):
        """The HR-head loss toward soft targets (LabelTargets.soft_loss_target): nnU-Net's Dice + BCE for regions (it
        takes probabilities as they are), its Dice + CE with a soft CE otherwise; on one-hot targets, `_dice_ce`."""
        labels = self.label_manager
        if labels.has_regions:
            return self._dice_ce()
        dice = MemoryEfficientSoftDiceLoss(apply_nonlin=softmax_helper_dim1, **self._dice_kwargs())
        return SoftDiceCE(dice, use_ignore_label=labels.ignore_label is not None)

    def _uncertainty_weighted(self):
        labels = self.label_manager
        if labels.has_regions:
            dice = MemoryEfficientSoftDiceLoss(apply_nonlin=torch.sigmoid, **self._dice_kwargs())
            return UncertaintyWeightedBCE(self.uncertainty_scale, dice, self.lr_dice_weight,
                                          use_ignore_label=labels.ignore_label is not None)
        dice = MemoryEfficientSoftDiceLoss(apply_nonlin=softmax_helper_dim1, **self._dice_kwargs())
        return UncertaintyWeightedCE(self.uncertainty_scale, dice, self.lr_dice_weight, labels.ignore_label)

    def _build_loss(self):
        """LR-head loss (self.loss, deep supervised, called as loss(logits, targets, uncertainties)); the HR-head
        Dice+CE goes to self.hr_loss."""
        self.hr_loss = self._dice_ce()
        self.hr_soft_loss = self._soft_dice_ce()
        lr_loss = self._uncertainty_weighted() if self.uncertainty_weighting else IgnoringUncertainty(self._dice_ce())
        if self.enable_deep_supervision:
            weights = deep_supervision_weights(len(self._get_deep_supervision_scales()),
                                               self.is_ddp and not self._do_i_compile())
            lr_loss = DeepSupervisionWrapper(lr_loss, weights)
        return lr_loss

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        """Spatial augmentation in-plane only (nnU-Net's dummy-2D mode, rotation around the LR axis), so the LR axis
        stays the LR axis and the thick-slice model holds."""
        rotation = (-np.pi, np.pi)
        mirror_axes = (0, 1, 2)
        patch_size = self.configuration_manager.patch_size
        initial_patch_size = get_patch_size(patch_size, rotation, rotation, rotation, (0.85, 1.25))
        initial_patch_size[0] = patch_size[0]
        self.inference_allowed_mirroring_axes = mirror_axes
        self.print_to_log_file("spatial augmentation: in-plane (dummy 2D), rotation about the LR axis")
        return rotation, True, initial_patch_size, mirror_axes

    # ---------------------------------------------------------------- data
    def get_dataloaders(self):
        stamp = load_stamp(self.preprocessed_dataset_folder)
        self.dataset_class = REHRSegDataset
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        # a margin of whole thick slices on both ends along the LR axis: the slice profile's context
        patch_size = [self.configuration_manager.patch_size[0] + 2 * self.margin,
                      *self.configuration_manager.patch_size[1:]]
        initial_patch_size = [patch_size[0], *initial_patch_size[1:]]
        labels = self.label_manager
        # the loader makes the deep-supervision targets from the pseudo-LR labels, not nnU-Net's transform
        tr_transforms = for_lr_grid_samples(self.get_training_transforms(
            patch_size, rotation, None, mirror_axes, dummy_2d,
            use_mask_for_norm=self.configuration_manager.use_mask_for_norm, is_cascaded=False,
            foreground_labels=labels.foreground_labels, regions=None, ignore_label=labels.ignore_label), self.rehrseg.r)
        val_transforms = self.get_validation_transforms(None, is_cascaded=False,
                                                        foreground_labels=labels.foreground_labels, regions=None,
                                                        ignore_label=labels.ignore_label)
        dataset_tr, dataset_val = self.get_tr_and_val_datasets()
        soft = self.soft_targets and bool(stamp.get("soft_targets"))
        if self.soft_targets and not soft:
            self.print_to_log_file(f"soft targets: {self.preprocessed_dataset_folder} holds no class probabilities "
                                   f"(a stage-1 folder of an earlier version): the HR head trains on the hard "
                                   f"pseudo-HR labels; rerun rehrseg_plan_and_preprocess -d "
                                   f"{self.plans_manager.dataset_name} to add them")
        ranges = {k: v["intensity_range"] for k, v in stamp["cases"].items()}
        common = dict(sampling_probabilities=None, pad_sides=None, num_classes=self.targets.num_values,
                      ignore_label=labels.ignore_label,
                      deep_supervision_scales=self.deep_supervision_scales_or_none(),
                      oversample_foreground_percent=self.oversample_foreground_percent,
                      probabilistic_oversampling=self.probabilistic_oversampling, r=self.rehrseg.r,
                      fwhm=self.rehrseg.fwhm, slice_profile=self.rehrseg.slice_profile, margin=self.margin,
                      intensity_ranges=ranges, soft_targets=soft)
        dl_tr = REHRSegDataLoader(dataset_tr, self.batch_size, initial_patch_size, patch_size, labels,
                                  transforms=tr_transforms, random_phase=self.random_phase,
                                  annotated_phase_probability=self.annotated_phase_probability, **common)
        dl_val = REHRSegDataLoader(dataset_val, self.batch_size, patch_size, patch_size, labels,
                                   transforms=val_transforms, random_phase=False, **common)
        processes = get_allowed_n_proc_DA()
        if processes == 0:
            return SingleThreadedAugmenter(dl_tr, None), SingleThreadedAugmenter(dl_val, None)
        pin = self.device.type == "cuda"
        return (NonDetMultiThreadedAugmenter(dl_tr, None, processes, max(6, processes // 2), None, pin, 0.002),
                NonDetMultiThreadedAugmenter(dl_val, None, max(1, processes // 2), max(3, processes // 4), None, pin,
                                             0.002))

    def deep_supervision_scales_or_none(self):
        return self._get_deep_supervision_scales() if self.enable_deep_supervision else None

    def synthetic_batch(self, generator: torch.Generator) -> dict:
        """Random data shaped like a training batch of this trainer's loader (step timings without data loading)."""
        b, channels, r = self.configuration_manager.batch_size, self.num_input_channels, self.rehrseg.r
        lr_shape = self.rehrseg.lr_patch_size
        hr_shape = [r * lr_shape[0], *lr_shape[1:]]
        classes = self.targets.num_values
        hr_labels = torch.randint(0, classes, (b, 1, *hr_shape), generator=generator).to(torch.int16)
        lr_labels, uncertainty = lr_training_targets(hr_labels, torch.rand(b, 1, *lr_shape, generator=generator), r,
                                                     classes, self.deep_supervision_scales_or_none(),
                                                     self.label_manager.ignore_label)
        batch = {"data": torch.randn(b, channels, *lr_shape, generator=generator), "target": hr_labels,
                 "target_lr": lr_labels, "uncertainty": uncertainty,
                 "intensity_range": torch.tensor([[[-2.0, 4.0]] * channels] * b)}
        if self.soft_targets:
            batch["target_soft"] = torch.randn(b, classes, *hr_shape, generator=generator).softmax(1).half()
        return batch

    def make_pseudo_lr_batch(self, batch: dict) -> PseudoLRBatch:
        to = dict(device=self.device, non_blocking=True)
        return PseudoLRBatch(batch["data"].to(**to), [t.to(**to) for t in batch["target_lr"]],
                             [t.to(**to) for t in batch["uncertainty"]], batch["target"].to(**to))

    def deep_supervision_targets(self, pseudo: PseudoLRBatch):
        if not self.enable_deep_supervision:
            return pseudo.labels[0], pseudo.uncertainty[0]
        return pseudo.labels, pseudo.uncertainty

    @torch.no_grad()
    def teacher_features(self, pseudo: PseudoLRBatch, intensity_range: torch.Tensor) -> torch.Tensor:
        """The self-SR encoder on the pseudo-LR patch, on the [0, 1] scale it was trained on, with one-hot labels."""
        rng = intensity_range.to(self.device)[..., None, None, None]           # (B, C, 2, 1, 1, 1)
        unit = (pseudo.image - rng[:, :, 0]) / (rng[:, :, 1] - rng[:, :, 0]).clamp_min(1e-6)
        one_hot = F.one_hot(pseudo.labels[0][:, 0].long(), self.teacher.num_classes).permute(0, 4, 1, 2, 3)
        return self.teacher.encode(torch.cat([unit, one_hot.to(unit.dtype)], 1), self.teacher_stage + 1)[-1]

    # ---------------------------------------------------------------- training
    def _autocast(self):
        return autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context()

    def loss_terms(self, batch: dict, with_kd: bool):
        pseudo = self.make_pseudo_lr_batch(batch)
        targets, uncertainties = self.deep_supervision_targets(pseudo)
        teacher = self.teacher_features(pseudo, batch["intensity_range"]) if with_kd else None
        lr_logits, hr_logits, skips = self.network(pseudo.image)
        terms = {"loss_lr": self.lr_head_loss(lr_logits, self.targets.loss_targets(targets), uncertainties,
                                              batch.get("phase")),
                 "loss_hr": self.hr_head_loss(hr_logits, pseudo.hr_labels, batch.get("target_soft"))}
        if teacher is not None:
            terms.update(self.distillation(skips[self.kd_student_stage], teacher))
        return terms, hr_logits, pseudo

    def hr_head_loss(self, hr_logits: torch.Tensor, hr_labels: torch.Tensor,
                     probabilities: Optional[torch.Tensor]) -> torch.Tensor:
        """Dice + CE (BCE) toward the pseudo-HR labels, or toward their blend with stage 1's class probabilities
        where the batch carries them."""
        if probabilities is None:
            return self.hr_loss(hr_logits, self.targets.loss_target(hr_labels))
        probabilities = probabilities.to(self.device, non_blocking=True)
        return self.hr_soft_loss(hr_logits, self.targets.soft_loss_target(probabilities, hr_labels,
                                                                          self.soft_target_weight))

    def lr_head_loss(self, lr_logits, targets, uncertainties, phase: Optional[torch.Tensor]) -> torch.Tensor:
        """The LR-head loss; with lr_loss_annotated_phase_only, over the batch's phase-0 samples alone: at other
        phases the pseudo-LR labels are thick-slice majorities of the pseudo-HR labels, not the annotation (a lead
        measured on the benchmark and not adopted, docs/training.md)."""
        if not self.lr_loss_annotated_phase_only or phase is None:
            return self.loss(lr_logits, targets, uncertainties)
        keep = (phase == 0).to(self.device)
        if not keep.any():   # a zero that keeps every LR output in the graph (DDP needs a gradient for each)
            return 0.0 * self.loss(lr_logits, targets, uncertainties)

        def pick(x):
            return [t[keep] for t in x] if isinstance(x, (list, tuple)) else x[keep]
        return self.loss(pick(lr_logits), pick(targets), pick(uncertainties))

    def weighted_total(self, terms: Dict[str, torch.Tensor], kd_scale: float = 1.0) -> torch.Tensor:
        weights = self.loss_weights()
        return sum(weights[k] * (kd_scale if k.startswith("kd_") else 1.0) * v for k, v in terms.items())

    def distils_this_step(self) -> bool:
        return self.kd_enabled and self.steps_this_epoch % self.kd_every_n_steps == 0

    def trainable_parameters(self) -> List[torch.nn.Parameter]:
        extra = list(self.distillation.parameters()) if self.distillation is not None else []
        return list(self.network.parameters()) + extra

    def train_step(self, batch: dict) -> dict:
        self.optimizer.zero_grad(set_to_none=True)
        with_kd = self.distils_this_step()
        self.steps_this_epoch += 1
        with self._autocast():
            terms, _, _ = self.loss_terms(batch, with_kd=with_kd)
            total = self.weighted_total(terms, kd_scale=self.kd_every_n_steps)
        scaler = self.grad_scaler
        (scaler.scale(total) if scaler is not None else total).backward()
        if self.distillation is not None:
            all_reduce_gradients(self.distillation)  # outside the DDP-wrapped network
        if scaler is not None:
            scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.trainable_parameters(), 12)
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        # every key on every step (nnU-Net collates by the first step's keys): NaN for a term this step left out;
        # float32 first, as a term computed under autocast may be bfloat16, which numpy cannot hold
        return {"loss": total.detach().float().cpu().numpy(),
                **{k: terms[k].detach().float().cpu().numpy() if k in terms else np.float32(np.nan)
                   for k in self.loss_weights()}}

    def _mean_over_workers(self, values) -> float:
        if self.is_ddp:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, values)
            values = np.concatenate([np.ravel(v) for v in gathered])
        return float(np.mean(values)) if np.size(values) else float("nan")

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self.steps_this_epoch = 0

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        outputs = collate_outputs(train_outputs)
        for key in self.loss_weights():
            values = np.ravel(outputs[key])
            if key.startswith("kd_"):   # the steps that distilled
                values = values[np.isfinite(values)]
            self.logger.log(f"train_{key}", self._mean_over_workers(values), self.current_epoch)

    def validation_step(self, batch: dict) -> dict:
        """Loss without distillation; the online pseudo Dice is the HR head's against the pseudo-HR labels."""
        with torch.no_grad(), self._autocast():
            terms, hr_logits, pseudo = self.loss_terms(batch, with_kd=False)
            total = self.weighted_total(terms)
        tp, fp, fn = self.targets.hard_counts(hr_logits, pseudo.hr_labels, axes=[0, 2, 3, 4])
        return {"loss": total.detach().float().cpu().numpy(), "tp_hard": tp.cpu().numpy(), "fp_hard": fp.cpu().numpy(),
                "fn_hard": fn.cpu().numpy()}

    def on_train_start(self):
        super().on_train_start()
        if self.kd_enabled and self.teacher is None:
            self.teacher, _ = network_from_checkpoint(self.load_selfsr(), self.device)
            self.teacher.requires_grad_(False)
        if self.local_rank == 0:
            stage1 = Stage1Folder.of(self.plans_manager.dataset_name)
            base = Path(self.output_folder_base)
            # the plans come from the pseudo-HR fingerprint; the stock trainer copied the LR one
            copy_atomic(stage1.fingerprint, base / "dataset_fingerprint.json")
            copy_atomic(stage1.settings, base / "rehrseg_settings.json")
            save_atomic(self.load_selfsr(), base / SELFSR_COPY)

    def on_epoch_end(self):
        if self.local_rank == 0:
            plot_loss_terms(self.logger.local_logger.my_fantastic_logging, self.loss_term_keys(),
                            Path(self.output_folder) / "progress_rehrseg.png")
        super().on_epoch_end()

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self, filename: str) -> None:
        super().save_checkpoint(filename)
        extra = {}
        if self.distillation is not None:
            extra[KD_CHECKPOINT_KEY] = self.distillation.state_dict()
        if self.selfsr_state is not None:
            extra[SELFSR_CHECKPOINT_KEY] = self.selfsr_state
        if self.local_rank == 0 and not self.disable_checkpointing and extra:
            checkpoint = load_trained_checkpoint(filename)
            save_atomic({**checkpoint, **extra}, filename)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        if not isinstance(filename_or_checkpoint, str):
            raise TypeError("pass a checkpoint file name (nnU-Net 2.8.1's load_checkpoint(dict) is broken)")
        checkpoint = load_trained_checkpoint(filename_or_checkpoint, self.device)
        saved_form = hr_head_form_of(checkpoint["network_weights"])
        if saved_form != self.hr_head_form:
            # the HR head's form has changed over versions; a run cannot change form half-way
            raise RuntimeError(
                f"{filename_or_checkpoint} holds an HR head of the '{saved_form}' form, {self.__class__.__name__} "
                f"builds '{self.hr_head_form}': finish that run with the plugin version that started it, or start "
                f"it again (without --c)")
        super().load_checkpoint(filename_or_checkpoint)
        if self.distillation is not None:
            state: Optional[dict] = checkpoint.get(KD_CHECKPOINT_KEY)
            if state is not None:
                self.distillation.load_state_dict(state)

    # ---------------------------------------------------------------- final validation
    def perform_actual_validation(self, save_probabilities: bool = False):
        from nnunetv2_rehrseg.inference.validation import validate_fold

        validate_fold(self, save_probabilities)
