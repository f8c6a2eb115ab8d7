import hashlib
import os
import sys
from pathlib import Path

import pytest

# the benchmark's modules (not installed with the plugin: research trainers, harness) for the tests that cover them
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

from nnunetv2_rehrseg.phantom import OBLIQUE, make_raw_dataset, phantom, write  # noqa: E402,F401 (the tests' imports)


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
    workers, no compile, two threads."""
    env = dict(os.environ, nnUNet_n_proc_DA="0", nnUNet_compile="0", OMP_NUM_THREADS="2")
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
