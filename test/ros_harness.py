"""Test helper: a real EmotionNode and a client node on a real executor, in-process."""
from __future__ import annotations

import time

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter

from ddvlm_core.captioner import Caption
from ddvlm_msgs.msg import EmotionDistribution
from ddvlm_ros.emotion_node import EmotionNode
from ddvlm_ros.spin import BackgroundSpin


class Harness:
    def __init__(self, node_class=EmotionNode, node_name: str = "", ros_args: tuple[str, ...] = (), **params):
        """``node_name``: a name no node of this process had before, for a test that reads the node's log on
        /rosout (rcl sends a node's log through the rosout publisher registered under its name, which the
        belated finalisation of an earlier node of that name in another context unregisters). ``ros_args``: the
        command line's ``--ros-args`` (remaps, ``__ns``), for both nodes, as a launch file gives them a process."""
        self.context = rclpy.Context()
        rclpy.init(context=self.context, args=["--ros-args", *ros_args] if ros_args else None)
        overrides = [Parameter(k, value=v) for k, v in params.items()]
        self.node = node_class(parameter_overrides=overrides, context=self.context,
                               **({"node_name": node_name} if node_name else {}))
        self.client = rclpy.create_node("ddvlm_test_client", context=self.context)
        self.received: list[EmotionDistribution] = []
        self.client.create_subscription(EmotionDistribution, "emotion", self.received.append, 200)
        self.executor = SingleThreadedExecutor(context=self.context)  # as the node's main()
        self.executor.add_node(self.node)
        self.executor.add_node(self.client)
        self.spinner = BackgroundSpin(self.executor)
        self._pubs = {}
        self._added = []  # add_node's nodes

    def start(self) -> "Harness":
        from lifecycle_msgs.msg import State

        self.node.trigger_configure()
        assert self.node.load_error == "", self.node.load_error
        self.node.trigger_activate()
        assert self.node._state_machine.current_state[0] == State.PRIMARY_STATE_ACTIVE
        return self

    def change_state(self, transition: str) -> bool:
        """Make the lifecycle ``transition`` ("configure", "activate", "deactivate", "cleanup") on the executor's
        thread, where a node serves ``ros2 lifecycle set`` (its change_state service) as all its callbacks; whether
        it succeeded. Calling ``node.trigger_deactivate()`` from the test's thread instead destroys the node's
        subscriptions beside the spinning executor, which rclpy (9.1, Kilted) does not always survive: the executor
        thread dies with InvalidHandle from a destroyed subscription's event handler (ros2/rclpy#1284)."""
        from rclpy.lifecycle import TransitionCallbackReturn

        return self.on_executor(getattr(self.node, f"trigger_{transition}")) == TransitionCallbackReturn.SUCCESS

    def on_executor(self, function, *args):
        """``function(*args)`` run on the executor's thread, as a callback of the node is; its result (or its
        exception, raised here)."""
        return result_of(self.executor.create_task(function, *args))

    def set_parameters(self, **values) -> list[bool]:
        """Set the node's parameters as ``ros2 param set`` does, through its set_parameters service, served on the
        executor's thread (see change_state); whether each was accepted, in order."""
        from rclpy.parameter_client import AsyncParameterClient

        if not hasattr(self, "_parameters"):
            self._parameters = AsyncParameterClient(self.client, self.node.get_fully_qualified_name())
            assert self._parameters.wait_for_services(timeout_sec=5)
        future = self._parameters.set_parameters([Parameter(k, value=v) for k, v in values.items()])
        return [r.successful for r in result_of(future).results]

    def publish(self, msg_type, topic: str, msg, wait_subscribers: bool = True):
        if topic not in self._pubs:
            self._pubs[topic] = self.client.create_publisher(msg_type, topic, 200)
            deadline = time.monotonic() + 15
            while wait_subscribers and self._pubs[topic].get_subscription_count() == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
        self._pubs[topic].publish(msg)

    def wait_for(self, n: int, timeout: float = 20.0, predicate=None) -> list[EmotionDistribution]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = [m for m in self.received if predicate is None or predicate(m)]
            if len(got) >= n:
                return got
            time.sleep(0.02)
        return [m for m in self.received if predicate is None or predicate(m)]

    def settle(self, seconds: float = 0.3) -> None:
        """Wait until the pipeline is idle, then a little longer for deliveries."""
        deadline = time.monotonic() + 20
        while self.node.pipeline is not None and not self.node.pipeline.idle() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(seconds)

    def now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    def vad_says(self, activity, speaking: bool, topic: str = "voice_activity") -> None:
        """Publish a VAD's std_msgs/Bool on ``topic`` and wait until ``activity`` (the node's VoiceActivity that
        reads it) has heard the change."""
        from std_msgs.msg import Bool

        changes = activity.changes
        self.publish(Bool, topic, Bool(data=speaking))
        deadline = time.monotonic() + 10
        while activity.changes == changes and time.monotonic() < deadline:
            time.sleep(0.01)
        assert activity.changes == changes + 1

    def add_echo(self) -> list[str]:
        """ddvlm-emotion-echo's node beside the client (the same context: its namespace and remaps), once the node
        sees its subscription; the lines it prints, one per answer, are appended to the list returned."""
        from ddvlm_ros.echo import EmotionEcho

        lines = []
        self.add_node(EmotionEcho(out=lines.append, context=self.context))
        deadline = time.monotonic() + 15
        while self.node.count_subscribers("emotion") < 2 and time.monotonic() < deadline:  # the client's and its
            time.sleep(0.01)
        return lines

    def add_node(self, node):
        """Spin ``node`` (made in this harness's context) on the harness's executor; close() destroys it."""
        self._added.append(node)
        self.executor.add_node(node)
        return node

    def close(self) -> None:
        """Stop and destroy the nodes and the context (again: nothing)."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        if self.node.pipeline is not None:
            self.node.pipeline.stop()
        self.spinner.stop()  # spin must be out of rcl_wait before the context goes
        for node in [self.node, self.client, *self._added]:
            node.destroy_node()
        rclpy.shutdown(context=self.context)


def result_of(future, timeout: float = 30.0):
    """The result of a service call made from the harness's client (its executor spins in another thread)."""
    deadline = time.monotonic() + timeout
    while not future.done() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert future.done(), f"no response in {timeout} s"
    return future.result()


class WindowCaptioner:
    """Records each caption's window and the stamps of its frames."""

    name = "window"

    def __init__(self):
        self.windows, self.stamps = [], []

    def caption(self, frames, window=None):
        self.windows.append(window)
        self.stamps.append([f.stamp for f in frames])
        return Caption("The head is turning left.", self.name, len(frames))


def rosout_listener(h) -> list:
    """The messages the harness's node logs (its /rosout), from before the node is started (transient local); the
    node needs a name of its own (``node_name``: see ros_harness.Harness)."""
    from rcl_interfaces.msg import Log
    from rclpy.qos import DurabilityPolicy, QoSProfile

    logged = []
    h.client.create_subscription(Log, "/rosout", lambda m: logged.append(m) if m.name == h.node.get_name() else None,
                                 QoSProfile(depth=1000, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    return logged


def logged_line(logged: list, start: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = next((m.msg for m in list(logged) if m.msg.startswith(start)), None)
        if line is not None:
            return line
        time.sleep(0.05)
    return f"no log line starting {start!r} in {[m.msg for m in logged]}"
