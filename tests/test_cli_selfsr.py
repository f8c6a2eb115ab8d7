import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import expect_one_error_line, make_raw_dataset, tree_checksum, write
from nnunetv2_rehrseg.cli.selfsr import selfsr_entry
from nnunetv2_rehrseg.cli.super_resolve import super_resolve_entry
from nnunetv2_rehrseg.geometry import Grid, hr_grid

FAST = ["-device", "cpu", "-iterations", "12", "-np", "1"]


def assert_on_hr_grid(path, lr_path, lr_axis, r):
    expected = hr_grid(Grid.of(sitk.ReadImage(str(lr_path))), lr_axis, r)
    got = Grid.of(sitk.ReadImage(str(path)))
    assert got.size == expected.size
    np.testing.assert_allclose(got.spacing, expected.spacing, atol=1e-5)
    np.testing.assert_allclose(got.origin, expected.origin, atol=1e-4)
    np.testing.assert_allclose(got.direction, expected.direction, atol=1e-6)


@pytest.mark.slow
def test_selfsr_end_to_end_then_super_resolve(nnunet_env, tmp_path):
    raw = make_raw_dataset(nnunet_env["nnUNet_raw"])
    before = tree_checksum(raw)
    selfsr_entry(["-d", "990"] + FAST)
    assert tree_checksum(raw) == before  # raw data is never modified
    folder = nnunet_env["nnUNet_preprocessed"] / "Dataset990_Tiny" / "rehrseg"
    settings = json.loads((folder / "settings.json").read_text())
    assert settings["r"] == 4 and settings["lr_axis"] == 2 and settings["hr_spacing"] == 1.0
    pseudo = folder / "pseudo_hr"
    for case in ("case00", "case01"):
        lr_image = raw / "imagesTr" / f"{case}_0000.nii.gz"
        for f in (pseudo / "imagesTr" / f"{case}_0000.nii.gz", pseudo / "labelsTr" / f"{case}.nii.gz",
                  pseudo / "uncertaintyTr" / f"{case}.nii.gz"):
            assert_on_hr_grid(f, lr_image, 2, 4)
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(pseudo / "labelsTr" / f"{case}.nii.gz")))
        assert set(np.unique(labels)) <= {0, 1, 2}
        u = sitk.GetArrayFromImage(sitk.ReadImage(str(pseudo / "uncertaintyTr" / f"{case}.nii.gz")))
        assert u.shape == (32, 32, 32) and ((u > 0) & (u < 1)).all()
    dataset_json = json.loads((pseudo / "dataset.json").read_text())
    assert dataset_json["numTraining"] == 2 and dataset_json["rehrseg"]["r"] == 4
    qc = json.loads((folder / "qc" / "lr_dice.json").read_text())
    assert set(qc["per_case"]) == {"case00", "case01"} and 0 <= qc["mean"] <= 1
    # the written labels, degraded back with the thick-slice majority, are the annotation; each label's source is
    # logged, decided on the in-plane task
    assert qc["written_min_per_label"] == {"1": 1.0, "2": 1.0}
    sources = json.loads((folder / "qc" / "label_sources.json").read_text())
    assert set(sources["sources"]["chosen"]) == {"1", "2"} == set(qc["label_sources"])
    assert sources["cases"] == ["case00", "case01"]
    assert (folder / "qc" / "montage.png").stat().st_size > 1000
    assert (folder / "summary.json").is_file() and (folder / "selfsr" / "checkpoint_final.pth").is_file()
    assert not list(folder.rglob("*.partial*"))
    # beside the labels, the class probabilities they were decided from (the soft pseudo-HR targets): one uint8
    # volume per label value on the HR grid, a distribution per voxel, never certain against the written label
    for case in ("case00", "case01"):
        files = [pseudo / "probabilitiesTr" / f"{case}_{k:04d}.nii.gz" for k in range(3)]
        for f in files:
            assert_on_hr_grid(f, raw / "imagesTr" / f"{case}_0000.nii.gz", 2, 4)
        levels = np.stack([sitk.GetArrayFromImage(sitk.ReadImage(str(f))) for f in files])
        assert levels.dtype == np.uint8 and np.abs(levels.sum(0).astype(int) - 255).max() <= 2
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(pseudo / "labelsTr" / f"{case}.nii.gz")))
        assert np.take_along_axis(levels, labels[None].astype(np.int64), 0).min() > 0
        assert (levels.argmax(0) == labels).mean() > 0.8

    # a stage-1 folder from before the class probabilities: a rerun writes them by the trained self-SR, the labels
    # unchanged
    probabilities_before = tree_checksum(pseudo / "probabilitiesTr")
    labels_before = tree_checksum(pseudo / "labelsTr")
    shutil.rmtree(pseudo / "probabilitiesTr")
    selfsr_entry(["-d", "990"] + FAST)
    assert tree_checksum(pseudo / "probabilitiesTr") == probabilities_before
    assert tree_checksum(pseudo / "labelsTr") == labels_before

    # a stage-1 folder from before the per-label sources (no decision, case records without the written labels'
    # scores): a rerun resumes, nothing to retrain or rewrite, and its summary still comes out
    (folder / "qc" / "label_sources.json").unlink()
    for record in (folder / "qc" / "cases").iterdir():
        record.write_text(json.dumps({k: v for k, v in json.loads(record.read_text()).items()
                                      if k != "written_lr_dice"}))
    # and a settings.json from before per-case geometry (no target spacing, no per-case entries)
    old_settings = {k: v for k, v in settings.items() if k not in ("target_spacing", "cases")}
    (folder / "settings.json").write_text(json.dumps(old_settings))
    labels_before = tree_checksum(pseudo / "labelsTr")
    selfsr_entry(["-d", "990"] + FAST)  # a rerun resumes: nothing to retrain, same settings accepted
    assert json.loads((folder / "settings.json").read_text()) == old_settings
    assert tree_checksum(pseudo / "labelsTr") == labels_before
    assert not (folder / "qc" / "label_sources.json").exists()
    assert json.loads((folder / "qc" / "lr_dice.json").read_text())["written_min_per_label"] == {}
    with pytest.raises(SystemExit) as exit_info:
        selfsr_entry(["-d", "990", "-r", "2"] + FAST)
    assert exit_info.value.code == 2

    out = tmp_path / "sr_out"
    super_resolve_entry(["-i", str(raw / "imagesTs"), "-o", str(out), "-d", "990", "-device", "cpu"])
    assert_on_hr_grid(out / "case02_0000.nii.gz", raw / "imagesTs" / "case02_0000.nii.gz", 2, 4)
    assert_on_hr_grid(out / "uncertainty" / "case02.nii.gz", raw / "imagesTs" / "case02_0000.nii.gz", 2, 4)
    sr = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "case02_0000.nii.gz")))
    lr = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "imagesTs" / "case02_0000.nii.gz")))
    assert abs(sr.mean() - lr.mean()) < 0.2 * lr.std()  # written on the input's intensity scale

    # split over two machines (-num_parts/-part_id): together the same files as one call
    two = tmp_path / "two_cases"
    two.mkdir()
    for source in (raw / "imagesTs" / "case02_0000.nii.gz", raw / "imagesTr" / "case00_0000.nii.gz"):
        (two / source.name).write_bytes(source.read_bytes())
    for part in ("0", "1"):
        super_resolve_entry(["-i", str(two), "-o", str(tmp_path / "parts"), "-d", "990", "-device", "cpu",
                             "-num_parts", "2", "-part_id", part])
    super_resolve_entry(["-i", str(two), "-o", str(tmp_path / "whole"), "-d", "990", "-device", "cpu"])
    for name in ("case00_0000.nii.gz", "case02_0000.nii.gz", "uncertainty/case00.nii.gz"):
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "parts" / name))),
                                      sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "whole" / name))))

    # another slice spacing than the training cases': the trained network's r on the case's own grid
    other = tmp_path / "other_spacing"
    write(lr, (1.0, 1.0, 2.0), other / "case09_0000.nii.gz")
    super_resolve_entry(["-i", str(other), "-o", str(tmp_path / "other_out"), "-d", "990", "-device", "cpu"])
    assert_on_hr_grid(tmp_path / "other_out" / "case09_0000.nii.gz", other / "case09_0000.nii.gz", 2, 4)
    # no thick axis at all: refused before any write
    wrong = tmp_path / "isotropic"
    write(lr, (1.0, 1.0, 1.0), wrong / "case09_0000.nii.gz")
    with pytest.raises(SystemExit) as exit_info:
        super_resolve_entry(["-i", str(wrong), "-o", str(tmp_path / "wrong_out"), "-d", "990", "-device", "cpu"])
    assert exit_info.value.code == 2 and not (tmp_path / "wrong_out").exists()


