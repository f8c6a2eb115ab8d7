"""A dataset as clinics acquire it, through the real commands: training cases at two slice spacings, one series
acquired along another axis; test cases at a seen and at unseen thicknesses (thinner and thicker), one along another
axis. Every output must lie on its own case's HR grid (slice spacing / its r, derived from its own header)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import command_env, expect_one_error_line, make_raw_dataset, phantom, tree_checksum, write
from nnunetv2_rehrseg.cli.selfsr import selfsr_entry
from nnunetv2_rehrseg.geometry import Grid, detect_lr_axis, hr_grid

BIN = Path(sys.executable).parent
TARGET = 1.0     # the median in-plane spacing of the phantoms: every case's r is its slice spacing in mm
# test inputs: name -> (slice spacing, acquired along x instead of z)
TESTS = {"seen4": (4.0, False), "thin2": (2.0, False), "thick6": (6.0, False), "side3": (3.0, True)}


def run(*args, env, check=True):
    result = subprocess.run([str(BIN / args[0]), *args[1:]], env=env, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def own_hr_grid(lr_file: Path, r=None) -> Grid:
    lr = Grid.of(sitk.ReadImage(str(lr_file)))
    axis = detect_lr_axis(lr.spacing)
    return hr_grid(lr, axis, r or int(round(lr.spacing[axis] / TARGET)))


def assert_on_grid(path: Path, expected: Grid) -> None:
    got = Grid.of(sitk.ReadImage(str(path)))
    assert got.size == expected.size, path
    np.testing.assert_allclose(got.spacing, expected.spacing, atol=1e-5)
    np.testing.assert_allclose(got.origin, expected.origin, atol=1e-4)
    np.testing.assert_allclose(got.direction, expected.direction, atol=1e-6)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    env = command_env(root)
    raw = make_raw_dataset(root / "nnUNet_raw", 997, "Mixed", n_cases=4, n_test=0, shape_zyx=(8, 40, 40),
                           slice_spacings={2: 3.0, 3: 3.0}, sideways=(1,))
    tests = root / "tests"
    for i, (name, (spacing, sideways)) in enumerate(TESTS.items()):
        image, _ = phantom((8, 40, 40), 10 + i)
        if sideways:
            image = np.swapaxes(image, 0, 2).copy()
        write(image, (spacing, 1.0, 1.0) if sideways else (1.0, 1.0, spacing), tests / f"{name}_0000.nii.gz")
    checksum = tree_checksum(raw)
    # no -preset, no -pl: both follow the device (the CPU budget here), each choice logged with its flag
    planned = run("rehrseg_plan_and_preprocess", "-d", "997", "-device", "cpu", "-iterations", "12", "-np", "1",
                  env=env)
    pre = root / "nnUNet_preprocessed" / "Dataset997_Mixed"
    logged = planned.stdout + planned.stderr
    assert "-preset fast, the CPU budget" in logged and "-preset default for the GPU budget" in logged
    assert "-pl REHRSegPlannerCPU, the CPU budget" in logged
    plans = json.loads((pre / "REHRSegPlans.json").read_text())
    assert plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"][0] == 16
    # the series along another axis and a case at the other thickness are validated
    (pre / "splits_final.json").write_text(json.dumps([{"train": ["case00", "case02"], "val": ["case01", "case03"]}]))
    env["nnUNet_extTrainer"] = run("rehrseg_env", env=env).stdout.strip().split("=", 1)[1]
    run("nnUNetv2_train", "997", "3d_fullres", "0", "-tr", "REHRSegTrainer_tiny", "-p", "REHRSegPlans", "-device",
        "cpu", env=env)
    fold = root / "nnUNet_results" / "Dataset997_Mixed" / "REHRSegTrainer_tiny__REHRSegPlans__3d_fullres" / "fold_0"
    return {"root": root, "env": env, "raw": raw, "pre": pre, "fold": fold, "tests": tests, "checksum": checksum}


@pytest.mark.slow
def test_stage1_gives_each_case_its_own_r_axis_and_hr_grid(mixed):
    stage1 = mixed["pre"] / "rehrseg"
    settings = json.loads((stage1 / "settings.json").read_text())
    assert settings["target_spacing"] == TARGET and settings["r"] == 4 and settings["lr_axis"] == 2
    assert {k: (v["axis"], v["r"]) for k, v in settings["cases"].items()} == {
        "case00": (2, 4), "case01": (0, 4), "case02": (2, 3), "case03": (2, 3)}
    # a network per r: the dataset's in selfsr/, the other beside it
    assert (stage1 / "selfsr" / "checkpoint_final.pth").is_file()
    assert (stage1 / "selfsr_r3" / "checkpoint_final.pth").is_file()
    for case in settings["cases"]:
        expected = own_hr_grid(mixed["raw"] / "imagesTr" / f"{case}_0000.nii.gz")
        for folder, name in (("imagesTr", f"{case}_0000"), ("labelsTr", case), ("uncertaintyTr", case)):
            assert_on_grid(stage1 / "pseudo_hr" / folder / f"{name}.nii.gz", expected)
    qc = json.loads((stage1 / "qc" / "lr_dice.json").read_text())
    assert qc["written_min_per_label"] == {"1": 1.0, "2": 1.0}   # every case's labels agree with its annotation
    plans = json.loads((mixed["pre"] / "REHRSegPlans.json").read_text())
    block = plans["configurations"]["3d_fullres"]["rehrseg"]
    assert block["r"] == 4 and block["hr_spacing"] == pytest.approx([1.0, 1.0, 1.0])
    assert tree_checksum(mixed["raw"]) == mixed["checksum"]


@pytest.mark.slow
def test_final_validation_writes_each_case_on_its_own_grids(mixed):
    fold, stage1 = mixed["fold"], mixed["pre"] / "rehrseg"
    for case in ("case01", "case03"):
        assert_on_grid(fold / "validation_hr" / f"{case}.nii.gz",
                       Grid.of(sitk.ReadImage(str(stage1 / "pseudo_hr" / "labelsTr" / f"{case}.nii.gz"))))
        assert_on_grid(fold / "validation" / f"{case}.nii.gz",
                       Grid.of(sitk.ReadImage(str(mixed["raw"] / "labelsTr" / f"{case}.nii.gz"))))


@pytest.mark.slow
def test_prediction_at_any_thickness_and_along_another_axis(mixed):
    out = mixed["root"] / "predicted"
    inputs = mixed["root"] / "inputs"
    inputs.mkdir()
    for f in mixed["tests"].iterdir():
        (inputs / f.name).write_bytes(f.read_bytes())
    write(np.zeros((8, 8, 8), np.float32) + np.arange(8), (1.0, 1.0, 1.2), inputs / "isotropic_0000.nii.gz")
    result = run("rehrseg_predict", "-i", str(inputs), "-o", str(out), "-d", "997", "-tr", "REHRSegTrainer_tiny",
                 "-f", "0", "-device", "cpu", "--lr_output", "--save_probabilities", "-npp", "1", "-nps", "1",
                 env=mixed["env"], check=False)
    # the one case that cannot be served is named in one line; every other case is written
    assert result.returncode != 0 and "isotropic_0000.nii.gz" in result.stderr and "Traceback" not in result.stderr
    for name in TESTS:
        lr_file = inputs / f"{name}_0000.nii.gz"
        assert_on_grid(out / f"{name}.nii.gz", own_hr_grid(lr_file))
        assert_on_grid(out / "lr" / f"{name}.nii.gz", Grid.of(sitk.ReadImage(str(lr_file))))
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{name}.nii.gz")))
        probabilities = np.load(out / f"{name}.npz")["probabilities"]
        assert probabilities.shape == (3, *seg.shape)
        np.testing.assert_array_equal(probabilities.argmax(0), seg)
    assert not (out / "isotropic.nii.gz").exists()
    assert not any(p.name.startswith(".rehrseg_partial") for p in out.iterdir())


@pytest.mark.slow
def test_super_resolve_takes_each_case_with_the_network_of_its_r(mixed):
    out = mixed["root"] / "super_resolved"
    run("rehrseg_super_resolve", "-i", str(mixed["tests"]), "-o", str(out), "-d", "997", "-device", "cpu",
        env=mixed["env"])
    # r=3 and r=4 were trained; 2 mm takes the r=3 network (HR 0.67 mm), 6 mm the r=4 one (HR 1.5 mm)
    for name, r in (("seen4", 4), ("thin2", 3), ("thick6", 4), ("side3", 3)):
        lr_file = mixed["tests"] / f"{name}_0000.nii.gz"
        assert_on_grid(out / f"{name}_0000.nii.gz", own_hr_grid(lr_file, r))
        assert_on_grid(out / "uncertainty" / f"{name}.nii.gz", own_hr_grid(lr_file, r))


FAST = ["-device", "cpu", "-iterations", "12", "-np", "1"]


@pytest.mark.parametrize("bad, hint", [
    ("thin_case", "case01"),                  # a case not thicker than the target among thick ones
    ("unknown_thickness_case", "case07"),     # per-case thickness naming a case that does not exist
    ("negative_thickness", "case00"),
    ("thickness_beyond_overlap", "case00"),   # thicker than two slice spacings: a typo more likely than data
])
def test_inconsistent_geometry_is_refused_in_one_line_before_any_write(nnunet_env, capsys, bad, hint):
    raw = make_raw_dataset(nnunet_env["nnUNet_raw"], 998, "Bad", n_cases=3,
                           slice_spacings={1: 1.2} if bad == "thin_case" else None)
    dataset_json = json.loads((raw / "dataset.json").read_text())
    thickness = {"unknown_thickness_case": {"case07": 4.0}, "negative_thickness": {"case00": -1},
                 "thickness_beyond_overlap": {"case00": 9.0}}.get(bad)
    if thickness is not None:
        dataset_json["rehrseg"] = {"slice_thickness": thickness}
        (raw / "dataset.json").write_text(json.dumps(dataset_json))
    before = tree_checksum(raw)
    line = expect_one_error_line(capsys, selfsr_entry, ["-d", "998"] + FAST)
    assert hint in line
    assert not any(nnunet_env["nnUNet_preprocessed"].iterdir())
    assert tree_checksum(raw) == before


def test_per_case_thickness_from_dataset_json_sets_each_profile(nnunet_env):
    raw = make_raw_dataset(nnunet_env["nnUNet_raw"], 999, "Thick", n_cases=2, slice_spacings={1: 3.0})
    dataset_json = json.loads((raw / "dataset.json").read_text())
    dataset_json["rehrseg"] = {"slice_thickness": {"case00": 5.0}}      # case01: its slice spacing
    (raw / "dataset.json").write_text(json.dumps(dataset_json))
    selfsr_entry(["-d", "999", "-iterations", "4"] + FAST[:2] + FAST[4:])
    settings = json.loads((nnunet_env["nnUNet_preprocessed"] / "Dataset999_Thick" / "rehrseg" /
                           "settings.json").read_text())
    assert settings["cases"]["case00"]["slice_thickness"] == 5.0 and settings["cases"]["case00"]["r"] == 4
    assert settings["cases"]["case01"]["slice_thickness"] == 3.0 and settings["cases"]["case01"]["r"] == 3
