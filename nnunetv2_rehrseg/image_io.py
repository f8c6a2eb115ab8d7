"""Image IO with SimpleITK: arrays in (z, y, x) order with their grid; atomic writes (images and JSON)."""
import json
import os
from pathlib import Path
from typing import Tuple

import numpy as np
import SimpleITK as sitk

from nnunetv2_rehrseg.errors import InputError
from nnunetv2_rehrseg.geometry import Grid


def read_image(path) -> Tuple[np.ndarray, Grid]:
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise InputError(f"{path}: unreadable or truncated image ({str(e).strip().splitlines()[-1][:120]}); "
                         f"re-export it as NIfTI") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: a {image.GetDimension()}D image with {image.GetNumberOfComponentsPerPixel()} "
                         f"component(s); REHRSeg needs 3D single-component volumes (one file per channel)")
    array = sitk.GetArrayFromImage(image)
    is_nifti = str(path).endswith((".nii", ".nii.gz"))
    stored_finite = _nifti_is_finite(path) if is_nifti else True  # also reads the whole file: catches truncation
    if not stored_finite or (array.dtype.kind == "f" and not np.isfinite(array).all()):
        raise InputError(f"{path}: contains NaN or Inf voxels; fix or replace them before running REHRSeg")
    return array, Grid.of(image)


def _nifti_is_finite(path) -> bool:
    """ITK's NIfTI reader silently replaces NaN voxels, so the stored values are checked with nibabel."""
    import nibabel

    try:
        return bool(np.isfinite(np.asanyarray(nibabel.load(str(path)).dataobj)).all())
    except (EOFError, OSError, ValueError, nibabel.filebasedimages.ImageFileError) as e:
        # ITK may read a cut-off .nii.gz without complaint; the full decompression here notices
        raise InputError(f"{path}: unreadable or truncated image ({type(e).__name__}: {str(e)[:100]}); re-export "
                         f"it as NIfTI") from None


def write_image(array: np.ndarray, grid: Grid, path) -> None:
    """Write via a temporary name in the same folder, then rename (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = grid.apply_to(sitk.GetImageFromArray(array))
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    tmp = path.with_name(path.name[: -len(suffix)] + ".partial" + suffix)
    sitk.WriteImage(image, str(tmp), useCompression=True)
    os.replace(tmp, path)


def writer_unique_partial(path) -> Path:
    """A temporary name beside `path` that no other writer uses: jobs writing the same file at once (folds started
    together) never interleave, and the last rename wins with a complete file."""
    import uuid

    path = Path(path)
    return path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")


def copy_atomic(source, target) -> None:
    """Copy through a writer-unique temporary name, then rename."""
    import shutil

    tmp = writer_unique_partial(target)
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def write_json_atomic(path: Path, obj) -> None:
    """JSON written to a temporary name, then moved into place."""
    tmp = path.with_suffix(".partial")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)
