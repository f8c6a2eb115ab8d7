"""nnU-Net's own workflow on REHRSeg models, through the real commands, on a tiny dataset stored as .mha:
two folds of REHRSeg and of stock LR nnU-Net (--npz, trained without nnUNet_raw) -> nnUNetv2_find_best_configuration
ranking both by the same LR-grid number -> ensembling (folds in rehrseg_predict, folders in nnUNetv2_ensemble) ->
nnU-Net's postprocessing applied to HR predictions -> rehrseg_predict split over two processes, interrupted and
continued, on a folder with one off-spec case -> export to zip, install into an empty nnUNet_results, predict and
super-resolve from the installed model alone."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import make_raw_dataset, write

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
CASES = ["case00", "case01", "case02", "case03"]
REHRSEG = "REHRSegTrainer_tiny__REHRSegPlans__3d_fullres"
STOCK = "nnUNetTrainer_rehrsegTinyBudget__nnUNetPlans__3d_fullres"
DATASET = "Dataset980_Workflow"


def run(*args, env, check=True, wait=True):
    command = [str(BIN / args[0]), *map(str, args[1:])]
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def to_mha(raw: Path) -> None:
    """The phantom dataset re-stored as .mha (nnU-Net reads any SimpleITK format)."""
    for path in sorted(raw.rglob("*.nii.gz")):
        sitk.WriteImage(sitk.ReadImage(str(path)), str(path).replace(".nii.gz", ".mha"))
        path.unlink()
    dataset_json = json.loads((raw / "dataset.json").read_text())
    (raw / "dataset.json").write_text(json.dumps({**dataset_json, "file_ending": ".mha"}))


def read(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("workflow")
    env = dict(os.environ, nnUNet_n_proc_DA="0", nnUNet_compile="0", nnUNet_def_n_proc="1")
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (root / name).mkdir()
        env[name] = str(root / name)
    raw = make_raw_dataset(root / "nnUNet_raw", 980, "Workflow", n_cases=4, shape_zyx=(8, 40, 40), n_test=2)
    to_mha(raw)
    run("nnUNetv2_plan_and_preprocess", "-d", 980, "-c", "3d_fullres", "-np", 1, env=dict(env, nnUNet_n_proc_DA="1"))
    pre = root / "nnUNet_preprocessed" / DATASET
    (pre / "splits_final.json").write_text(json.dumps([{"train": CASES[2:], "val": CASES[:2]},
                                                       {"train": CASES[:2], "val": CASES[2:]}]))
    run("rehrseg_plan_and_preprocess", "-d", 980, "-device", "cpu", "-pl", "ExperimentPlanner", "-iterations", 12, "-np", 1, env=env)
    env["nnUNet_extTrainer"] = run("rehrseg_env", env=env).stdout.strip().split("=", 1)[1]
    # a compute node with nnUNet_preprocessed and nnUNet_results only, as stock nnU-Net needs
    node = {k: v for k, v in env.items() if k != "nnUNet_raw"}
    for fold in (0, 1):
        run("nnUNetv2_train", 980, "3d_fullres", fold, "-tr", "REHRSegTrainer_tiny", "-p", "REHRSegPlans", "-device",
            "cpu", "--npz", env=node)
        run("nnUNetv2_train", 980, "3d_fullres", fold, "-tr", "nnUNetTrainer_rehrsegTinyBudget", "-p", "nnUNetPlans",
            "-device", "cpu", "--npz", env=node)
    return {"root": root, "env": env, "raw": raw, "pre": pre, "results": root / "nnUNet_results" / DATASET}


def test_mha_dataset_trains_and_validates_in_nnunet_layout(trained):
    model = trained["results"] / REHRSEG
    for fold, cases in ((0, CASES[:2]), (1, CASES[2:])):
        folder = model / f"fold_{fold}"
        for case in cases:
            lr, hr = read(folder / "validation" / f"{case}.mha"), read(folder / "validation_hr" / f"{case}.mha")
            label = read(trained["raw"] / "labelsTr" / f"{case}.mha")
            assert lr.shape == label.shape and hr.shape == (4 * label.shape[0], *label.shape[1:])
            assert (folder / "validation" / f"{case}.npz").is_file()
        summary = json.loads((folder / "validation" / "summary.json").read_text())
        assert {Path(c["reference_file"]).parent.name for c in summary["metric_per_case"]} == {"gt_segmentations"}
        hr_summary = json.loads((folder / "validation_hr" / "summary_vs_pseudo_hr_labels.json").read_text())
        assert len(hr_summary["metric_per_case"]) == 2 and 0 <= hr_summary["foreground_mean"]["Dice"] <= 1
    # rehrseg_evaluate reads the references' format (.mha here) and agrees with nnU-Net's summary
    run("rehrseg_evaluate", "-ref", trained["raw"] / "labelsTr", "-pred", model / "fold_0" / "validation", "-o",
        trained["root"] / "fold0_lr.json", "--chill", env=trained["env"])
    ours = json.loads((trained["root"] / "fold0_lr.json").read_text())["summary"]
    nnunet = json.loads((model / "fold_0" / "validation" / "summary.json").read_text())["foreground_mean"]["Dice"]
    assert ours["cases"] == 2 and ours["mean"]["Dice"] == pytest.approx(nnunet)


def test_find_best_configuration_ranks_rehrseg_and_stock_lr_by_the_same_number(trained):
    env = trained["env"]
    # nnU-Net's command takes every trainer x plans pair, so two models of different plans go through its API
    models = [{"trainer": "REHRSegTrainer_tiny", "plans": "REHRSegPlans", "configuration": "3d_fullres"},
              {"trainer": "nnUNetTrainer_rehrsegTinyBudget", "plans": "nnUNetPlans", "configuration": "3d_fullres"}]
    code = ("from nnunetv2.evaluation.find_best_configuration import find_best_configuration; "
            f"find_best_configuration(980, {models!r}, folds=(0, 1), num_processes=1)")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((trained["results"] / "inference_information.json").read_text())
    results = info["all_results"]
    assert REHRSEG in results and STOCK in results and any(k.startswith("ensemble___") for k in results)
    for model in (REHRSEG, STOCK):
        merged = trained["results"] / model / "crossval_results_folds_0_1"
        assert sorted(p.name for p in merged.glob("*.mha")) == [f"{c}.mha" for c in CASES]
        summary = json.loads((merged / "summary.json").read_text())
        assert results[model] == pytest.approx(summary["foreground_mean"]["Dice"])
    assert Path(info["best_model_or_ensemble"]["postprocessing_file"]).is_file()
    # postprocessing determined for REHRSeg alone (the cross-validation of its LR-grid output)
    run("nnUNetv2_find_best_configuration", 980, "-c", "3d_fullres", "-tr", "REHRSegTrainer_tiny", "-p",
        "REHRSegPlans", "-f", 0, 1, "-np", 1, env=env)
    assert (trained["results"] / REHRSEG / "crossval_results_folds_0_1" / "postprocessing.pkl").is_file()


@pytest.fixture(scope="module")
def test_inputs(trained):
    """Two good test cases and one isotropic case that the model cannot take."""
    folder = trained["root"] / "lr_in"
    folder.mkdir()
    for source in sorted((trained["raw"] / "imagesTs").glob("*_0000.mha")):
        (folder / source.name).write_bytes(source.read_bytes())
    write(np.zeros((16, 16, 16), np.float32) + np.arange(16)[:, None, None], (1.0, 1.0, 1.0),
          folder / "iso_0000.mha")
    return folder


def predict(trained, inputs, out, *flags, env=None, wait=True):
    return run("rehrseg_predict", "-i", inputs, "-o", out, "-d", 980, "-tr", "REHRSegTrainer_tiny", "-device", "cpu",
               "-npp", 1, "-nps", 1, "--disable_tta", *flags, env=env or trained["env"], check=False, wait=wait)


@pytest.fixture(scope="module")
def full(trained, test_inputs):
    """rehrseg_predict with both folds on the mixed folder: the reference the other predictions are compared to."""
    return predict(trained, test_inputs, trained["root"] / "full", "-f", 0, 1, "--save_probabilities", "--lr_output")


def test_predict_skips_the_bad_case_splits_over_processes_and_continues(trained, test_inputs, full):
    root = trained["root"]
    assert full.returncode == 2 and "iso_0000.mha" in full.stderr and "Traceback" not in full.stderr
    good = sorted(p.name.replace("_0000", "") for p in test_inputs.glob("case*_0000.mha"))
    assert len(good) == 2 and all((root / "full" / name).is_file() for name in good)
    assert all((root / "full" / "lr" / name).is_file() for name in good)
    assert not (root / "full" / "iso.mha").exists() and not (root / "full" / ".rehrseg_partial").exists()
    for name in ("dataset.json", "plans.json", "lr/dataset.json", "lr/plans.json"):
        assert (root / "full" / name).is_file(), name

    parts = [predict(trained, test_inputs, root / "parts", "-f", 0, 1, "-num_parts", 2, "-part_id", part,
                     wait=False) for part in (0, 1)]
    for p in parts:
        p.communicate(timeout=600)
    assert sorted(p.returncode for p in parts) == [0, 2]   # the bad case lies in one of the two parts
    for name in good:
        np.testing.assert_array_equal(read(root / "parts" / name), read(root / "full" / name))

    # an interrupted run: one case missing, a half-written one in the temporary folder; --continue_prediction
    # redoes that case only
    done, redo = good
    (root / "parts" / redo).unlink()
    (root / "parts" / ".rehrseg_partial" / redo[:-4]).mkdir(parents=True)
    (root / "parts" / ".rehrseg_partial" / redo[:-4] / "hr.mha").write_bytes(b"half")
    before = (root / "parts" / done).stat().st_mtime_ns
    predict(trained, test_inputs, root / "parts", "-f", 0, 1, "--continue_prediction")
    assert (root / "parts" / done).stat().st_mtime_ns == before
    np.testing.assert_array_equal(read(root / "parts" / redo), read(root / "full" / redo))
    assert not (root / "parts" / ".rehrseg_partial").exists()


def test_ensemble_and_postprocessing_of_hr_predictions(trained, test_inputs, full):
    root, env = trained["root"], trained["env"]
    for fold in (0, 1):
        predict(trained, test_inputs, root / f"fold{fold}", "-f", fold, "--save_probabilities")
        assert (root / f"fold{fold}" / "case04.npz").is_file() and (root / f"fold{fold}" / "case04.pkl").is_file()
    run("nnUNetv2_ensemble", "-i", root / "fold0", root / "fold1", "-o", root / "ensemble", "-np", 1, env=env)
    lr = sitk.ReadImage(str(test_inputs / "case04_0000.mha"))
    ensembled = sitk.ReadImage(str(root / "ensemble" / "case04.mha"))
    assert ensembled.GetSize() == (lr.GetSize()[0], lr.GetSize()[1], 4 * lr.GetSize()[2])
    assert np.allclose(ensembled.GetSpacing(), (*lr.GetSpacing()[:2], lr.GetSpacing()[2] / 4))
    # nnU-Net's probability averaging of the two folds agrees with rehrseg_predict's own fold ensemble (logits;
    # "full" is -f 0 1)
    agreement = np.mean(read(root / "ensemble" / "case04.mha") == read(root / "full" / "case04.mha"))
    assert agreement > 0.95

    pp = trained["results"] / REHRSEG / "crossval_results_folds_0_1" / "postprocessing.pkl"
    if not pp.is_file():
        pytest.skip("needs test_find_best_configuration_ranks_rehrseg_and_stock_lr_by_the_same_number first")
    run("nnUNetv2_apply_postprocessing", "-i", root / "full", "-o", root / "postprocessed", "-pp_pkl_file", pp,
        "-np", 1, env=env)
    processed = sitk.ReadImage(str(root / "postprocessed" / "case04.mha"))
    assert processed.GetSize() == ensembled.GetSize()
    assert np.allclose(processed.GetOrigin(), ensembled.GetOrigin())


def test_exported_model_installed_elsewhere_predicts_and_super_resolves(trained, test_inputs, full):
    root, env = trained["root"], trained["env"]
    run("nnUNetv2_export_model_to_zip", "-d", 980, "-o", root / "model.zip", "-c", "3d_fullres", "-tr",
        "REHRSegTrainer_tiny", "-p", "REHRSegPlans", "-f", 0, 1, env=env)
    elsewhere = {k: v for k, v in env.items() if k not in ("nnUNet_raw", "nnUNet_extTrainer")}
    for name in ("nnUNet_results", "nnUNet_preprocessed"):   # an empty machine: no stage-1 folder, no training data
        (root / "elsewhere" / name).mkdir(parents=True)
        elsewhere[name] = str(root / "elsewhere" / name)
    run("nnUNetv2_install_pretrained_model_from_zip", root / "model.zip", env=elsewhere)
    installed = root / "elsewhere" / "nnUNet_results" / DATASET / REHRSEG
    assert (installed / "fold_1" / "checkpoint_final.pth").is_file()
    result = predict(trained, test_inputs, root / "installed_pred", "-f", 0, 1, env=elsewhere)
    assert result.returncode == 2, result.stderr   # the isotropic case only
    run("rehrseg_predict", "-i", test_inputs, "-o", root / "installed_pred_m", "-m", installed, "-f", 0, 1, "-device",
        "cpu", "-npp", 1, "-nps", 1, "--disable_tta", env=elsewhere, check=False)
    for folder in ("installed_pred", "installed_pred_m"):
        np.testing.assert_array_equal(read(root / folder / "case04.mha"), read(root / "full" / "case04.mha"))

    good_only = root / "lr_good"
    good_only.mkdir()
    for f in test_inputs.glob("case*_0000.mha"):
        (good_only / f.name).write_bytes(f.read_bytes())
    run("rehrseg_super_resolve", "-i", good_only, "-o", root / "sr_installed", "-d", 980, "-tr", "REHRSegTrainer_tiny",
        "-device", "cpu", env=elsewhere)
    run("rehrseg_super_resolve", "-i", good_only, "-o", root / "sr_stage1", "-d", 980, "-device", "cpu", env=env)
    lr = sitk.ReadImage(str(good_only / "case04_0000.mha"))
    for folder in ("sr_installed", "sr_stage1"):
        sr = sitk.ReadImage(str(root / folder / "case04_0000.mha"))
        assert sr.GetSize() == (lr.GetSize()[0], lr.GetSize()[1], 4 * lr.GetSize()[2])
        assert (root / folder / "uncertainty" / "case04.mha").is_file()
    # the self-SR embedded in the checkpoints is the stage-1 model itself
    np.testing.assert_allclose(read(root / "sr_installed" / "case04_0000.mha"),
                               read(root / "sr_stage1" / "case04_0000.mha"), atol=1e-5)
