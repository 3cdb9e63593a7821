"""Shared fixtures: the real embedded encoders and tiny random RoBERTa / Qwen2.5-VL built from configs."""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# This run's ROS graph is its own: two runs on one machine (CI jobs side by side on a host, a second terminal) would
# otherwise hear each other's transcripts and /emotion. Subprocesses (the entry points' tests) inherit it. Discovery
# stays multicast: limited to localhost, Fast DDS probes the first few participant ids only, and a suite's many
# participants then stop finding each other.
os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
# pytest-xdist's workers (`make test` runs one per core) inherit the run's domain: each takes its own, spread over
# 1..100, or one worker's nodes would answer the other's tests (and be the publishers its silence checks look for)
WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ...
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKER:
    spread = int(WORKER.removeprefix("gw")) * (100 // WORKERS)
    os.environ["ROS_DOMAIN_ID"] = str(1 + (int(os.environ["ROS_DOMAIN_ID"]) - 1 + spread) % 100)
# ... and share the cores: each computes on its share
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // WORKERS)))

from ddvlm_core.assets import MINILM, MPNET, resolve_model  # noqa: E402

# The test modules that need ROS 2 (rclpy, message packages). `pytest --without-ros` leaves them out, and the tests
# marked `ros` elsewhere: the ROS-free part on a Python that PyPI has no ROS wheels for (3.10, Humble's: README,
# "Which ROS 2"). test_ros_compat checks that every other module imports without ROS, and that each of their tests
# that needs ROS (by its imports, helpers, parameters or the harness fixture) is marked `ros`.
ROS_TEST_MODULES = frozenset({
    "ros_harness.py", "test_bag_replay.py", "test_bond.py", "test_frame_windows.py", "test_msgs.py", "test_recorded.py",
    "test_ros4hri.py", "test_ros_compat.py", "test_ros_convert.py", "test_ros_launch_params.py", "test_ros_node.py",
    "test_ros_soak.py", "test_study.py", "test_time_labels.py"})


def pytest_addoption(parser):
    parser.addoption("--without-ros", action="store_true",
                     help="leave out the tests that need ROS 2 (ROS_TEST_MODULES and tests marked ros)")


def pytest_configure(config):
    config.addinivalue_line("markers", "ros: needs ROS 2 (rclpy or message packages); --without-ros leaves it out")


def pytest_ignore_collect(collection_path, config):
    if config.getoption("--without-ros") and collection_path.name in ROS_TEST_MODULES:
        return True
    return None


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--without-ros"):
        return
    ros = [item for item in items if item.get_closest_marker("ros")]
    config.hook.pytest_deselected(items=ros)
    items[:] = [item for item in items if not item.get_closest_marker("ros")]


@pytest.fixture(scope="session")
def mpnet_path() -> str:
    return resolve_model(MPNET)


@pytest.fixture(scope="session")
def minilm_path() -> str:
    return resolve_model(MINILM)


@pytest.fixture(scope="session")
def mpnet_tokenizer(mpnet_path):
    from ddvlm_core.text import load_tokenizer

    return load_tokenizer(mpnet_path)


@pytest.fixture(scope="session")
def mpnet_ddvlm():
    """(model, tokenizer): the real MPNet backbone with seeded, untrained heads."""
    from ddvlm_core.model import DDVLM, DDVLMConfig

    torch.manual_seed(0)
    model, tokenizer = DDVLM.from_backbone(DDVLMConfig())
    return model.eval(), tokenizer


@pytest.fixture(scope="session")
def caption_embedder(minilm_path):
    from ddvlm_core.visual import CaptionEmbedder

    return CaptionEmbedder(minilm_path)


@pytest.fixture(scope="session")
def tiny_roberta_dir(tmp_path_factory):
    from tiny_models import build_tiny_roberta

    return str(build_tiny_roberta(tmp_path_factory.mktemp("tiny-roberta")))


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory):
    from tiny_models import build_tiny_qwen_vl

    return str(build_tiny_qwen_vl(tmp_path_factory.mktemp("tiny-qwen2.5-vl")))


def _tiny_checkpoint(directory, tiny_roberta_dir, modules):
    from ddvlm_core.model import DDVLM, DDVLMConfig

    torch.manual_seed(0)
    model, _ = DDVLM.from_backbone(DDVLMConfig(text_backbone=tiny_roberta_dir, text_dim=32))
    with torch.no_grad():
        model.fusion.alpha.fill_(3.0)  # make the visual correction visible in tests
    return str(model.save(directory, modules))


@pytest.fixture(scope="session")
def tiny_text_checkpoint(tmp_path_factory, tiny_roberta_dir):
    """A text-only checkpoint (text head) on the tiny RoBERTa backbone."""
    return _tiny_checkpoint(tmp_path_factory.mktemp("ckpt-text"), tiny_roberta_dir, ("text_head",))


@pytest.fixture(scope="session")
def tiny_visual_checkpoint(tmp_path_factory, tiny_roberta_dir):
    """Text head + visual head + fusion on the tiny RoBERTa backbone (MiniLM caption embedder)."""
    return _tiny_checkpoint(tmp_path_factory.mktemp("ckpt-visual"), tiny_roberta_dir,
                            ("text_head", "visual_head", "fusion"))


@pytest.fixture
def harness():
    """make(**params) -> a ros_harness.Harness (real EmotionNode, or ``node_class=``, + client, call .start());
    closed after the test."""
    from ros_harness import Harness

    made = []

    def make(**params):
        h = Harness(**params)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()
