"""A folder of wheels of this project and its dependencies for an offline (air-gapped) install on another machine.

pip resolves, pip downloads, pip builds: this module only decides what goes where. The dependency tree comes from
pip's own resolver (`pip install --dry-run --report`) for the target interpreter and platform; packages the target
already has (`exclude`) are cut from the tree together with whatever only they need; sdist-only packages are built into
wheels here first (pip refuses sdists for a foreign target); the wheels are split, dependencies first, into parts of
at most `part_mb` MB, so that installing part 1, then part 2, ... never needs a later part.
"""
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

logger = logging.getLogger(__name__)
PROJECT = "nnunetv2-rehrseg"
DEMO_EXTRA = "demo"


@dataclass(frozen=True)
class Target:
    """The machine the wheels are for; None: the running interpreter's own."""
    python_version: Optional[str] = None        # "3.12"
    platforms: Sequence[str] = ()               # "manylinux_2_28_x86_64", ...

    @property
    def is_foreign(self) -> bool:
        return self.python_version is not None or bool(self.platforms)

    def pip_options(self) -> List[str]:
        options = []
        if self.python_version:
            options += ["--python-version", self.python_version, "--implementation", "cp"]
        for platform in self.platforms:
            for tag in compatible_platform_tags(platform):
                options += ["--platform", tag]
        return options + (["--only-binary=:all:"] if self.is_foreign else [])

    def marker_environment(self) -> Dict[str, str]:
        env = default_environment()
        if self.python_version:
            env.update(python_version=self.python_version, python_full_version=f"{self.python_version}.0")
        return env