def test_lr_axis_other_than_z(nnunet_env):
    raw = make_raw_dataset(nnunet_env["nnUNet_raw"], 991, "AxisX", spacing=(3.0, 1.0, 1.0), shape_zyx=(24, 24, 8))
    selfsr_entry(["-d", "991"] + FAST)
    pseudo = nnunet_env["nnUNet_preprocessed"] / "Dataset991_AxisX" / "rehrseg" / "pseudo_hr"
    assert_on_hr_grid(pseudo / "imagesTr" / "case00_0000.nii.gz", raw / "imagesTr" / "case00_0000.nii.gz", 0, 3)


def run_expecting_error(capsys, argv):
    return expect_one_error_line(capsys, selfsr_entry, argv)


def test_isotropic_input_is_refused_before_any_write(nnunet_env, capsys):
    make_raw_dataset(nnunet_env["nnUNet_raw"], 992, "Iso", spacing=(1.0, 1.0, 1.1), shape_zyx=(16, 16, 16))
    err = run_expecting_error(capsys, ["-d", "992"] + FAST)
    assert "isotropic" in err and "Dataset992_Iso" in err
    assert not any(nnunet_env["nnUNet_preprocessed"].iterdir())


def test_undeclared_label_and_geometry_mismatch_name_the_file(nnunet_env, capsys):
    raw = make_raw_dataset(nnunet_env["nnUNet_raw"], 993, "Bad")
    label_file = raw / "labelsTr" / "case01.nii.gz"
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(label_file)))
    labels[0, 0, 0] = 7
    write(labels, (1.0, 1.0, 4.0), label_file)
    err = run_expecting_error(capsys, ["-d", "993"] + FAST)
    assert "case01.nii.gz" in err and "[7]" in err
    write(labels.clip(0, 2), (1.0, 1.0, 3.0), label_file)
    err = run_expecting_error(capsys, ["-d", "993"] + FAST)
    assert "case01.nii.gz" in err and "geometry" in err
    assert not any(nnunet_env["nnUNet_preprocessed"].iterdir())


