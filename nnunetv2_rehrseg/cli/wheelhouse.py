"""rehrseg_wheelhouse: wheels of this project and its dependencies, in parts, for an offline install elsewhere."""
import argparse
import logging
from pathlib import Path

from nnunetv2_rehrseg.cli.common import setup_logging
from nnunetv2_rehrseg.errors import exits_cleanly

CHECKOUT = Path(__file__).resolve().parents[2]


def default_project() -> str:
    """This checkout when running from one, else the released package of the running version."""
    if (CHECKOUT / "setup.cfg").is_file() and (CHECKOUT / "nnunetv2_rehrseg").is_dir():
        return str(CHECKOUT)
    from importlib.metadata import version

    return f"nnunetv2-rehrseg=={version('nnunetv2-rehrseg')}"


@exits_cleanly
def wheelhouse_entry(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Build a folder of wheels (this project + dependencies) for an offline install, split into "
                    "parts DIR/part1, DIR/part2, ... that install one after the other")
    parser.add_argument("-o", required=True, help="output folder")
    parser.add_argument("-python_version", default=None, help="target Python, e.g. 3.12 (default: this interpreter)")
    parser.add_argument("-platform", nargs="+", default=[],
                        help="target platform tag(s), e.g. manylinux_2_28_x86_64 (default: this machine)")
    parser.add_argument("-exclude", nargs="+", default=[],
                        help="packages the target already has (e.g. torch numpy): left out with what only they need")
    parser.add_argument("-part_mb", type=float, default=60.0, help="largest part in MB (default 60)")
    parser.add_argument("-project", default=None,
                        help="source tree or wheel of nnunetv2-rehrseg (default: this checkout, or the installed "
                             "version from the index)")
    parser.add_argument("-find_links", nargs="+", default=[], help="extra local wheel folders for pip")
    parser.add_argument("--no_index", action="store_true", help="use only -find_links (no package index)")
    parser.add_argument("--demo", action="store_true", help="also the demo's packages (nilearn), in parts of their own")
    args = parser.parse_args(argv)
    setup_logging()
    logging.getLogger().setLevel(logging.INFO)
    from nnunetv2_rehrseg.tools.wheelhouse import Target, build_wheelhouse, fetch_project

    out = Path(args.o).resolve()
    project = fetch_project(args.project or default_project(), out)
    house = build_wheelhouse(out, project, Target(args.python_version, tuple(args.platform)), args.exclude,
                             args.part_mb, args.demo, [Path(p).resolve() for p in args.find_links], args.no_index)
    for part in house.parts + house.demo_parts:
        kind = " (demo)" if part in house.demo_parts else ""
        print(f"{part.folder}: {len(part.files)} wheels, {part.megabytes:.1f} MB{kind}")
    if house.excluded:
        print(f"left out (the target has them): {', '.join(house.excluded)}")
    print("\ninstall, part by part (each needs only the parts before it):")
    for command in house.install_commands():
        print(f"  {command}")
    print(f"\nor all at once:\n  {house.one_command()}")
