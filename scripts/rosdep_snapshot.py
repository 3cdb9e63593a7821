"""What rosdep resolves the packages' dependencies to on each ROS 2 distribution the node supports.

Reads a checkout of https://github.com/ros/rosdistro offline (rosdep's sources and the distributions' package
lists, no network) and asks the real rosdep to resolve every dependency of package.xml and msg/package.xml, and
every ROS package the code imports, on Humble (Ubuntu 22.04), Jazzy and Kilted (24.04). Writes
test/data/rosdep.json, which test/test_package.py checks both package.xml files against. Run it again after a
dependency changes:

    python3 -m venv /tmp/rosdep-venv && /tmp/rosdep-venv/bin/pip install rosdep
    git clone https://github.com/ros/rosdistro /tmp/rosdistro
    .venv/bin/python scripts/rosdep_snapshot.py /tmp/rosdistro --rosdep /tmp/rosdep-venv/bin/rosdep

Run it with the project's Python: which imports are ROS packages is read from what that Python has installed.
"""
from __future__ import annotations

import argparse
import ast
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from importlib.metadata import distributions
from pathlib import Path

from packaging.requirements import Requirement  # transformers' dependency
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
PACKAGE_XMLS = (REPO / "package.xml", REPO / "msg" / "package.xml")
SHIPPED_CODE = ("ddvlm_core", "ddvlm_ros", "launch")  # what a robot runs (setup.py also installs training/)
PIP_REQUIREMENTS = (REPO / "requirements-ml.txt", REPO / "requirements-assets.txt")
PIP_INSTALLED_APART = {"torch"}  # the Makefile installs torch itself (the CPU wheel); a Jetson, JetPack's
DISTROS = {"humble": "ubuntu:jammy", "jazzy": "ubuntu:noble", "kilted": "ubuntu:noble"}
SNAPSHOT = REPO / "test" / "data" / "rosdep.json"
DEPEND_TAGS = ("depend", "build_depend", "buildtool_depend", "exec_depend", "test_depend", "build_export_depend")


def declared(package_xml: Path) -> tuple[str, list[str]]:
    """(the package's name, its dependencies' keys, in the file's order)."""
    root = ET.parse(package_xml).getroot()
    return root.findtext("name"), [e.text.strip() for e in root if e.tag in DEPEND_TAGS]


def own_packages() -> set[str]:
    return {declared(p)[0] for p in PACKAGE_XMLS}


def _requirement_names() -> set[str]:
    """The distributions the pip requirements files name (and torch), as pip normalizes names."""
    names = set(PIP_INSTALLED_APART)
    for path in PIP_REQUIREMENTS:
        for line in path.read_text().splitlines():
            line = line.split("#")[0].strip()
            if line:
                names.add(canonicalize_name(Requirement(line).name))
    return names


def imported_modules(folders=SHIPPED_CODE) -> set[str]:
    """The top-level modules of every absolute import in ``folders`` that are neither the standard library nor
    this repository's own code."""
    ours = {"ddvlm_core", "ddvlm_ros", "training"}
    found = set()
    for folder in folders:
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    found.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m not in ours}


def modules_from_pip() -> set[str]:
    """The top-level modules of the installed distributions that a pip requirement names: each one's
    top_level.txt, and the folders and modules of its .py files (wheels built with meson or maturin, such as
    NumPy's and tokenizers', have no top_level.txt; Python 3.10's packages_distributions() reads only that)."""
    wanted = _requirement_names()
    modules = set()
    for dist in distributions():
        if canonicalize_name(dist.metadata["Name"] or "") not in wanted:
            continue
        modules.update((dist.read_text("top_level.txt") or "").split())
        modules.update(f.parts[0] if len(f.parts) > 1 else f.stem for f in dist.files or () if f.suffix == ".py")
    return modules


def imported_ros_packages() -> set[str]:
    """The ROS packages the shipped code imports: every imported top-level module that no pip requirement
    (requirements-ml.txt, requirements-assets.txt, torch) provides, as installed in this Python."""
    return imported_modules() - modules_from_pip()


def keys_to_resolve() -> list[str]:
    keys = {k for p in PACKAGE_XMLS for k in declared(p)[1]} | imported_ros_packages()
    return sorted(keys - own_packages())


