"""rehrseg_wheelhouse on a tiny fake project served from a local folder (no index): exclusions with what only they
need, parts split at the size limit in dependency order, demo packages in parts of their own, sdists built."""
import base64
import hashlib
import json
import tarfile
import zipfile
from pathlib import Path

import pytest

from nnunetv2_rehrseg.cli.wheelhouse import wheelhouse_entry
from nnunetv2_rehrseg.tools.wheelhouse import compatible_platform_tags, split_into_parts


def fake_wheel(folder: Path, name: str, requires=(), payload_mb: float = 0.0, extras=()) -> Path:
    """A pure-Python wheel with the given dependencies and an incompressible payload."""
    dist = f"{name}-1.0.dist-info"
    files = {f"{name}/__init__.py": b"", f"{name}/payload.bin": __import__("os").urandom(int(payload_mb * 1e6))}
    lines = ["Metadata-Version: 2.1", f"Name: {name}", "Version: 1.0"]
    lines += [f"Provides-Extra: {e}" for e in extras] + [f"Requires-Dist: {r}" for r in requires]
    files[f"{dist}/METADATA"] = ("\n".join(lines) + "\n").encode()
    files[f"{dist}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
              f"{len(data)}" for path, data in files.items()] + [f"{dist}/RECORD,,"]
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for member, data in files.items():
            archive.writestr(member, data)
    return path


BACKEND = """
import base64, hashlib, zipfile


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = open("NAME").read().strip()
    dist = name + "-1.0.dist-info"
    files = {name + "/__init__.py": b"", dist + "/METADATA": ("Metadata-Version: 2.1\\nName: " + name +
             "\\nVersion: 1.0\\n").encode(),
             dist + "/WHEEL": b"Wheel-Version: 1.0\\nGenerator: t\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"}
    record = [k + ",sha256=" + base64.urlsafe_b64encode(hashlib.sha256(v).digest()).rstrip(b"=").decode() + "," +
              str(len(v)) for k, v in files.items()] + [dist + "/RECORD,,"]
    files[dist + "/RECORD"] = ("\\n".join(record) + "\\n").encode()
    wheel = name + "-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel_directory + "/" + wheel, "w") as archive:
        for k, v in files.items():
            archive.writestr(k, v)
    return wheel
"""


def fake_sdist(folder: Path, name: str) -> Path:
    """An sdist with an in-tree build backend (no build dependencies, so it builds offline): pip must turn it into a
    wheel."""
    source = folder / "src" / f"{name}-1.0"
    source.mkdir(parents=True)
    (source / "NAME").write_text(name)
    (source / "backend.py").write_text(BACKEND)
    (source / "pyproject.toml").write_text('[build-system]\nrequires = []\nbuild-backend = "backend"\n'
                                           'backend-path = ["."]\n')
    (source / "PKG-INFO").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    path = folder / f"{name}-1.0.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        archive.add(source, arcname=source.name)
    return path


@pytest.fixture
def index(tmp_path):
    """core deps: big_a (1.5 MB) -> small_b; big_c (1.5 MB); torchlike (excluded) -> only_for_torchlike, small_b;
    from_sdist (sdist only); demo extra: demo_d -> small_b."""
    folder = tmp_path / "index"
    folder.mkdir()
    fake_wheel(folder, "big_a", ["small_b"], payload_mb=1.5)
    fake_wheel(folder, "small_b", payload_mb=0.1)
    fake_wheel(folder, "big_c", payload_mb=1.5)
    fake_wheel(folder, "torchlike", ["only_for_torchlike", "small_b"], payload_mb=2.0)
    fake_wheel(folder, "only_for_torchlike", payload_mb=0.5)
    fake_wheel(folder, "demo_d", ["small_b"], payload_mb=0.2)
    fake_sdist(folder, "from_sdist")
    project = fake_wheel(tmp_path, "nnunetv2_rehrseg", ["big_a", "big_c", "torchlike", "from_sdist",
                                                        "demo_d; extra == 'demo'"], extras=["demo"])
    return folder, project


