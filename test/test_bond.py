"""The bond a nav2_lifecycle_manager checks its active nodes by (ddvlm_ros/bond.py), against a manager side that
does what bondcpp's does for nav2 (``Bond("bond", node_name, manager)``, formed when the node's active status
comes, broken with ``active=False``), on a real executor. bond's messages are the vendored ones (third_party/bond,
built by `make`)."""
import sys
import time
import uuid
from pathlib import Path

import pytest
import rclpy
from bond.msg import Status

from ddvlm_ros.bond import BROKEN, FORMED, HEARTBEAT_PERIOD_S, NOT_INSTALLED, OFF, SELF_STARTED, WAITING


class Manager:
    """nav2_lifecycle_manager's side of one node's bond: its own status every 0.25 s (nav2's
    bond_heartbeat_period) from ``start()``, until ``break_bond()`` says ``active=False``; every status of the
    node's bond id that another instance sends is kept in ``heard``."""

    def __init__(self, harness, bond_id: str, topic: str = "bond"):
        self.node = rclpy.create_node("lifecycle_manager_test", context=harness.context)
        self.bond_id, self.instance_id, self.active = bond_id, str(uuid.uuid4()), False
        self.heard: list[tuple[float, Status]] = []
        self.pub = self.node.create_publisher(Status, topic, 5)
        self.node.create_subscription(Status, topic, self._on_status, 100)
        self.node.create_timer(0.25, lambda: self.active and self.send(True))
        harness.add_node(self.node)

    def _on_status(self, msg: Status) -> None:
        if msg.id == self.bond_id and msg.instance_id != self.instance_id:
            self.heard.append((time.monotonic(), msg))

    def send(self, active: bool, instance_id: str = "") -> None:
        self.pub.publish(Status(id=self.bond_id, instance_id=instance_id or self.instance_id, active=active,
                                heartbeat_timeout=4.0, heartbeat_period=0.25))

    def wait_matched(self) -> None:
        deadline = time.monotonic() + 10
        while self.pub.get_subscription_count() < 2 and time.monotonic() < deadline:  # the node's and its own
            time.sleep(0.01)

    def start(self) -> None:
        self.wait_matched()
        self.active = True
        self.send(True)

    def break_bond(self) -> None:
        self.active = False
        self.send(False)

    def wait_for(self, predicate, since: float = 0.0, timeout: float = 10.0) -> Status | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, msg in list(self.heard):
                if at >= since and predicate(msg):
                    return msg
            time.sleep(0.01)
        return None

    def statuses(self, since: float) -> list[Status]:
        return [msg for at, msg in self.heard if at >= since]


def bond_state(h) -> str:
    return {kv.key: kv.value for kv in h.node.diagnostic_status().values}["lifecycle_bond"]


