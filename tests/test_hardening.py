"""Clinical-export edge cases through the public commands: refused with one line naming the file, or supported."""
import json

import numpy as np
import SimpleITK as sitk

from conftest import make_raw_dataset, phantom, write
from test_cli_selfsr import FAST, assert_on_hr_grid, run_expecting_error

from nnunetv2_rehrseg.cli.selfsr import selfsr_entry


def test_4d_truncated_and_constant_images_are_refused_before_any_write(nnunet_env, capsys):
    raw = make_raw_dataset(nnunet_env["nnUNet_raw"], 981, "Exports")
    image_file = raw / "imagesTr" / "case01_0000.nii.gz"
    original = image_file.read_bytes()
    four_d = sitk.JoinSeries([sitk.ReadImage(str(image_file))] * 2)
    sitk.WriteImage(four_d, str(image_file))
    err = run_expecting_error(capsys, ["-d", "981"] + FAST)
    assert "case01_0000.nii.gz" in err and "4D" in err
    image_file.write_bytes(original[: len(original) // 2])
    err = run_expecting_error(capsys, ["-d", "981"] + FAST)
    assert "case01_0000.nii.gz" in err and "truncated" in err
    write(np.full((8, 32, 32), 7.0, np.float32), (1.0, 1.0, 4.0), image_file)
    err = run_expecting_error(capsys, ["-d", "981"] + FAST)
    assert "case01_0000.nii.gz" in err and "constant" in err
    image_file.write_bytes(original)
    label_file = raw / "labelsTr" / "case00.nii.gz"
    label_file.write_bytes(label_file.read_bytes()[:200])
    err = run_expecting_error(capsys, ["-d", "981"] + FAST)
    assert "case00.nii.gz" in err and ("truncated" in err or "unreadable" in err)
    assert not any(nnunet_env["nnUNet_preprocessed"].iterdir())


def test_multichannel_empty_labels_mixed_spacing_and_thickness_from_dataset_json(nnunet_env):
    """Two contrasts super-resolved jointly; an all-background label map accepted; a case with another slice
    spacing gets its own HR grid (one r per dataset); the slice thickness comes from dataset.json."""
    raw = make_raw_dataset(nnunet_env["nnUNet_raw"], 982, "Mixed", n_cases=3)
    for i in range(3):
        image, _ = phantom((8, 32, 32), i + 10)
        write(np.sqrt(image), (1.0, 1.0, 4.0), raw / "imagesTr" / f"case{i:02d}_0001.nii.gz")
    write(np.zeros((8, 32, 32), np.uint8), (1.0, 1.0, 4.0), raw / "labelsTr" / "case01.nii.gz")
    for name in ("imagesTr/case02_0000.nii.gz", "imagesTr/case02_0001.nii.gz", "labelsTr/case02.nii.gz"):
        im = sitk.ReadImage(str(raw / name))
        im.SetSpacing((1.0, 1.0, 4.4))
        sitk.WriteImage(im, str(raw / name))
    dataset_json = json.loads((raw / "dataset.json").read_text())
    dataset_json["channel_names"] = {"0": "T1", "1": "T2"}
    dataset_json["rehrseg"] = {"slice_thickness": 5.0}
    (raw / "dataset.json").write_text(json.dumps(dataset_json))
    selfsr_entry(["-d", "982"] + FAST)
    folder = nnunet_env["nnUNet_preprocessed"] / "Dataset982_Mixed" / "rehrseg"
    settings = json.loads((folder / "settings.json").read_text())
    assert settings["r"] == 4 and settings["slice_thickness"] == 5.0 and settings["fwhm"] > 4.0
    for c in range(2):
        assert_on_hr_grid(folder / "pseudo_hr" / "imagesTr" / f"case00_000{c}.nii.gz",
                          raw / "imagesTr" / f"case00_000{c}.nii.gz", 2, 4)
    assert_on_hr_grid(folder / "pseudo_hr" / "imagesTr" / "case02_0000.nii.gz",
                      raw / "imagesTr" / "case02_0000.nii.gz", 2, 4)
    hr_spacing = sitk.ReadImage(str(folder / "pseudo_hr" / "labelsTr" / "case02.nii.gz")).GetSpacing()
    assert abs(hr_spacing[2] - 1.1) < 1e-6
    # an interrupt while the pseudo-HR data was being written: the rerun completes it (nothing is retrained)
    (folder / "summary.json").unlink()
    (folder / "pseudo_hr" / "imagesTr" / "case01_0001.nii.gz").unlink()
    selfsr_entry(["-d", "982"] + FAST)
    assert (folder / "summary.json").is_file() and (folder / "pseudo_hr" / "imagesTr" / "case01_0001.nii.gz").is_file()


def _save_repeatedly(path: str, value: float, times: int) -> None:
    import torch

    from nnunetv2_rehrseg.checkpoint import save_atomic

    for _ in range(times):
        save_atomic({"w": torch.full((256, 256), value)}, path)


def test_jobs_writing_the_same_checkpoint_at_once_leave_a_whole_file(tmp_path):
    """Folds started together each copy the shared self-SR model into the model folder: every writer has its own
    temporary name, so the file is always one writer's complete content and no temporary file is left."""
    import multiprocessing

    import torch

    from nnunetv2_rehrseg.checkpoint import load_safe

    path = str(tmp_path / "selfsr_checkpoint.pth")
    jobs = [multiprocessing.get_context("spawn").Process(target=_save_repeatedly, args=(path, float(v), 30))
            for v in (1, 2, 3)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=120)
        assert job.exitcode == 0
    weights = load_safe(path)["w"]
    assert weights.unique().numel() == 1 and float(weights[0, 0]) in (1.0, 2.0, 3.0)
    assert [p.name for p in tmp_path.iterdir()] == ["selfsr_checkpoint.pth"]
    assert torch.equal(weights, torch.full((256, 256), weights[0, 0]))