def test_wheelhouse_excludes_splits_and_orders(index, tmp_path, capsys):
    folder, project = index
    out = tmp_path / "house"
    wheelhouse_entry(["-o", str(out), "-project", str(project), "-find_links", str(folder), "--no_index",
                      "-exclude", "torchlike", "-part_mb", "2", "--demo"])
    manifest = json.loads((out / "manifest.json").read_text())
    parts = [[w.split("-")[0] for w in p["wheels"]] for p in manifest["parts"]]
    everything = [n for p in parts for n in p]
    # the excluded package and what only it needs are left out; shared dependencies stay
    assert "torchlike" not in everything and "only_for_torchlike" not in everything
    assert sorted(everything) == sorted(["big_a", "small_b", "big_c", "from_sdist", "nnunetv2_rehrseg", "demo_d"])
    assert manifest["excluded"] == ["torchlike"]
    # parts under the limit (a part of one wheel may not be), dependencies before their dependents
    for part in manifest["parts"]:
        assert part["megabytes"] <= 2 or len(part["wheels"]) == 1
        assert (out / part["folder"]).is_dir() and len(list((out / part["folder"]).glob("*.whl"))) == len(part["wheels"])
    position = {n: i for i, p in enumerate(parts) for n in p}
    assert position["small_b"] <= position["big_a"] <= position["nnunetv2_rehrseg"]
    assert len(parts) >= 3
    # the demo package alone in the last part, after the project
    assert parts[-1] == ["demo_d"]
    assert "install --no-index" in capsys.readouterr().out


def test_wheelhouse_without_demo_and_refuses_a_used_folder(index, tmp_path):
    folder, project = index
    out = tmp_path / "house"
    args = ["-o", str(out), "-project", str(project), "-find_links", str(folder), "--no_index", "-part_mb", "100"]
    wheelhouse_entry(args)
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["parts"]) == 1
    names = {w.split("-")[0] for w in manifest["parts"][0]["wheels"]}
    assert "demo_d" not in names and {"torchlike", "only_for_torchlike"} <= names
    with pytest.raises(SystemExit) as exit_info:
        wheelhouse_entry(args)
    assert exit_info.value.code == 2


def test_split_and_platform_tags(tmp_path):
    files = []
    for i, size in enumerate([3, 3, 5, 1, 1, 1]):
        path = tmp_path / f"w{i}.whl"
        path.write_bytes(b"x" * size * 100_000)
        files.append(path)
    parts = split_into_parts(files, tmp_path, part_mb=0.65)
    assert [[f.name for f in p.files] for p in parts] == [["w0.whl", "w1.whl"], ["w2.whl", "w3.whl"],
                                                            ["w4.whl", "w5.whl"]]
    assert split_into_parts(files[2:3], tmp_path, part_mb=0.1)[0].files == files[2:3]   # too big alone: own part
    tags = compatible_platform_tags("manylinux_2_28_x86_64")
    assert tags[0] == "manylinux_2_28_x86_64" and "manylinux_2_17_x86_64" in tags and "manylinux2014_x86_64" in tags
    assert "manylinux_2_29_x86_64" not in tags
    assert compatible_platform_tags("macosx_11_0_arm64") == ["macosx_11_0_arm64"]


def test_a_dependency_required_with_extras_brings_the_extras_dependencies():
    """blosc2 needs httpx[http2]; httpx's http2 extra needs h2. Another package reaching httpx first without the extra
    must not hide h2 (the offline install failed with 'No matching distribution found for h2')."""
    from packaging.requirements import Requirement

    from nnunetv2_rehrseg.tools.wheelhouse import Package, closure

    def package(name, *requires):
        return Package(name, "1.0", [Requirement(r) for r in requires])

    packages = {p.name: p for p in (
        package("project", "aaa", "blosc2"), package("aaa", "httpx"), package("blosc2", "httpx[http2]"),
        package("httpx", "anyio", 'h2<5,>=3; extra == "http2"'), package("h2", "hpack"), package("hpack"),
        package("anyio"))}
    order = closure(packages, "project", (), set(), {"python_version": "3.12", "sys_platform": "linux"})
    assert set(order) == set(packages)
    position = {name: i for i, name in enumerate(order)}
    assert position["hpack"] < position["h2"] < position["blosc2"] < position["project"]
    assert position["anyio"] < position["httpx"] < position["aaa"]
