"""Demo dataset builder: real anatomy, deterministic subjects, consistent labels and LR/HR geometry."""
import json

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import binary_erosion
from scipy.ndimage import label as connected_components

from nnunetv2_rehrseg.demo.anatomy import DESIKAN_LABELS, icbm_desikan, mni152
from nnunetv2_rehrseg.demo.subjects import build_demo_dataset, make_subject
from nnunetv2_rehrseg.geometry import Grid, hr_grid
from nnunetv2_rehrseg.image_io import read_image


def test_subjects_are_deterministic_and_keep_the_label_set():
    t1, labels, _ = mni152(4.0)
    a_img, a_lab = make_subject(t1, labels, 4.0, seed=1)
    b_img, b_lab = make_subject(t1, labels, 4.0, seed=1)
    c_img, c_lab = make_subject(t1, labels, 4.0, seed=2)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    assert not np.array_equal(a_lab, c_lab)
    assert set(np.unique(a_lab)) == {0, 1, 2, 3, 4}
    # a smooth deformation: most voxels keep their template label, but not all
    assert 0.6 < (a_lab == labels).mean() < 0.999
    # the image still follows the labels: WM brighter than GM brighter than CSF (T1)
    means = [a_img[a_lab == k].mean() for k in (1, 2, 3)]
    assert means[0] < means[1] < means[2]


def test_build_demo_dataset_geometry_and_layout(tmp_path):
    demo = build_demo_dataset(tmp_path / "raw", tmp_path / "truth", 701, n_train=2, n_test=1, r=4, sitk_axis=1,
                              spacing_mm=4.0)
    dataset_json = json.loads((demo.raw_folder / "dataset.json").read_text())
    assert dataset_json["numTraining"] == 2 and dataset_json["labels"]["WM"] == 3
    assert sorted(p.name for p in (demo.raw_folder / "imagesTr").iterdir()) == ["sub00_0000.nii.gz",
                                                                                "sub01_0000.nii.gz"]
    lr_image, lr = read_image(demo.raw_folder / "imagesTs" / "sub02_0000.nii.gz")
    hr_labels, hr = read_image(demo.hr_truth / "labels" / "sub02.nii.gz")
    assert lr.spacing[1] == 16.0 and hr.spacing == (4.0, 4.0, 4.0)
    expected = hr_grid(lr, 1, 4)          # the HR truth lies exactly on the grid REHRSeg derives from the LR header
    assert expected.size == hr.size
    np.testing.assert_allclose(expected.origin, hr.origin, atol=1e-5)
    np.testing.assert_allclose(expected.spacing, hr.spacing)
    lr_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(demo.hr_truth / "lr_labels" / "sub02.nii.gz")))
    assert lr_labels.shape == lr_image.shape and set(np.unique(lr_labels)) <= {0, 1, 2, 3, 4}
    assert Grid.of(sitk.ReadImage(str(demo.raw_folder / "labelsTr" / "sub00.nii.gz"))) == lr


def test_lateral_ventricles_are_one_compact_object_split_off_the_csf():
    _, labels, grid = mni152(2.0)
    ventricles = labels == 4
    components, _ = connected_components(ventricles)
    assert np.bincount(components.ravel())[1:].max() > 0.95 * ventricles.sum()   # one object (joined, as at 1 mm)
    volume_ml = ventricles.sum() * np.prod(grid.spacing) / 1000
    assert 10 < volume_ml < 30                          # lateral ventricles of an adult brain
    extent = np.ptp(np.argwhere(ventricles), axis=0) + 1
    assert 12 <= extent[0] <= 24                        # 24-48 mm tall: a few thick slices at r = 4
    # a compact object beside the thin CSF: a third of it lies deeper than one voxel, against 5% of the other CSF
    def interior(mask):
        return binary_erosion(mask).sum() / mask.sum()
    assert interior(ventricles) > 0.25 > 0.1 > interior(labels == 1)


def test_second_anatomy_has_five_structures_on_its_own_grid_and_the_image_shows_them():
    image, labels, grid = icbm_desikan(3.0)
    assert image.shape == labels.shape == tuple(grid.size[::-1]) and grid.spacing == (3.0, 3.0, 3.0)
    assert set(np.unique(labels)) == set(DESIKAN_LABELS.values())
    ml = {name: (labels == v).sum() * 27 / 1000 for name, v in DESIKAN_LABELS.items() if v}
    assert 300 < ml["cortex"] + ml["white matter"] < 1100 and 4 < ml["hippocampus/amygdala"] < 25
    means = {name: image[labels == v].mean() for name, v in DESIKAN_LABELS.items() if v}
    # T1: ventricles dark, white matter brightest, the grey structures between
    assert means["lateral ventricles"] < means["hippocampus/amygdala"] < means["white matter"]
    assert means["cortex"] < means["white matter"] and means["deep grey matter"] < means["white matter"]
    # RAS voxel axes read as LPS arrays: superior is the last array index of z, as in mni152
    assert np.argwhere(labels == DESIKAN_LABELS["hippocampus/amygdala"])[:, 0].mean() < labels.shape[0] / 2


def test_demo_dataset_from_the_second_anatomy(tmp_path):
    demo = build_demo_dataset(tmp_path / "raw", tmp_path / "truth", 702, n_train=1, n_test=1, r=4, spacing_mm=3.0,
                              anatomy="icbm-desikan")
    assert demo.raw_folder.name == "Dataset702_IcbmDesikanThickSlices"
    assert json.loads((demo.raw_folder / "dataset.json").read_text())["labels"] == DESIKAN_LABELS
    lr_labels, _ = read_image(demo.raw_folder / "labelsTr" / "sub00.nii.gz")
    assert set(np.unique(lr_labels)) == set(DESIKAN_LABELS.values())
