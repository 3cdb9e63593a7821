"""ddvlm_ros.compat: the node's rclpy imports on Humble, whose rclpy predates rclpy.event_handler."""
import subprocess
import sys

HUMBLE_RCLPY = """
import sys, types
import rclpy.event_handler as iron
import rclpy.executors, rclpy.lifecycle, rclpy.node  # rclpy's own modules import event_handler: load them first
humble = types.ModuleType("rclpy.qos_event")  # Humble's module: the same classes, no deprecation shim
humble.PublisherEventCallbacks = iron.PublisherEventCallbacks
humble.SubscriptionEventCallbacks = iron.SubscriptionEventCallbacks
sys.modules["rclpy.qos_event"] = humble
sys.modules["rclpy.event_handler"] = None  # import rclpy.event_handler: ImportError, as on Humble
import ddvlm_ros.emotion_node as node
assert node.PublisherEventCallbacks is iron.PublisherEventCallbacks
assert node.SubscriptionEventCallbacks is iron.SubscriptionEventCallbacks
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
for name in sys.argv[1:]:
    importlib.import_module(name)
print(len(sys.argv) - 1)
"""


def test_every_test_module_that_pytest_without_ros_collects_imports_without_ros():
    from pathlib import Path

    from conftest import ROS_TEST_MODULES

    test_dir = Path(__file__).parent
    modules = sorted(p.stem for p in test_dir.glob("*.py") if p.name not in ROS_TEST_MODULES | {"conftest.py"})
    done = subprocess.run([sys.executable, "-c", HIDE_ROS, *modules], cwd=test_dir.parent,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]  # a module importing ROS: list it in ROS_TEST_MODULES
    assert done.stdout.strip() == str(len(modules)) and "test_ros_pipeline" in modules
