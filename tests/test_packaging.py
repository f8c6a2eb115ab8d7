import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_ships_and_only_one_top_level_name():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "nnunetv2_rehrseg").rglob("__init__.py")}
    on_disk |= {"nnunetv2_rehrseg.trainers", "nnunetv2_rehrseg.planners"}
    assert listed == on_disk
    assert {name.split(".")[0] for name in listed} == {"nnunetv2_rehrseg"}
    package_dir = config["options"]["package_dir"]
    assert "nnunetv2_rehrseg.trainers = trainers" in package_dir and "nnunetv2_rehrseg.planners = planners" in package_dir


def test_console_scripts_resolve():
    import importlib

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    for line in config["options.entry_points"]["console_scripts"].strip().splitlines():
        name, target = (s.strip() for s in line.split("="))
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), name


def test_the_plugin_offers_the_users_trainers_and_no_research_code():
    """`-tr` of an installed plugin sees the user's trainers only; the benchmark's harness, research trainers and
    timing tools stay in benchmarks/ (not installed)."""
    import nnunetv2_rehrseg.trainers as trainers

    assert set(trainers.__all__) == {
        "REHRSegTrainer", "REHRSegTrainer_fromLR", "REHRSegTrainer_softTargets", "REHRSegTrainer_fast",
        "REHRSegTrainer_5epochs",
        "REHRSegTrainer_50epochs", "REHRSegTrainer_tiny", "nnUNetTrainer_rehrsegFastBudget",
        "nnUNetTrainer_rehrsegDemoBaselineBudget",
        "nnUNetTrainer_rehrsegTinyBudget", "REHRSegTrainer_selftest", "REHRSegTrainer_selftestCPU",
        "nnUNetTrainer_rehrsegSelftestBudget", "nnUNetTrainer_rehrsegSelftestCPUBudget"}
    package = ROOT / "nnunetv2_rehrseg"
    for name in ("benchmark.py", "benchmark_report.py", "convergence.py", "pseudo_label_scores.py"):
        assert not list(package.rglob(name)), name
    research = (ROOT / "benchmarks" / "research_trainers.py").read_text()
    assert "class REHRSegTrainer_noKD(" in research and "class REHRSegTrainer_transposedHead(" in research


def test_imports_flow_one_way_without_circles():
    """No module of the package imports a module that (directly or not) imports it back."""
    import ast

    package = ROOT / "nnunetv2_rehrseg"
    modules = {}
    for path in list(package.rglob("*.py")) + [p for d in ("trainers", "planners") for p in (ROOT / d).glob("*.py")]:
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[0] in ("trainers", "planners"):
            parts = ["nnunetv2_rehrseg"] + parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nnunetv2_rehrseg"):
                targets |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                            for a in node.names}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("nnunetv2_rehrseg")}
        graph[name] = {t for t in targets if t in modules and t != name}

    def reaches(start, goal, seen):
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and (seen.add(nxt) or reaches(nxt, goal, seen))):
                return True
        return False

    circles = sorted(name for name in graph if reaches(name, name, set()))
    # a package's __init__ importing its own submodules is how packages re-export; every other circle is a bug
    circles = [c for c in circles if not any(c == m or c.startswith(m + ".") for m in
                                             ("nnunetv2_rehrseg.trainers", "nnunetv2_rehrseg.planners"))]
    assert not circles, circles
    # the console scripts sit on top: nothing below them imports from cli/
    upward = sorted(f"{name} -> {t}" for name, targets in graph.items() if not name.startswith("nnunetv2_rehrseg.cli")
                    for t in targets if t.startswith("nnunetv2_rehrseg.cli"))
    assert not upward, upward
    # the package's top level holds the method's own modules; tooling lives in tools/
    top_level = {p.stem for p in package.glob("*.py")}
    assert not top_level & {"selftest", "wheelhouse", "step_timing", "phantom", "commands", "io"}, top_level