def parse_resolve(output: str) -> dict[str, str | None]:
    """`rosdep resolve k1 k2 ...`'s output -> key -> 'installer: its packages' (None: no rule for it)."""
    installers: dict[str, str | None] = {}
    packages: dict[str, list[str]] = {}
    key = None
    for line in output.splitlines():
        if line.startswith("#ROSDEP[") and line.endswith("]"):
            key = line[len("#ROSDEP["):-1]
            installers[key], packages[key] = None, []
        elif line.startswith("#") and key is not None:
            installers[key] = line[1:]
        elif key is not None and installers[key] is not None:
            packages[key] += line.split()
    return {k: f"{installers[k]}: {' '.join(packages[k])}" if packages[k] else None for k in installers}


def offline_rosdep_env(rosdistro: Path, work: Path) -> dict[str, str]:
    """rosdep's environment for reading ``rosdistro`` (a checkout) instead of GitHub: a sources list of its
    rosdep/*.yaml files, an index whose distribution files are local and which names no distribution caches
    (they are fetched from repo.ros2.org), and a ROS_HOME of its own."""
    sources = work / "sources.list.d"
    sources.mkdir(parents=True)
    (sources / "20-default.list").write_text(
        "".join(f"yaml file://{rosdistro.resolve()}/rosdep/{name}.yaml\n" for name in ("base", "python", "ruby")))
    root = f"file://{rosdistro.resolve()}"
    index = (rosdistro / "index-v4.yaml").read_text().replace("https://raw.githubusercontent.com/ros/rosdistro/master",
                                                              root)
    lines = [re.sub(r"^(\s*distribution: \[)(?!file:)", rf"\g<1>{root}/", line) for line in index.splitlines()
             if "distribution_cache:" not in line]
    (work / "index-v4.yaml").write_text("\n".join(lines) + "\n")
    return {**os.environ, "ROSDEP_SOURCE_PATH": str(sources), "ROS_HOME": str(work / "ros_home"),
            "ROSDISTRO_INDEX_URL": f"file://{work / 'index-v4.yaml'}", "ROS_PYTHON_VERSION": "3"}


def resolve_all(rosdistro: Path, rosdep: str, keys: list[str]) -> dict[str, dict[str, str | None]]:
    with tempfile.TemporaryDirectory() as tmp:
        env = offline_rosdep_env(rosdistro, Path(tmp))
        table = {}
        for distro, os_name in DISTROS.items():
            subprocess.run([rosdep, "update", "--rosdistro", distro], env=env, check=True, capture_output=True)
            out = subprocess.run([rosdep, "resolve", *keys, "--rosdistro", distro, "--os", os_name],
                                 env=env, capture_output=True, text=True)  # exits 1 when a key has no rule
            table[distro] = {key: parse_resolve(out.stdout).get(key) for key in keys}
        return table


def rosdistro_version(rosdistro: Path) -> dict[str, str]:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(rosdistro), *args], capture_output=True, text=True,
                              check=True).stdout.strip()
    return {"commit": git("rev-parse", "HEAD"), "date": git("log", "-1", "--format=%cs")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Resolve both package.xml files' dependencies with rosdep on each "
                                                 "supported ROS 2 distribution, offline from a rosdistro checkout, "
                                                 "into test/data/rosdep.json")
    parser.add_argument("rosdistro", type=Path, help="a git checkout of github.com/ros/rosdistro")
    parser.add_argument("--rosdep", default="rosdep", help="the rosdep executable (pip install rosdep)")
    parser.add_argument("--out", type=Path, default=SNAPSHOT, help="where to write the table (JSON)")
    args = parser.parse_args(argv)
    keys = keys_to_resolve()
    snapshot = {
        "made_by": "python scripts/rosdep_snapshot.py ROSDISTRO --rosdep ROSDEP",
        "made_on": datetime.date.today().isoformat(),
        "rosdistro": rosdistro_version(args.rosdistro),
        "os": DISTROS,
        "resolved": resolve_all(args.rosdistro, args.rosdep, keys),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(snapshot, indent=1) + "\n")
    for distro, table in snapshot["resolved"].items():
        missing = sorted(k for k, v in table.items() if v is None)
        print(f"{distro} ({DISTROS[distro]}): {len(table) - len(missing)} of {len(table)} keys resolve; no rule: "
              f"{', '.join(missing) or 'none'}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