def test_unknown_dataset(nnunet_env, capsys):
    err = run_expecting_error(capsys, ["-d", "999"] + FAST)
    assert "999" in err


def test_nan_voxels_2d_images_and_missing_labels_are_refused(nnunet_env, capsys):
    raw = make_raw_dataset(nnunet_env["nnUNet_raw"], 994, "Broken")
    image_file = raw / "imagesTr" / "case00_0000.nii.gz"
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(image_file)))
    image[2, 3, 4] = np.nan
    write(image, (1.0, 1.0, 4.0), image_file)
    err = run_expecting_error(capsys, ["-d", "994"] + FAST)
    assert "case00_0000.nii.gz" in err and "NaN" in err

    write(np.zeros((32, 32), np.float32), (1.0, 1.0), image_file, direction=(1, 0, 0, 1), origin=(0, 0))
    err = run_expecting_error(capsys, ["-d", "994"] + FAST)
    assert "case00_0000.nii.gz" in err and "2D" in err

    image[2, 3, 4] = 0.0
    write(image, (1.0, 1.0, 4.0), image_file)
    (raw / "labelsTr" / "case01.nii.gz").unlink()
    err = run_expecting_error(capsys, ["-d", "994"] + FAST)
    assert "case01" in err
    assert not any(nnunet_env["nnUNet_preprocessed"].iterdir())


