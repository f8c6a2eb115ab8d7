import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

# the benchmark's modules (not installed with the plugin: research trainers, harness) for the tests that cover them
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

from nnunetv2_rehrseg.tools.phantom import OBLIQUE, make_raw_dataset, phantom, write  # noqa: E402,F401 (the tests' imports)

# Under pytest-xdist the workers share the machine: each gets its share of the cores (and so do the commands the tests
# start, which inherit the environment), since torch's default of one thread per core in every worker oversubscribes
# the cores and spends the difference spinning.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(_threads)
    torch.set_num_threads(_threads)


def tree_checksum(folder: Path) -> str:
    digest = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(f.relative_to(folder)).encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def nnunet_env(tmp_path, monkeypatch):
    paths = {k: tmp_path / k for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for k, v in paths.items():
        v.mkdir()
        monkeypatch.setenv(k, str(v))
    return paths


def command_env(root: Path) -> dict:
    """The environment of the tests that run the real commands: an nnU-Net tree under `root`, no data-augmentation
    workers, no compile, the worker's threads (below)."""
    env = dict(os.environ, nnUNet_n_proc_DA="0", nnUNet_compile="0")
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (root / name).mkdir()
        env[name] = str(root / name)
    return env


def expect_one_error_line(capsys, entry, argv) -> str:
    """`entry(argv)` must exit with status 2 and one `error:` line, no traceback; returns the line."""
    with pytest.raises(SystemExit) as exit_info:
        entry(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    error_lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1  # progress bars aside, one line that names the file and the fix
    return error_lines[0]


BIN = Path(sys.executable).parent
TINY_TRAINER = "REHRSegTrainer_tiny"


def run_command_line(*args, env):
    """A console script of the venv with these arguments; fails the test with its output when it fails."""
    result = subprocess.run([str(BIN / args[0]), *map(str, args[1:])], env=env, capture_output=True, text=True,
                            timeout=900)
    if result.returncode != 0:
        raise AssertionError(f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def train_tiny_and_predict(root: Path, dataset_id: int, kind: str) -> dict:
    """A tiny phantom dataset of `kind` (make_raw_dataset's label_kind) planned, trained (fold 0, --npz) and its test
    case predicted with probabilities and the LR output, through the real commands."""
    env = command_env(root)
    raw = make_raw_dataset(root / "nnUNet_raw", dataset_id, kind.capitalize(), n_cases=3, n_test=1,
                           shape_zyx=(8, 32, 32), label_kind=kind)
    checksum = tree_checksum(raw)
    run_command_line("rehrseg_plan_and_preprocess", "-d", dataset_id, "-device", "cpu", "-pl", "ExperimentPlanner", "-iterations", 12, "-np", 1,
                     env=env)
    pre = root / "nnUNet_preprocessed" / raw.name
    (pre / "splits_final.json").write_text(json.dumps([{"train": ["case00", "case01"], "val": ["case02"]}]))
    env["nnUNet_extTrainer"] = run_command_line("rehrseg_env", env=env).stdout.strip().split("=", 1)[1]
    run_command_line("nnUNetv2_train", dataset_id, "3d_fullres", 0, "-tr", TINY_TRAINER, "-p", "REHRSegPlans",
                     "-device", "cpu", "--npz", env=env)
    out = root / "predicted"
    run_command_line("rehrseg_predict", "-i", raw / "imagesTs", "-o", out, "-d", dataset_id, "-tr", TINY_TRAINER,
                     "-f", 0, "-device", "cpu", "--save_probabilities", "--lr_output", "-npp", 1, "-nps", 1, env=env)
    fold = root / "nnUNet_results" / raw.name / f"{TINY_TRAINER}__REHRSegPlans__3d_fullres" / "fold_0"
    return {"root": root, "env": env, "raw": raw, "pre": pre, "fold": fold, "out": out, "checksum": checksum}


def read_array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def pytest_collection_modifyitems(config, items):
    """Files with end-to-end (`slow`) tests first, in their own order: pytest-xdist hands whole files to its two
    workers in collection order (--dist loadfile --no-loadscope-reorder), so the long files start early and the short
    ones fill whichever worker finishes first, instead of a long file starting last on one worker."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)
