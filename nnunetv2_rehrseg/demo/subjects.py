"""Demo subjects from the MNI152 anatomy and the thick-slice (LR) nnU-Net raw dataset made from them.

Each subject (seeded): a random smooth deformation (Gaussian-filtered displacement noise, at most `max_shift_mm`)
applied jointly to image (linear) and labels (nearest), a smooth multiplicative bias field (+-`bias`), and a
contrast change (gamma in [0.8, 1.25], scale in [0.9, 1.1]). LR: slice-profile blur and r-fold subsampling along the
chosen axis at phase 0 (same field of view), labels by the per-voxel majority over the r sub-slices. The HR truth of
the test subjects is kept outside nnUNet_raw, for scoring only.
"""
import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

from nnunetv2_rehrseg.degradation import blur_subsample, majority_labels, profile_fwhm_in_voxels
from nnunetv2_rehrseg.demo.anatomy import ANATOMIES, LABELS
from nnunetv2_rehrseg.geometry import Grid, lr_grid, numpy_axis_of
from nnunetv2_rehrseg.image_io import write_image


def _smooth_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    field = gaussian_filter(rng.normal(size=shape), sigma)
    return field / (np.abs(field).max() + 1e-12)


def make_subject(t1: np.ndarray, labels: np.ndarray, spacing_mm: float, seed: int, max_shift_mm: float = 6.0,
                 bias: float = 0.2) -> Tuple[np.ndarray, np.ndarray]:
    """A new subject from the template: deformed image and labels (same grid), bias field, contrast."""
    rng = np.random.default_rng(seed)
    sigma = 12.0 / spacing_mm                       # displacement correlated over ~12 mm
    coords = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in t1.shape], indexing="ij")
    shift = max_shift_mm / spacing_mm
    warped = [c + shift * _smooth_noise(rng, t1.shape, sigma) for c in coords]
    image = map_coordinates(t1, warped, order=1, mode="nearest")
    labels = map_coordinates(labels, warped, order=0, mode="nearest").astype(np.uint8)
    field = np.exp(bias * _smooth_noise(rng, t1.shape, 30.0 / spacing_mm))
    gamma, scale = np.exp(rng.uniform(np.log(0.8), np.log(1.25))), rng.uniform(0.9, 1.1)
    image = scale * np.clip(image, 0, None) ** gamma * field
    return image.astype(np.float32), labels


def crop_to_multiple(array: np.ndarray, axis: int, r: int) -> np.ndarray:
    return np.take(array, np.arange(array.shape[axis] // r * r), axis=axis)


def simulate_lr(hr_image: np.ndarray, hr_labels: np.ndarray, sitk_axis: int, r: int, profile: str = "gaussian",
                slice_thickness_factor: float = 1.0, num_classes: int = len(LABELS)) -> Tuple[np.ndarray, np.ndarray]:
    """Thick slices along `sitk_axis`: slice thickness = `slice_thickness_factor` x the LR slice spacing."""
    axis = numpy_axis_of(sitk_axis)
    fwhm = profile_fwhm_in_voxels(slice_thickness_factor * r, 1.0)
    return (blur_subsample(hr_image, axis, r, fwhm, profile).astype(np.float32),
            majority_labels(hr_labels, axis, r, num_classes=num_classes))


@dataclass
class DemoDataset:
    raw_folder: Path
    hr_truth: Path                   # images/<id>.nii.gz, labels/<id>.nii.gz on the HR grid (test subjects)
    train_ids: List[str]
    test_ids: List[str]


def build_demo_dataset(raw_root: Path, truth_root: Path, dataset_id: int = 700, n_train: int = 6, n_test: int = 2,
                       r: int = 4, sitk_axis: int = 2, spacing_mm: float = 2.0, profile: str = "gaussian",
                       seed: int = 0, keep_training_truth: bool = False, anatomy: str = "mni152") -> DemoDataset:
    """nnU-Net raw dataset of LR subjects (imagesTr/labelsTr for training, imagesTs for the test subjects) and the
    test subjects' HR truth in `truth_root` (with keep_training_truth, the training subjects' too, under
    `truth_root/train`: the benchmark's HR upper bound), made from one of `anatomy.ANATOMIES`."""
    source = ANATOMIES[anatomy]
    t1, template_labels, grid = source.load(spacing_mm)
    axis = numpy_axis_of(sitk_axis)
    t1 = crop_to_multiple(t1, axis, r)
    template_labels = crop_to_multiple(template_labels, axis, r)
    hr = Grid(tuple(t1.shape[::-1]), grid.spacing, grid.origin, grid.direction)
    lr = lr_grid(hr, sitk_axis, r)
    name = "MNIThickSlices" if anatomy == "mni152" else "".join(w.capitalize() for w in anatomy.split("-")) + \
        "ThickSlices"
    folder = Path(raw_root) / f"Dataset{dataset_id:03d}_{name}"
    train_ids = [f"sub{i:02d}" for i in range(n_train)]
    test_ids = [f"sub{i:02d}" for i in range(n_train, n_train + n_test)]
    for i, identifier in enumerate(train_ids + test_ids):
        image, labels = make_subject(t1, template_labels, spacing_mm, seed * 1000 + i)
        lr_image, lr_labels = simulate_lr(image, labels, sitk_axis, r, profile, num_classes=len(source.labels))
        if identifier in train_ids:
            write_image(lr_image, lr, folder / "imagesTr" / f"{identifier}_0000.nii.gz")
            write_image(lr_labels, lr, folder / "labelsTr" / f"{identifier}.nii.gz")
            truth = Path(truth_root) / "train" if keep_training_truth else None
        else:
            write_image(lr_image, lr, folder / "imagesTs" / f"{identifier}_0000.nii.gz")
            write_image(lr_labels, lr, Path(truth_root) / "lr_labels" / f"{identifier}.nii.gz")
            truth = Path(truth_root)
        if truth is not None:
            write_image(image, hr, truth / "images" / f"{identifier}.nii.gz")
            write_image(labels, hr, truth / "labels" / f"{identifier}.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1"}, "labels": source.labels, "numTraining": n_train, "file_ending": ".nii.gz",
        "name": f"{anatomy} subjects with simulated thick slices",
        "rehrseg": {"slice_profile": profile}}, indent=1))
    return DemoDataset(folder, Path(truth_root), train_ids, test_ids)