def wait_state(h, state: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while bond_state(h) != state and time.monotonic() < deadline:
        time.sleep(0.01)
    return bond_state(h)


def test_a_lifecycle_managers_bond_forms_on_activate_and_ends_on_deactivate(harness, tiny_text_checkpoint):
    """In a namespace, as a robot runs it: the node's heartbeats go on <namespace>/bond under its name (nav2's bond
    id) from activate to deactivate, each bond under a new instance id; deactivate ends it with active=False. They
    keep wall time, as bondcpp's: under use_sim_time with the bag paused (here: no /clock at all) they go on."""
    h = harness(model_dir=tiny_text_checkpoint, ros_args=("-r", "__ns:=/robot1"), use_sim_time=True)
    manager = Manager(h, "ddvlm_emotion", topic="/robot1/bond")
    assert bond_state(h) == "inactive"
    h.start()
    manager.start()
    first = manager.wait_for(lambda m: m.active)
    assert first is not None and first.heartbeat_period == pytest.approx(HEARTBEAT_PERIOD_S)
    assert wait_state(h, FORMED) == FORMED
    time.sleep(1.0)
    beats = [m for m in manager.statuses(time.monotonic() - 1.0) if m.instance_id == first.instance_id]
    assert len(beats) >= 3 and all(m.active for m in beats)  # 10 a second where nothing holds the executor up
    asked = time.monotonic()
    assert h.change_state("deactivate")
    ended = time.monotonic()
    assert manager.wait_for(lambda m: not m.active and m.instance_id == first.instance_id, since=asked)
    assert bond_state(h) == "inactive"
    time.sleep(0.5)
    assert not [m for m in manager.statuses(ended + 0.2) if m.active]  # no heartbeat after it
    h.node.trigger_activate()
    again = manager.wait_for(lambda m: m.active, since=time.monotonic())
    assert again is not None and again.instance_id != first.instance_id


def test_the_managers_end_of_the_bond_is_acknowledged_and_an_earlier_bonds_is_not_taken_for_it(
        harness, tiny_text_checkpoint):
    """The manager breaking the bond (it deactivates the node, or stops) gets the active=False its bond waits for,
    and the heartbeats stop. Before the manager's bond began, an active=False of an earlier manager instance (its
    ack of the bond before) does not end the new one."""
    h = harness(model_dir=tiny_text_checkpoint).start()
    manager = Manager(h, "ddvlm_emotion")
    manager.wait_matched()
    manager.send(False, instance_id="an earlier manager instance")
    time.sleep(0.5)
    assert bond_state(h) == WAITING
    manager.start()
    assert wait_state(h, FORMED) == FORMED
    manager.break_bond()
    broke = time.monotonic()
    ack = manager.wait_for(lambda m: not m.active, since=broke)
    assert ack is not None and wait_state(h, BROKEN) == BROKEN
    time.sleep(0.5)
    assert not [m for m in manager.statuses(time.monotonic() - 0.3) if m.active]


def test_bond_heartbeat_period_sets_the_heartbeats_and_0_turns_the_bond_off(harness, tiny_text_checkpoint):
    """nav2's servers' parameter of the same name: read at activate."""
    from rclpy.parameter import Parameter

    h = harness(model_dir=tiny_text_checkpoint, bond_heartbeat_period=0.4)
    manager = Manager(h, "ddvlm_emotion")
    manager.wait_matched()
    h.start()
    began = time.monotonic()
    assert manager.wait_for(lambda m: m.active) is not None
    time.sleep(1.0)
    beats = manager.statuses(began)
    assert 2 <= len(beats) <= 5 and all(m.heartbeat_period == pytest.approx(0.4) for m in beats)  # 1 + 1 / 0.4 s
    assert h.change_state("deactivate")
    h.node.set_parameters([Parameter("bond_heartbeat_period", value=0.0)])
    h.node.trigger_activate()
    off = time.monotonic()
    assert bond_state(h) == OFF
    time.sleep(0.5)
    assert [m for m in manager.statuses(off) if m.active] == []  # (the last bond's end may still be on its way)


def test_a_node_that_starts_itself_keeps_no_bond(harness, tiny_text_checkpoint):
    """autostart: true (the launch file's default) is a node no lifecycle manager starts: it sends no heartbeats,
    and lifecycle_bond says how to put it under a manager."""
    h = harness(model_dir=tiny_text_checkpoint, autostart=True)
    manager = Manager(h, "ddvlm_emotion")
    h.start()
    assert manager.wait_for(lambda m: True, timeout=2.0) is None
    assert bond_state(h) == SELF_STARTED and "autostart:=false" in SELF_STARTED


def test_without_the_bond_messages_the_node_runs_and_says_what_a_manager_needs(
        harness, tiny_text_checkpoint, monkeypatch):
    """... as the README says, beside the other states lifecycle_bond can be in."""
    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    said = readme[readme.index("`lifecycle_bond` in the diagnostics says which"):][:300]
    self_started = SELF_STARTED[:SELF_STARTED.index(")") + 1]
    assert all(f"`{state}`" in said for state in (FORMED, WAITING, "inactive", BROKEN, OFF.split()[0], self_started))
    assert "bond_timeout: 0.0" in NOT_INSTALLED and "a manager needs `bond_timeout: 0.0`" in readme
    monkeypatch.setitem(sys.modules, "bond", None)  # not installed: `import bond.msg` fails
    monkeypatch.setitem(sys.modules, "bond.msg", None)
    h = harness(model_dir=tiny_text_checkpoint).start()
    assert bond_state(h) == NOT_INSTALLED
    from std_msgs.msg import String

    h.publish(String, "transcript", String(data="Ross: it still answers."))
    assert len(h.wait_for(1)) == 1
