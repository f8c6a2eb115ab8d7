"""A tiny generated nnU-Net dataset (ellipsoid shells on an oblique thick-slice grid): the self-check's data and the
tests' fixture. Nothing is downloaded."""
import json
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import SimpleITK as sitk

_ROTATION = np.array([[0.98, -0.17, 0.0], [0.17, 0.98, 0.0], [0.0, 0.0, 1.0]])
OBLIQUE = tuple((_ROTATION / np.linalg.norm(_ROTATION, axis=1, keepdims=True)).ravel())


def phantom(shape_zyx, seed):
    """Ellipsoid shells: an image with three tissue classes and its labels, (z, y, x)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape_zyx], indexing="ij")
    c = rng.uniform(-0.15, 0.15, 3)
    d = np.sqrt(sum((g - ci) ** 2 for g, ci in zip(grids, c)))
    labels = (d < 0.75).astype(np.uint8) + (d < 0.4)
    image = 100 + 300 * (d < 0.75) + 200 * (d < 0.4) + 10 * rng.normal(size=d.shape)
    return image.astype(np.float32), labels.astype(np.uint8)


def write(array, spacing, path, direction=OBLIQUE, origin=(12.0, -40.0, 7.5)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    image.SetOrigin(origin)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


SPARSE_IGNORE = 3


def make_raw_dataset(raw_root: Path, dataset_id=990, name="Tiny", n_cases=2, spacing=(1.0, 1.0, 4.0),
                     shape_zyx=(8, 32, 32), n_test=1, slice_spacings: Optional[Dict[int, float]] = None,
                     sideways: Sequence[int] = (), label_kind: str = "labels") -> Path:
    """nnUNet_raw/DatasetXXX_<name>: n_cases training cases (images + labels) and n_test test images. A clinic's mix:
    `slice_spacings` {case index: slice spacing (mm)} overrides the thick axis's spacing of those cases, and the cases
    in `sideways` are acquired along another axis (their thick axis is x: the arrays and spacings swapped).
    `label_kind`: "labels" (background, outer, inner), "regions" (nnU-Net regions: whole = outer or inner, and inner,
    with regions_class_order) or "sparse" (plain labels, every other thick slice ignored: the ignore label 3)."""
    folder = Path(raw_root) / f"Dataset{dataset_id:03d}_{name}"
    for i in range(n_cases + n_test):
        image, labels = phantom(shape_zyx, i)
        case_spacing = list(spacing)
        if slice_spacings and i in slice_spacings:
            case_spacing[int(np.argmax(spacing))] = slice_spacings[i]
        if i in sideways:
            image, labels = np.swapaxes(image, 0, 2).copy(), np.swapaxes(labels, 0, 2).copy()
            case_spacing = case_spacing[::-1]
        split = "Tr" if i < n_cases else "Ts"
        if label_kind == "sparse":
            labels = labels.copy()
            labels[1::2] = SPARSE_IGNORE
        write(image, tuple(case_spacing), folder / f"images{split}" / f"case{i:02d}_0000.nii.gz")
        if split == "Tr":
            write(labels, tuple(case_spacing), folder / "labelsTr" / f"case{i:02d}.nii.gz")
    declaration = {"labels": {"labels": {"background": 0, "outer": 1, "inner": 2}},
                   "regions": {"labels": {"background": 0, "whole": [1, 2], "inner": [2]}, "regions_class_order": [1, 2]},
                   "sparse": {"labels": {"background": 0, "outer": 1, "inner": 2, "ignore": SPARSE_IGNORE}}}[label_kind]
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, **declaration, "numTraining": n_cases, "file_ending": ".nii.gz"}))
    return folder
