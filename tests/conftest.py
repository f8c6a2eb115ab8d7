import hashlib
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
