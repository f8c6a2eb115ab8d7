"""Real anatomy that ships in a package: nilearn's MNI152 T1 template with background / CSF / GM / WM / lateral
ventricle labels.

Label rule (kept fixed so numbers compare across runs), on the template's 1 mm grid: GM, WM = nilearn's GM/WM
probability maps (scaled to [0, 1]); brain = T1 > 0.2 * max(T1); CSF = clip(1 - GM - WM, 0, 1) * brain; label =
argmax over [not brain, CSF, GM, WM]. The lateral ventricles are then split off the CSF as the connected CSF
components (face connectivity) holding the ventricles' bodies at MNI (-10, 0, 20) and (10, 0, 20) mm: in this
template one compact object of 18 ml, 33 mm tall (four to five thick slices at r = 4, 2 mm), beside the thin sulcal
CSF. Arrays are returned in (z, y, x) order with a LPS grid, as SimpleITK reads them.
"""
from typing import Tuple

import numpy as np
from scipy.ndimage import label as connected_components
from scipy.ndimage import zoom

from nnunetv2_rehrseg.geometry import Grid

LABELS = {"background": 0, "CSF": 1, "GM": 2, "WM": 3, "ventricles": 4}
VENTRICLE_SEEDS_MNI_MM = ((-10.0, 0.0, 20.0), (10.0, 0.0, 20.0))


def _unit(data: np.ndarray) -> np.ndarray:
    data = np.asarray(data, dtype=np.float32)
    return data / 255.0 if data.max() > 1.5 else data


def ventricles_mask(csf: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The connected components of `csf` (voxel grid of `affine`) that hold a ventricle seed point."""
    components, _ = connected_components(csf)
    inverse = np.linalg.inv(affine)
    seeds = [tuple(np.round(inverse[:3, :3] @ np.asarray(p) + inverse[:3, 3]).astype(int))
             for p in VENTRICLE_SEEDS_MNI_MM]
    ids = {int(components[s]) for s in seeds} - {0}
    if not ids:
        raise ValueError("no CSF at the ventricle seed points: the template differs from nilearn's MNI152 (2009)")
    return np.isin(components, sorted(ids))


def mni152(spacing_mm: float = 2.0) -> Tuple[np.ndarray, np.ndarray, Grid]:
    """(T1 image, labels, grid) at the given isotropic spacing (linear zoom for the image, nearest for labels)."""
    try:
        from nilearn import datasets
    except ImportError as e:
        raise ImportError("the MNI152 anatomy needs nilearn: pip install 'nnunetv2-rehrseg[demo]'") from e
    t1_img = datasets.load_mni152_template(resolution=1)
    t1 = _unit(t1_img.get_fdata())
    gm = _unit(datasets.load_mni152_gm_template(resolution=1).get_fdata())
    wm = _unit(datasets.load_mni152_wm_template(resolution=1).get_fdata())
    brain = t1 > 0.2 * t1.max()
    csf = np.clip(1 - gm - wm, 0, 1) * brain
    labels = np.argmax(np.stack([~brain, csf, gm, wm]), axis=0).astype(np.uint8)
    labels[ventricles_mask(labels == LABELS["CSF"], t1_img.affine)] = LABELS["ventricles"]
    factor = float(t1_img.header.get_zooms()[0]) / spacing_mm
    t1 = zoom(t1, factor, order=1).astype(np.float32)
    labels = zoom(labels, factor, order=0)
    # nibabel (x, y, z) RAS -> SimpleITK arrays (z, y, x) with an LPS direction
    affine = t1_img.affine
    ras_to_lps = np.diag([-1.0, -1.0, 1.0])
    direction = ras_to_lps @ (affine[:3, :3] / np.abs(np.diag(affine[:3, :3])))
    grid = Grid(size=tuple(int(s) for s in t1.shape), spacing=(spacing_mm,) * 3,
                origin=tuple(ras_to_lps @ affine[:3, 3]), direction=tuple(direction.ravel()))
    return np.ascontiguousarray(t1.transpose(2, 1, 0)), np.ascontiguousarray(labels.transpose(2, 1, 0)), grid
