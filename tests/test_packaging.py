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
