"""The offline install, proven on the real dependency tree: rehrseg_wheelhouse builds the parts of this checkout
(torch left out, as a GPU server has its own), a fresh venv gets torch first and then the project from the parts
alone (no index, no pip configuration, no other wheel folder), and rehrseg_selftest runs there. For Python 3.12
(another interpreter, its own platform tags) the parts install the same way; torch for 3.12 is not on this disk, so a
metadata-only stand-in takes its place and the check there is the install, `pip check` and the imports.

Opt-in (downloads a few hundred MB from the package index and installs torch into a fresh venv: about 10 minutes):
    REHRSEG_OFFLINE_INSTALL=1 python -m pytest tests/test_offline_install.py -s
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_wheelhouse import fake_wheel

CHECKOUT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(os.environ.get("REHRSEG_OFFLINE_INSTALL") != "1",
                                reason="opt-in: REHRSEG_OFFLINE_INSTALL=1 (network, ~10 minutes)")


def run(*command, env=None, timeout=1800) -> str:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, env=env, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, command))}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def offline_env(venv: Path) -> dict:
    """No index, no pip configuration, no wheel folders but the ones on the command line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PATH": f"{venv}/bin:{env['PATH']}"}


def build_parts(out: Path, *target: str) -> dict:
    run(Path(sys.executable).parent / "rehrseg_wheelhouse", "-o", out, "-project", CHECKOUT,
        "-exclude", "torch", "-part_mb", "60", *target)
    return json.loads((out / "manifest.json").read_text())


def install_from_parts(venv: Path, house: Path, manifest: dict) -> None:
    links = [a for p in manifest["parts"] for a in ("--find-links", house / p["folder"])]
    run(venv / "bin" / "python", "-m", "pip", "install", "--no-index", *links, "nnunetv2-rehrseg",
        env=offline_env(venv))


def test_offline_install_of_the_real_tree_runs_the_selftest(tmp_path):
    manifest = build_parts(tmp_path / "house")
    wheels = {w.split("-")[0].lower() for p in manifest["parts"] for w in p["wheels"]}
    assert "torch" not in wheels and {"nnunetv2", "nnunetv2_rehrseg", "h2", "hpack", "hyperframe"} <= wheels
    assert all(p["megabytes"] <= 60 or len(p["wheels"]) == 1 for p in manifest["parts"])
    venv = tmp_path / "server"
    run(sys.executable, "-m", "venv", venv)
    torch_version = __import__("torch").__version__.split("+")[0]
    run(venv / "bin" / "python", "-m", "pip", "install", "-q", f"torch=={torch_version}")   # the server's own torch
    install_from_parts(venv, tmp_path / "house", manifest)
    run(venv / "bin" / "python", "-m", "pip", "check", env=offline_env(venv))
    table = run(venv / "bin" / "rehrseg_selftest", "-device", "cpu", "-o", tmp_path / "selftest",
                env=offline_env(venv), timeout=1200)
    print(table)
    assert "FAIL" not in table


def python312():
    """A Python 3.12 that runs: on PATH, or one of pyenv's (whose shim refuses versions not selected)."""
    candidates = [shutil.which("python3.12"), *sorted(Path.home().glob(".pyenv/versions/3.12*/bin/python3.12"))]
    for candidate in filter(None, candidates):
        if subprocess.run([str(candidate), "--version"], capture_output=True).returncode == 0:
            return str(candidate)
    return None


@pytest.mark.skipif(python312() is None, reason="no Python 3.12 interpreter here")
def test_offline_install_for_python_3_12_from_its_own_parts(tmp_path):
    manifest = build_parts(tmp_path / "house", "-python_version", "3.12", "-platform", "manylinux_2_28_x86_64")
    compiled = [w for p in manifest["parts"] for w in p["wheels"] if "-cp3" in w]
    assert compiled and all("-cp312-" in w or "-abi3-" in w or "-cp32-" in w for w in compiled), compiled
    venv = tmp_path / "server312"
    run(python312(), "-m", "venv", venv)
    stand_in = tmp_path / "torch_stand_in"
    stand_in.mkdir()
    torch_version = __import__("torch").__version__.split("+")[0]
    wheel = fake_wheel(stand_in, "torch")     # torch 1.0 with no code: renamed to the version the tree asks for
    wheel = wheel.rename(stand_in / f"torch-{torch_version}-py3-none-any.whl")
    rewrite_version(wheel, torch_version)
    run(venv / "bin" / "python", "-m", "pip", "install", "--no-index", "--no-deps", wheel, env=offline_env(venv))
    install_from_parts(venv, tmp_path / "house", manifest)
    run(venv / "bin" / "python", "-m", "pip", "check", env=offline_env(venv))
    # the compiled dependencies import on 3.12 (those that import torch cannot beside the stand-in: installed only)
    imported = run(venv / "bin" / "python", "-c",
                   "import sys, numpy, scipy.ndimage, SimpleITK, nibabel, blosc2, h2, sigpy, medpy, skimage; "
                   "from importlib.metadata import version; "
                   "print(sys.version_info[:2], version('nnunetv2'), version('nnunetv2-rehrseg'))",
                   env=offline_env(venv))
    last = imported.strip().splitlines()[-1]           # sigpy prints a warning about the stand-in first
    assert last.startswith("(3, 12) 2.8.") and last.split()[-1] == "0.1.0"


def rewrite_version(wheel: Path, version: str) -> None:
    """The stand-in's metadata and dist-info folder carry `version` instead of 1.0; importing it fails as an absent
    torch would."""
    import base64
    import hashlib
    import zipfile

    with zipfile.ZipFile(wheel) as archive:
        files = {name.replace("torch-1.0.dist-info", f"torch-{version}.dist-info"): archive.read(name)
                 for name in archive.namelist() if not name.endswith("RECORD")}
    # packages that use torch when it imports (sigpy, scipy's array API) then see it as absent
    files["torch/__init__.py"] = b"raise ImportError('a stand-in for torch, which is not installed here')\n"
    dist = f"torch-{version}.dist-info"
    files[f"{dist}/METADATA"] = files[f"{dist}/METADATA"].replace(b"Version: 1.0", f"Version: {version}".encode())
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
              f"{len(data)}" for path, data in files.items()] + [f"{dist}/RECORD,,"]
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
