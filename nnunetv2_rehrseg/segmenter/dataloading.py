"""nnU-Net's blosc2 dataset and data loader, extended by the uncertainty sidecar, phase-aligned HR crops and the
pseudo-LR input made before augmentation, and (with soft pseudo-HR targets) the class probabilities.

Per sample: an HR crop (with the slice profile's margin along the LR axis) -> `degrade_patch` -> pseudo-LR image
(D slices), HR labels (r*D slices), uncertainty per thick slice (D slices) -> nnU-Net's transforms; per batch the
LR head's targets (`lr_training_targets`: pseudo-LR labels and uncertainty per deep-supervision output). The uncertainty
rides through batchgeneratorsv2 as `regression_target`: spatial transforms move it with the image, intensity
transforms leave it alone; intensity transforms act on the LR image, as they do on a real LR input in stock nnU-Net.
With soft targets the regression target is the HR crop's uncertainty and class probabilities on the r*D label slices
(`hr_regression_target`): bilinear resampling keeps each voxel's probabilities a distribution (padding aside, where
`class_probabilities.soft_target` falls back to the hard label), and the uncertainty is averaged per thick slice after
augmentation instead of before (the same, as the augmentation is in-plane and linear).

Phase: along the LR axis each crop starts where a thick slice of the chosen phase starts, counted on the volume's
own HR grid (crop offset of preprocessing included), so phase 0 reproduces the real LR sampling and phases 1..r-1
are the r - 1 further LR volumes every case yields. Only at phase 0 are the pseudo-LR labels the annotation itself
(stage 1 makes the pseudo-HR labels consistent with it there); `annotated_phase_probability` draws it more often.
"""
from typing import Dict, Optional, Sequence

import blosc2
import numpy as np
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
from threadpoolctl import ThreadpoolController

from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

from nnunetv2_rehrseg.class_probabilities import dequantise, soft_target
from nnunetv2_rehrseg.planners.preprocessing import soft_targets_file, uncertainty_file
from nnunetv2_rehrseg.segmenter.pseudo_lr import (degrade_patch, hr_regression_target, lr_training_targets,
                                                  split_hr_regression_target)


class REHRSegDataset(nnUNetDatasetBlosc2):
    def load_uncertainty(self, identifier: str) -> np.ndarray:
        return np.load(uncertainty_file(self.source_folder, identifier), mmap_mode="r")

    def load_soft_targets(self, identifier: str):
        """The case's class probabilities (uint8 levels, K x the data's shape), opened for patch reads."""
        return blosc2.open(urlpath=soft_targets_file(self.source_folder, identifier), mode="r",
                           dparams={"nthreads": 1}, **self.mmap_kwargs)


class REHRSegDataLoader(nnUNetDataLoader):
    def __init__(self, *args, r: int, fwhm: float, slice_profile: str, margin: int, random_phase: bool,
                 intensity_ranges: Dict[str, list], num_classes: int, ignore_label: Optional[int],
                 deep_supervision_scales: Optional[Sequence[Sequence[float]]],
                 annotated_phase_probability: Optional[float] = None, soft_targets: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.num_classes, self.deep_supervision_scales = num_classes, deep_supervision_scales
        self.ignore_label = ignore_label
        self._thread_pools = None       # found once per process: a fresh search is a noticeable share of a batch
        self.r, self.fwhm, self.slice_profile, self.margin = r, fwhm, slice_profile, margin
        self.random_phase = random_phase
        self.annotated_phase_probability = annotated_phase_probability   # None: every phase alike
        self.intensity_ranges = intensity_ranges
        self.soft_targets = soft_targets   # the class probabilities ride with the uncertainty (soft pseudo-HR targets)

    def draw_phase(self) -> int:
        if not self.random_phase:
            return 0
        if self.annotated_phase_probability is None or self.r == 1:
            return int(np.random.randint(self.r))
        return 0 if np.random.rand() < self.annotated_phase_probability else int(np.random.randint(1, self.r))

    def align_to_phase(self, lbs: list, ubs: list, crop_offset: int) -> int:
        """Shift the crop along the LR axis (axis 0) down to the next start of a thick slice of a drawn phase."""
        phase = self.draw_phase()
        shift = (lbs[0] + crop_offset - phase) % self.r
        lbs[0] -= shift
        ubs[0] -= shift
        return phase

    def pseudo_lr_sample(self, key: str, bbox: list, data, seg) -> Dict[str, torch.Tensor]:
        """The crop degraded to a pseudo-LR sample, before augmentation; with soft targets, the regression target holds
        the HR uncertainty and class probabilities (`hr_regression_target`) instead of the LR uncertainty."""
        hr_uncertainty = torch.tensor(crop_and_pad_nd(self._data.load_uncertainty(key), bbox, 0),  # mmap
                                      dtype=torch.float32)
        # with soft targets the HR uncertainty rides in the regression target: degrade_patch need not average it
        image, labels, uncertainty = degrade_patch(
            torch.from_numpy(crop_and_pad_nd(data, bbox, 0)).float(),
            torch.from_numpy(crop_and_pad_nd(seg, bbox, -1, cast_cropped_to=np.int16)),
            None if self.soft_targets else hr_uncertainty, self.r, self.fwhm, self.slice_profile, self.margin)
        if self.soft_targets:
            probabilities = dequantise(crop_and_pad_nd(self._data.load_soft_targets(key), bbox, 0))
            uncertainty = hr_regression_target(hr_uncertainty, probabilities, self.r, self.margin)
        return {"image": image, "segmentation": labels, "regression_target": uncertainty}

    def generate_train_batch(self):
        keys = self.get_indices()
        images, labels, uncertainties, phases, soft = [], [], [], [], []
        if self._thread_pools is None:
            self._thread_pools = ThreadpoolController()
        with torch.no_grad(), self._thread_pools.limit(limits=1):
            for j, key in enumerate(keys):
                data, seg, _, properties = self._data.load_case(key)
                lbs, ubs = self.get_bbox(data.shape[1:], self.get_do_oversample(j), properties["class_locations"])
                phases.append(self.align_to_phase(lbs, ubs, properties["bbox_used_for_cropping"][0][0]))
                sample = self.transforms(**self.pseudo_lr_sample(key, [[lo, hi] for lo, hi in zip(lbs, ubs)], data,
                                                                 seg))
                images.append(sample["image"])
                labels.append(sample["segmentation"])
                uncertainty = sample["regression_target"]
                if self.soft_targets:
                    uncertainty, probabilities = split_hr_regression_target(uncertainty, self.r)
                    soft.append(soft_target(probabilities, sample["segmentation"], self.num_classes).half())
                uncertainties.append(uncertainty)
            hr_labels = torch.stack(labels)
            lr_labels, uncertainty = lr_training_targets(hr_labels, torch.stack(uncertainties), self.r,
                                                         self.num_classes, self.deep_supervision_scales,
                                                         self.ignore_label)
        batch = {"data": torch.stack(images), "target": hr_labels, "target_lr": lr_labels, "uncertainty": uncertainty,
                 "phase": torch.tensor(phases), "keys": keys,
                 "intensity_range": torch.tensor([self.intensity_ranges[k] for k in keys], dtype=torch.float32)}
        if self.soft_targets:
            batch["target_soft"] = torch.stack(soft)       # (B, K, r*D, H, W), float16: half the transfer
        return batch
