"""ddvlm_ros.compat: the node's rclpy imports on Humble, whose rclpy predates rclpy.event_handler; and what
`pytest --without-ros` runs (Python 3.10, Humble's) needs no ROS 2."""
import ast
import subprocess
import sys
from pathlib import Path

HUMBLE_RCLPY = """
import sys, types
import rclpy.event_handler as iron
import rclpy.executors, rclpy.lifecycle, rclpy.node  # rclpy's own modules import event_handler: load them first
humble = types.ModuleType("rclpy.qos_event")  # Humble's module: the same classes, no deprecation shim
humble.PublisherEventCallbacks = iron.PublisherEventCallbacks
humble.SubscriptionEventCallbacks = iron.SubscriptionEventCallbacks
sys.modules["rclpy.qos_event"] = humble
sys.modules["rclpy.event_handler"] = None  # import rclpy.event_handler: ImportError, as on Humble
import ddvlm_ros.emotion_node
import ddvlm_ros.qos as qos  # the node's entities are made with these (no event handlers)
assert type(qos.NO_PUBLISHER_EVENTS) is iron.PublisherEventCallbacks
assert type(qos.NO_SUBSCRIPTION_EVENTS) is iron.SubscriptionEventCallbacks
print("imported")
"""


def test_the_node_imports_its_event_callbacks_from_humbles_qos_event_where_event_handler_is_missing():
    done = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", HUMBLE_RCLPY],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "imported", done.stderr[-2000:]


def test_where_event_handler_exists_the_deprecated_qos_event_is_not_imported():
    code = "import sys, ddvlm_ros.emotion_node; print('rclpy.qos_event' in sys.modules)"
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr[-2000:]


HIDE_ROS = """
import importlib, importlib.abc, sys


class NoRos(importlib.abc.MetaPathFinder):  # as on a Python that has no ROS 2
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in ("rclpy", "rcl_interfaces", "builtin_interfaces") or top.startswith("rosidl") \
                or top.endswith("_msgs") and not top.startswith("test_"):
            raise ModuleNotFoundError(f"No module named {name!r} (ROS hidden)")


sys.meta_path.insert(0, NoRos())
sys.path.insert(0, "test")
if sys.argv[1] == "--which-fail":  # print the modules that do not import without ROS, one per line
    for name in sys.argv[2:]:
        try:
            importlib.import_module(name)
        except ImportError:
            print(name)
    sys.exit(0)
for name in sys.argv[1:]:
    importlib.import_module(name)
print(len(sys.argv) - 1)
"""


def is_ros(module: str) -> bool:
    """Whether ``module`` is part of ROS 2 (what HIDE_ROS hides)."""
    top = module.split(".")[0]
    return top in ("rclpy", "rcl_interfaces", "builtin_interfaces") or top.startswith("rosidl") \
        or top.endswith("_msgs") and not top.startswith("test_")


def imports_in(node: ast.AST) -> set[str]:
    """The modules ``node`` (a function, or a whole module's tree) imports in its body (relative imports left out:
    ours are absolute)."""
    names = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Import):
            names |= {alias.name for alias in n.names}
        elif isinstance(n, ast.ImportFrom) and n.module and not n.level:
            names.add(n.module)
    return names


def unmarked_parameters(decorators: list[ast.expr], assigned: dict[str, ast.expr], needs) -> list[str]:
    """The string parameters of a test's ``parametrize`` decorators (a literal list, or a module-level name of one)
    that name a module ``needs`` says needs ROS 2 (a command the test imports) and are not a ``pytest.param`` marked
    ``ros``."""
    found = []
    for d in decorators:
        if not (isinstance(d, ast.Call) and ast.unparse(d.func).endswith("parametrize") and len(d.args) > 1):
            continue
        values = assigned.get(d.args[1].id) if isinstance(d.args[1], ast.Name) else d.args[1]
        for value in getattr(values, "elts", []):
            if "mark.ros" in ast.unparse(value):
                continue
            found += [c.value for c in ast.walk(value) if isinstance(c, ast.Constant) and isinstance(c.value, str)
                      and needs({c.value})]
    return found


def unmarked_tests_needing_ros(path: Path, ours_needing_ros: set[str]) -> list[str]:
    """The tests of module ``path`` that import ROS 2, or one of our modules that does, in their body, in a
    function of the module they call or as a parameter (a command to import), or that use the ``harness`` fixture
    (a real node), and are not marked ``ros``: on a Python without ROS 2, ``pytest --without-ros`` would run them
    and fail."""
    tree = ast.parse(path.read_text())
    functions = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    assigned = {a.targets[0].id: a.value for a in tree.body if isinstance(a, ast.Assign)
                and isinstance(a.targets[0], ast.Name)}

    def needs(names: set[str]) -> bool:
        return any(is_ros(m) or m in ours_needing_ros for m in names)

    helpers = {name for name, f in functions.items() if not name.startswith("test_") and needs(imports_in(f))}
    found = []
    for name, f in functions.items():
        if not name.startswith("test_") or any("mark.ros" in ast.unparse(d) for d in f.decorator_list):
            continue
        called = {c.func.id for c in ast.walk(f) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)}
        if needs(imports_in(f)) or called & helpers or "harness" in {a.arg for a in f.args.args}:
            found.append(f"{path.name}::{name}")
        found += [f"{path.name}::{name}[{p}]" for p in unmarked_parameters(f.decorator_list, assigned, needs)]
    return found


def test_every_test_module_that_pytest_without_ros_collects_imports_without_ros():
    from conftest import ROS_TEST_MODULES

    test_dir = Path(__file__).parent
    modules = sorted(p.stem for p in test_dir.glob("*.py") if p.name not in ROS_TEST_MODULES | {"conftest.py"})
    done = subprocess.run([sys.executable, "-c", HIDE_ROS, *modules], cwd=test_dir.parent,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]  # a module importing ROS: list it in ROS_TEST_MODULES
    assert done.stdout.strip() == str(len(modules)) and "test_ros_pipeline" in modules


def test_every_test_that_pytest_without_ros_runs_needs_no_ros():
    """A test outside ROS_TEST_MODULES that imports ROS 2 (rclpy, a message package) or a module of ours that
    does (found by importing each with ROS hidden), directly, through a helper of its module or as a parametrized
    command, or that starts a node through the ``harness`` fixture, is marked ``ros``. On Python 3.10, six such
    tests failed `make test-without-ros` (2026-12-07): none of the suite's own checks imported them with ROS
    hidden."""
    from conftest import ROS_TEST_MODULES

    repo = Path(__file__).resolve().parents[1]
    ours = sorted(".".join(p.relative_to(repo).with_suffix("").parts) for package in ("ddvlm_core", "ddvlm_ros",
                  "training") for p in (repo / package).glob("*.py") if p.stem != "__main__")
    done = subprocess.run([sys.executable, "-c", HIDE_ROS, "--which-fail", *ours], cwd=repo, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    needing_ros = set(done.stdout.split())
    assert "ddvlm_ros.emotion_node" in needing_ros and "ddvlm_core.inference" not in needing_ros
    unmarked = [t for p in sorted((repo / "test").glob("test_*.py")) if p.name not in ROS_TEST_MODULES
                for t in unmarked_tests_needing_ros(p, needing_ros)]
    assert unmarked == []  # mark each @pytest.mark.ros, or list its module in conftest.ROS_TEST_MODULES