def compatible_platform_tags(platform: str) -> List[str]:
    """A manylinux tag with every older glibc tag it can install (pip matches --platform literally): a machine with
    glibc 2.28 runs manylinux_2_17 (= manylinux2014), manylinux2010 and manylinux1 wheels too."""
    match = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform)
    if not match:
        return [platform]
    glibc, arch = int(match.group(1)), match.group(2)
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(glibc, 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    return tags + [f"{name}_{arch}" for minor, name in legacy.items() if minor <= glibc]


@dataclass
class Package:
    name: str                   # canonical
    version: str
    requires: List[Requirement]


@dataclass
class Part:
    folder: Path
    files: List[Path] = field(default_factory=list)

    @property
    def megabytes(self) -> float:
        return sum(f.stat().st_size for f in self.files) / 1e6


# ---------------------------------------------------------------- the dependency tree (pure)
def packages_from_report(report: dict) -> Dict[str, Package]:
    """pip's installation report -> {canonical name: Package}."""
    packages = {}
    for item in report["install"]:
        meta = item["metadata"]
        packages[canonicalize_name(meta["name"])] = Package(
            canonicalize_name(meta["name"]), meta["version"], [Requirement(r) for r in meta.get("requires_dist", [])])
    return packages


def dependencies(package: Package, extras: Iterable[str], environment: Dict[str, str]) -> Dict[str, Set[str]]:
    """What a package needs on the target with the given extras (markers evaluated there): {canonical name: the
    extras it is required with}, e.g. httpx[http2] -> {"httpx": {"http2"}}."""
    needed: Dict[str, Set[str]] = {}
    for requirement in package.requires:
        marker = requirement.marker
        if marker is None or any(marker.evaluate({**environment, "extra": e}) for e in ("", *extras)):
            needed.setdefault(canonicalize_name(requirement.name), set()).update(requirement.extras)
    return needed


def closure(packages: Dict[str, Package], root: str, extras: Sequence[str], exclude: Set[str],
            environment: Dict[str, str]) -> List[str]:
    """Names needed by root (with extras), never entering an excluded package, in dependency-first order. A package
    required with extras brings those extras' dependencies too (blosc2 -> httpx[http2] -> h2, hpack, hyperframe),
    also when it was first reached without them."""
    order: List[str] = []
    open_names: Set[str] = set()
    done_extras: Dict[str, Set[str]] = {}

    def visit(name: str, wanted_extras: Set[str]) -> None:
        if name in exclude or name not in packages or name in open_names:
            return     # excluded, not part of the resolution, or a cycle (it lands where it was first entered)
        if name in done_extras and wanted_extras <= done_extras[name]:
            return
        extras_now = done_extras.get(name, set()) | set(wanted_extras)
        open_names.add(name)
        for dependency, its_extras in sorted(dependencies(packages[name], extras_now, environment).items()):
            visit(dependency, its_extras)
        open_names.discard(name)
        done_extras[name] = extras_now
        if name not in order:
            order.append(name)

    visit(canonicalize_name(root), set(extras))
    return order


def split_into_parts(files: Sequence[Path], folder: Path, part_mb: float, first: int = 1) -> List[Part]:
    """Consecutive parts folder/part<first>, ... of at most part_mb MB, in the given order (a larger single file gets
    a part of its own)."""
    parts: List[Part] = []
    for path in files:
        size_mb = path.stat().st_size / 1e6
        if not parts or (parts[-1].files and parts[-1].megabytes + size_mb > part_mb):
            parts.append(Part(folder / f"part{first + len(parts)}"))
        parts[-1].files.append(path)
        if size_mb > part_mb:
            logger.warning("%s is %.1f MB, above -part_mb %.0f: it gets a part of its own", path.name, size_mb, part_mb)
    return parts


# ---------------------------------------------------------------- pip
def _pip(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pip", *args]
    logger.info("$ %s", " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        errors = "\n".join(line for line in result.stderr.splitlines() if "is ignored" not in line)
        from nnunetv2_rehrseg.errors import InputError

        raise InputError(f"pip {args[0]} failed (check -python_version, -platform, -find_links):\n{errors[-4000:]}")
    return result


def _index_options(find_links: Sequence[Path], no_index: bool) -> List[str]:
    options = [f"--find-links={p}" for p in find_links]
    return options + (["--no-index"] if no_index else [])


def resolve(requirement: str, target: Target, find_links: Sequence[Path], no_index: bool, work: Path) -> dict:
    report = work / f"report_{len(list(work.glob('report_*')))}.json"
    _pip("install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report), *target.pip_options(),
         *_index_options(find_links, no_index), requirement)
    return json.loads(report.read_text())


def _is_wheel(item: dict) -> bool:
    return item["download_info"]["url"].endswith(".whl")


def fetch_project(project: str, work: Path) -> Path:
    """A source tree or wheel path as given; a requirement ("nnunetv2-rehrseg==0.1.0") downloaded as a wheel."""
    if Path(project).exists():
        return Path(project).resolve()
    folder = work / ".project"
    _pip("download", "--no-deps", "--only-binary=:all:", "--quiet", "-d", str(folder), project)
    return next(folder.glob("*.whl"))


def build_project_wheel(project: Path, out: Path) -> Path:
    """The project's own wheel: built from a source tree, or copied when a wheel is given."""
    if project.is_file():
        return Path(shutil.copy(project, out))
    before = set(out.glob("*.whl"))
    _pip("wheel", "--no-deps", "--quiet", "-w", str(out), str(project))
    (wheel,) = set(out.glob("*.whl")) - before
    return wheel


def build_sdist_wheels(requirement: str, find_links: Sequence[Path], no_index: bool, out: Path, work: Path) -> None:
    """Wheels of the sdist-only packages of the tree, built with the running interpreter (pure-Python ones then fit
    any target; a platform wheel for another target would be refused by the target resolution, with pip's message)."""
    sdists = [item["metadata"] for item in resolve(requirement, Target(), find_links, no_index, work)["install"]
              if not _is_wheel(item)]
    for meta in sdists:
        logger.info("building a wheel of %s %s (sdist only)", meta["name"], meta["version"])
        _pip("wheel", "--no-deps", "--quiet", "-w", str(out), *_index_options(find_links, no_index),
             f"{meta['name']}=={meta['version']}")


def download(pins: Sequence[str], target: Target, find_links: Sequence[Path], no_index: bool, out: Path) -> None:
    _pip("download", "--no-deps", "--quiet", "-d", str(out), "--only-binary=:all:", *target.pip_options(),
         *_index_options(find_links, no_index), *pins)


# ---------------------------------------------------------------- the whole job
@dataclass
class Wheelhouse:
    parts: List[Part]
    demo_parts: List[Part]
    excluded: List[str]

    def install_commands(self, pip: str = "pip") -> List[str]:
        """One command per part, in order; each needs only the parts before it (and the excluded packages)."""
        commands = []
        for part in self.parts + self.demo_parts:
            commands.append(f"{pip} install --no-index --find-links {part.folder} {part.folder}/*.whl")
        return commands

    def one_command(self, pip: str = "pip") -> str:
        links = " ".join(f"--find-links {p.folder}" for p in self.parts + self.demo_parts)
        extra = f"[{DEMO_EXTRA}]" if self.demo_parts else ""
        return f"{pip} install --no-index {links} '{PROJECT}{extra}'"


def build_wheelhouse(out: Path, project: Path, target: Target = Target(), exclude: Sequence[str] = (),
                     part_mb: float = 60.0, demo: bool = False, find_links: Sequence[Path] = (),
                     no_index: bool = False) -> Wheelhouse:
    out.mkdir(parents=True, exist_ok=True)
    if any(out.glob("part*")):
        from nnunetv2_rehrseg.errors import InputError

        raise InputError(f"{out} already holds parts; choose a new -o or delete it")
    excluded = {canonicalize_name(n) for n in exclude}
    with tempfile.TemporaryDirectory(prefix="rehrseg_wheelhouse_") as tmp:
        work, built, wheels = Path(tmp), Path(tmp) / "built", Path(tmp) / "wheels"
        built.mkdir()
        wheels.mkdir()
        build_project_wheel(project, built)
        links = [built, *find_links]
        requirement = f"{PROJECT}[{DEMO_EXTRA}]" if demo else PROJECT
        build_sdist_wheels(requirement, links, no_index, built, work)
        report = resolve(requirement, target, links, no_index, work)
        packages = packages_from_report(report)
        environment = target.marker_environment()
        core = closure(packages, PROJECT, (), excluded, environment)
        demo_only = [n for n in closure(packages, PROJECT, (DEMO_EXTRA,), excluded, environment) if n not in core] \
            if demo else []
        download([f"{packages[n].name}=={packages[n].version}" for n in core + demo_only], target, links, no_index,
                 wheels)
        files = {canonicalize_name(f.name.split("-")[0]): f for f in wheels.glob("*.whl")}   # name-version-tags.whl
        missing = [n for n in core + demo_only if n not in files]
        if missing:
            raise RuntimeError(f"pip download gave no wheel for {', '.join(missing)}")
        parts = split_into_parts([files[n] for n in core], out, part_mb)
        demo_parts = split_into_parts([files[n] for n in demo_only], out, part_mb, first=len(parts) + 1)
        for part in parts + demo_parts:
            part.folder.mkdir(parents=True)
            part.files = [Path(shutil.move(str(f), part.folder / f.name)) for f in part.files]
    house = Wheelhouse(parts, demo_parts, sorted(excluded & set(packages)))
    manifest = {"target": {"python_version": target.python_version, "platforms": list(target.platforms)},
                "excluded": house.excluded,
                "parts": [{"folder": str(p.folder.relative_to(out)), "megabytes": round(p.megabytes, 2),
                           "wheels": [f.name for f in p.files]} for p in parts + demo_parts],
                "install": house.install_commands()}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return house