def test_too_few_thick_slices_and_label_declarations_nnunet_refuses_are_refused(nnunet_env, capsys):
    make_raw_dataset(nnunet_env["nnUNet_raw"], 995, "Thin", shape_zyx=(3, 32, 32))
    err = run_expecting_error(capsys, ["-d", "995"] + FAST)
    assert "case00" in err and "window" in err
    raw = make_raw_dataset(nnunet_env["nnUNet_raw"], 996, "Regions")
    dataset_json = json.loads((raw / "dataset.json").read_text())
    # regions without regions_class_order; an ignore label below another label
    for labels, order in (({"background": 0, "whole": [1, 2], "inner": 2}, None),
                          ({"background": 0, "outer": 1, "inner": 2, "ignore": 1}, None)):
        dataset_json["labels"] = labels
        (raw / "dataset.json").write_text(json.dumps(dataset_json))
        err = run_expecting_error(capsys, ["-d", "996"] + FAST)
        assert "dataset.json" in err and "labels" in err and "dataset_format.md" in err
    assert not any(nnunet_env["nnUNet_preprocessed"].iterdir())


@pytest.mark.parametrize("flags, hint", [(["-r", "1"], "-r 2"), (["-r", "0"], "-r 2"),
                                         (["-target_spacing", "5"], "-target_spacing"),
                                         (["-slice_thickness", "-1"], "-slice_thickness")])
def test_scale_and_thickness_flags_out_of_range_give_one_line(nnunet_env, capsys, flags, hint):
    make_raw_dataset(nnunet_env["nnUNet_raw"], 994, "Flags")
    err = run_expecting_error(capsys, ["-d", "994"] + flags + FAST)
    assert hint in err and "Dataset994_Flags" in err
    assert not any(nnunet_env["nnUNet_preprocessed"].iterdir())


@pytest.mark.slow
def test_stage1_in_parts_equals_one_run(nnunet_env, capsys, monkeypatch):
    """rehrseg_selfsr -num_parts 2: part 0 trains the self-SR once and both parts generate their cases; together they
    write what one call writes (same data, same seed: the CPU fit is deterministic). The whole run generates its last
    two cases in two worker processes (-np 2, workers forced for these tiny cases), the parts every case in the main
    process: the two ways write the same data."""
    from nnunetv2_rehrseg.selfsr import stage1

    for dataset_id, name in ((996, "Whole"), (997, "Parts")):
        make_raw_dataset(nnunet_env["nnUNet_raw"], dataset_id, name, n_cases=3)
    monkeypatch.setattr(stage1, "WORKER_START_SECONDS", 0.0)
    selfsr_entry(["-d", "996", "-device", "cpu", "-iterations", "12", "-np", "2"])
    err = run_expecting_error(capsys, ["-d", "997", "-num_parts", "2", "-part_id", "1"] + FAST)
    assert "part 0" in err
    selfsr_entry(["-d", "997", "-num_parts", "2", "-part_id", "0"] + FAST)
    parts = nnunet_env["nnUNet_preprocessed"] / "Dataset997_Parts" / "rehrseg"
    assert not (parts / "summary.json").exists()
    assert sorted(p.name for p in (parts / "pseudo_hr" / "labelsTr").iterdir()) == ["case00.nii.gz", "case02.nii.gz"]
    selfsr_entry(["-d", "997", "-num_parts", "2", "-part_id", "1"] + FAST)
    assert (parts / "summary.json").is_file()
    whole = nnunet_env["nnUNet_preprocessed"] / "Dataset996_Whole" / "rehrseg"
    for case in ("case00", "case01", "case02"):
        for sub in (f"labelsTr/{case}.nii.gz", f"imagesTr/{case}_0000.nii.gz", f"uncertaintyTr/{case}.nii.gz"):
            a = sitk.GetArrayFromImage(sitk.ReadImage(str(whole / "pseudo_hr" / sub)))
            b = sitk.GetArrayFromImage(sitk.ReadImage(str(parts / "pseudo_hr" / sub)))
            # float32 rounding only (worker processes run the network with fewer threads)
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5, err_msg=sub)
    qc_whole = json.loads((whole / "qc" / "lr_dice.json").read_text())
    qc_parts = json.loads((parts / "qc" / "lr_dice.json").read_text())
    assert qc_parts["per_case"] == qc_whole["per_case"] and qc_parts["mean"] == pytest.approx(qc_whole["mean"])
