"""Reading and validating an nnU-Net raw dataset of thick-slice volumes (read-only: nothing is written there)."""
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from nnunetv2_rehrseg.errors import InputError
from nnunetv2_rehrseg.geometry import Grid
from nnunetv2_rehrseg.io import read_image

GEOMETRY_TOLERANCE = 1e-3


@dataclass
class RawCase:
    identifier: str
    images: List[str]
    label: Optional[str]


@dataclass
class LoadedCase:
    identifier: str
    image: np.ndarray            # (C, z, y, x) float32
    labels: Optional[np.ndarray]  # (z, y, x) uint8
    grid: Grid


@dataclass
class RawDataset:
    name: str
    folder: Path
    dataset_json: dict
    cases: Dict[str, RawCase]

    @property
    def num_channels(self) -> int:
        return len(self.dataset_json["channel_names"])

    @property
    def label_values(self) -> List[int]:
        return sorted(int(v) for v in self.dataset_json["labels"].values() if not isinstance(v, (list, tuple)))


def open_raw_dataset(dataset_name_or_id) -> RawDataset:
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    if not nnUNet_raw.is_set():
        raise InputError("nnUNet_raw is not set: export nnUNet_raw=/path/to/nnUNet_raw (see nnU-Net's "
                         "setting_up_paths.md)")
    try:
        name = maybe_convert_to_dataset_name(dataset_name_or_id)
    except (RuntimeError, ValueError) as e:
        raise InputError(f"dataset {dataset_name_or_id} not found in {nnUNet_raw}: {e}; check -d") from None
    folder = Path(str(nnUNet_raw)) / name
    json_file = folder / "dataset.json"
    try:
        dataset_json = json.loads(json_file.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{json_file}: cannot read dataset.json ({e}); create it as nnU-Net describes") from None
    for key in ("channel_names", "labels", "file_ending"):
        if key not in dataset_json:
            raise InputError(f"{json_file}: missing '{key}'; add it as in nnU-Net's dataset_format.md")
    if any(isinstance(v, (list, tuple)) for v in dataset_json["labels"].values()) or "regions_class_order" in \
            dataset_json:
        raise InputError(f"{json_file}: region-based labels are not supported by REHRSeg; use plain integer labels")
    if "ignore" in dataset_json["labels"]:
        raise InputError(f"{json_file}: an 'ignore' label is not supported by REHRSeg (sparse annotations cannot "
                         f"be super-resolved); remove it")
    try:
        files = get_filenames_of_train_images_and_targets(str(folder), dataset_json)
    except (OSError, FileNotFoundError) as e:
        raise InputError(f"{folder}: cannot list training cases ({e}); check imagesTr/labelsTr") from None
    if not files:
        raise InputError(f"{folder}/imagesTr holds no training cases ending in {dataset_json['file_ending']}")
    cases = {k: RawCase(k, list(v["images"]), v.get("label")) for k, v in sorted(files.items())}
    return RawDataset(name, folder, dataset_json, cases)


def read_channels(paths: List[str], identifier: str) -> Tuple[np.ndarray, Grid]:
    """(C, z, y, x) float32 array and grid of one case's channel files: present, finite, on one grid."""
    arrays, grid = [], None
    for path in paths:
        if not Path(path).is_file():
            raise InputError(f"{path}: missing image file; add it or remove case {identifier}")
        array, g = read_image(path)  # validates 3D, single component, finite voxels
        if grid is not None and not grids_match(grid, g):
            raise InputError(f"{path}: geometry differs from {paths[0]}; resample the channels onto one grid")
        arrays.append(array.astype(np.float32))
        grid = g
    return np.stack(arrays), grid


def group_channel_files(folder: Path, file_ending: str, num_channels: int) -> Dict[str, List[Path]]:
    """Cases of a folder of images named as nnU-Net does (CASE_0000.nii.gz, CASE_0001.nii.gz, ...)."""
    cases = {}
    for f in sorted(Path(folder).glob(f"*_0000{file_ending}")):
        identifier = f.name[: -len(f"_0000{file_ending}")]
        cases[identifier] = [Path(folder) / f"{identifier}_{c:04d}{file_ending}" for c in range(num_channels)]
    if not cases:
        raise InputError(f"{folder}: no *_0000{file_ending} images; name inputs as nnU-Net does (CASE_0000.nii.gz)")
    for identifier, files in cases.items():
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise InputError(f"{missing[0]}: missing channel of case {identifier}; the model needs {num_channels}")
    return cases


def load_case(dataset: RawDataset, case: RawCase, need_label: bool = True) -> LoadedCase:
    """Read and validate one case: channel count, 3D, finite voxels, same grid for every file, declared labels."""
    if len(case.images) != dataset.num_channels:
        raise InputError(f"case {case.identifier}: {len(case.images)} image file(s) for {dataset.num_channels} "
                         f"channel(s) in dataset.json; add the missing _000X files")
    image, grid = read_channels(case.images, case.identifier)
    for channel, path in enumerate(case.images):
        if image[channel].min() == image[channel].max():
            raise InputError(f"{path}: constant image (every voxel {image[channel].flat[0]:g}); it carries nothing "
                             f"to learn from or to normalise: remove the case or fix the export")
    labels = None
    if need_label:
        if case.label is None or not Path(case.label).is_file():
            raise InputError(f"case {case.identifier}: label file {case.label} is missing; add it to labelsTr")
        label_array, label_grid = read_image(case.label)
        if not grids_match(grid, label_grid):
            raise InputError(f"{case.label}: geometry (size/spacing/origin/direction) differs from "
                             f"{case.images[0]}; resample the label onto the image grid")
        values = np.unique(label_array)
        undeclared = sorted(set(values.tolist()) - set(dataset.label_values))
        if undeclared:
            raise InputError(f"{case.label}: label values {undeclared} are not declared in dataset.json; declare "
                             f"them or fix the label map")
        labels = label_array.astype(np.uint8)
    return LoadedCase(case.identifier, image, labels, grid)


def grids_match(a: Grid, b: Grid) -> bool:
    return a.size == b.size and all(
        np.allclose(x, y, atol=GEOMETRY_TOLERANCE) for x, y in
        ((a.spacing, b.spacing), (a.origin, b.origin), (a.direction, b.direction)))
