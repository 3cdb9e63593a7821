"""The bond a lifecycle manager checks its nodes by (nav2_lifecycle_manager), while the node is active.

nav2's lifecycle manager, after it activates a node, forms a bond with it (bondcpp: ``bond/msg/Status`` on the
topic ``bond`` beside the manager, bond id = the node's name) and waits ``bond_timeout / 2`` for it (default 2 s
of 4): a node that never answers fails its startup ("Server ddvlm_emotion was unable to be reached after 4.00s
by bond"), and once formed, a node whose heartbeats stop for ``bond_timeout`` is taken for crashed and the
manager brings all its nodes down. nav2's own servers keep the bond from ``on_activate`` to ``on_deactivate``
(``nav2_util::LifecycleNode::createBond``); so does this, with the same heartbeat period:

- active: ``Status(active=True)`` at once and every ``bond_heartbeat_period`` (the node's parameter, named as
  nav2's servers name theirs; 0 = no bond), under a new ``instance_id`` each time;
- the manager's first ``active`` status (same id, another instance) forms the bond: ``state`` says so;
- the manager breaking it (``active=False``: it deactivates the node, or shuts down) is acknowledged at once
  with ``active=False``, as bondcpp does (the manager's bond waits for that ack), and the heartbeats stop;
- deactivate (or shutdown) breaks it from this side: ``active=False``; the manager's bond is broken.

The ``bond`` message package comes with nav2 (``ros-$ROS_DISTRO-bond``); where it does not import, no bond is
kept and ``state`` says that a manager needs ``bond_timeout: 0.0`` for this node. Protocol read from bond_core's
``bondcpp/src/bond.cpp`` and ``bond/BondSM.sm`` (ros2 branch); the message definitions are the ones vendored in
``third_party/bond`` for the tests.
"""
from __future__ import annotations

import threading
import uuid

TOPIC = "bond"  # relative: beside the manager, in the node's namespace (nav2: Bond("bond", node_name, manager))
HEARTBEAT_PERIOD_S = 0.1  # the node's bond_heartbeat_period by default: nav2's servers' (nav2_util::LifecycleNode)
HEARTBEAT_TIMEOUT_S = 4.0  # bond's DEFAULT_HEARTBEAT_TIMEOUT and nav2's default bond_timeout: said in each status
WAITING, FORMED, BROKEN = "waiting for a lifecycle manager", "formed", "broken by the lifecycle manager"
NOT_INSTALLED = "bond messages not installed: a nav2_lifecycle_manager needs bond_timeout: 0.0 for this node"
OFF = "off (bond_heartbeat_period: 0): a nav2_lifecycle_manager needs bond_timeout: 0.0 for this node"
SELF_STARTED = ("not used (autostart: true): a nav2_lifecycle_manager starts the nodes it manages; launch this "
                "one with autostart:=false for that")


class LifecycleBond:
    """This node's side of a lifecycle manager's bond: ``start()`` in on_activate, ``stop()`` in on_deactivate
    and on_shutdown. The publisher and subscription live as long as the node, so that the last ``active=False``
    is still delivered after ``stop()``."""

    def __init__(self, node, callback_group=None):
        from bond.msg import Status
        from rclpy.clock import Clock, ClockType
        from rclpy.qos import QoSProfile

        self.node, self.Status = node, Status
        self.bond_id = node.get_name()
        self.instance_id = ""
        self.period_s = HEARTBEAT_PERIOD_S
        self.sister = ""  # the manager's instance id, once its status came
        self.state = "inactive"
        self._lock = threading.Lock()  # transitions come from the lifecycle services, statuses and heartbeats
        self._pub = node.create_publisher(Status, TOPIC, QoSProfile(depth=5))  # bondcpp: KeepLast(5), reliable
        self._sub = node.create_subscription(Status, TOPIC, self._on_status, QoSProfile(depth=100),
                                             callback_group=callback_group)
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)  # bondcpp's timers and stamps: not ROS time, which a
        # paused bag (use_sim_time) stops, and the manager would take the node for crashed
        self._timer = node.create_timer(HEARTBEAT_PERIOD_S, self._heartbeat, callback_group=callback_group,
                                        clock=self._steady)
        self._timer.cancel()

    @property
    def alive(self) -> bool:
        return self.state in (WAITING, FORMED)

    def start(self, period_s: float = HEARTBEAT_PERIOD_S) -> None:
        """A new bond: heartbeats every ``period_s`` from now on."""
        with self._lock:
            self.instance_id, self.sister, self.state = str(uuid.uuid4()), "", WAITING
            self.period_s = period_s
            self._timer.timer_period_ns = int(period_s * 1e9)
            self._publish(True)
            self._timer.reset()

    def stop(self, why: str = "inactive") -> None:
        """Break the bond from this side (``active=False``), if it is alive."""
        with self._lock:
            self._timer.cancel()
            if self.alive:
                self._publish(False)
            self.state = why

    def _heartbeat(self) -> None:
        with self._lock:
            if self.alive:
                self._publish(True)

    def _on_status(self, msg) -> None:
        with self._lock:
            self._sister_status(msg)

    def _sister_status(self, msg) -> None:
        if msg.id != self.bond_id or msg.instance_id == self.instance_id or not self.alive:
            return  # another node's bond, our own status, or no bond now
        if not self.sister and not msg.active:
            return  # an earlier bond's manager side acknowledging its end: this bond has not begun for it
        if self.sister and msg.instance_id != self.sister:
            return  # a second manager of the same node: the first one's bond is this one
        self.sister = msg.instance_id
        if msg.active:
            if self.state != FORMED:
                self.state = FORMED
                self.node.get_logger().info(f"bond formed with a lifecycle manager ({TOPIC}, id {self.bond_id!r})")
            return
        self._timer.cancel()
        self._publish(False)  # the ack the manager's bond waits for
        self.state = BROKEN

    def _publish(self, active: bool) -> None:
        msg = self.Status(id=self.bond_id, instance_id=self.instance_id, active=active,
                          heartbeat_timeout=HEARTBEAT_TIMEOUT_S, heartbeat_period=self.period_s)
        msg.header.stamp = self._steady.now().to_msg()
        self._pub.publish(msg)
