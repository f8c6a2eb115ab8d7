"""Reading and validating an nnU-Net raw dataset of thick-slice volumes (read-only: nothing is written there)."""
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from nnunetv2_rehrseg.errors import InputError
from nnunetv2_rehrseg.geometry import Grid
from nnunetv2_rehrseg.image_io import read_image

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
    def label_manager(self):
        from nnunetv2.utilities.label_handling.label_handling import LabelManager

        return LabelManager(self.dataset_json["labels"], self.dataset_json.get("regions_class_order"))

    @property
    def label_values(self) -> List[int]:
        """The integer values drawn in the label maps (background included, the ignore label not): for a region-based
        dataset, the plain labels its regions are built from."""
        return [int(v) for v in self.label_manager.all_labels]

    @property
    def ignore_label(self) -> Optional[int]:
        return self.label_manager.ignore_label

    @property
    def num_label_classes(self) -> int:
        """Channels of a one-hot label map: every value a label map may hold, the ignore label included."""
        return num_label_values(self.label_manager)


def num_label_values(label_manager) -> int:
    """How many values a label map of this declaration (an nnU-Net LabelManager) may hold: its plain labels and the
    ignore label, 0..max."""
    values = [int(v) for v in label_manager.all_labels]
    ignore = label_manager.ignore_label
    return max(values + ([int(ignore)] if ignore is not None else [])) + 1


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
    check_labels(dataset_json, json_file)
    try:
        files = get_filenames_of_train_images_and_targets(str(folder), dataset_json)
    except (OSError, FileNotFoundError) as e:
        raise InputError(f"{folder}: cannot list training cases ({e}); check imagesTr/labelsTr") from None
    if not files:
        raise InputError(f"{folder}/imagesTr holds no training cases ending in {dataset_json['file_ending']}")
    cases = {k: RawCase(k, list(v["images"]), v.get("label")) for k, v in sorted(files.items())}
    return RawDataset(name, folder, dataset_json, cases)


def check_labels(dataset_json: dict, json_file: Path) -> None:
    """The label declaration as nnU-Net's LabelManager accepts it (background 0; regions with regions_class_order;
    the ignore label an integer above every other), refused in one line naming the file otherwise."""
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    labels = dataset_json["labels"]
    try:
        LabelManager(labels, dataset_json.get("regions_class_order"))
    except (AssertionError, RuntimeError, TypeError, ValueError) as e:
        raise InputError(f"{json_file}: nnU-Net refuses its 'labels' ({str(e).strip() or type(e).__name__}); declare "
                         f"them as in nnU-Net's dataset_format.md (regions: region_based_training.md, the ignore "
                         f"label: ignore_label.md)") from None


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
        declared = set(dataset.label_values) | ({dataset.ignore_label} if dataset.ignore_label is not None else set())
        undeclared = sorted(set(values.tolist()) - declared)
        if undeclared:
            raise InputError(f"{case.label}: label values {undeclared} are not declared in dataset.json; declare "
                             f"them or fix the label map")
        labels = label_array.astype(np.uint8)
    return LoadedCase(case.identifier, image, labels, grid)


def grids_match(a: Grid, b: Grid) -> bool:
    return a.size == b.size and all(
        np.allclose(x, y, atol=GEOMETRY_TOLERANCE) for x, y in
        ((a.spacing, b.spacing), (a.origin, b.origin), (a.direction, b.direction)))
