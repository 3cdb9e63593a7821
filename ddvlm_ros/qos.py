"""The node's entities without QoS event handlers, and the check on the ROS graph that tells of incompatible QoS
instead.

rclpy gives every subscription and publisher event handlers (incompatible QoS, incompatible type) unless told
otherwise, and the executor waits on them. Destroying an entity while an executor on another thread gathers what
to wait on ends that executor's spin: InvalidHandle from the destroyed entity's event handler (ros2/rclpy#1284,
rclpy 9.1 / Kilted). The node destroys entities at deactivate and cleanup, and whenever a ROS4HRI voice or body
leaves; under a MultiThreadedExecutor its callbacks run beside the thread that gathers, and a robot that spins the
node in one lost its executor (``bench/executor_transitions.py``). Without event handlers there is nothing of
that kind to wait on: the executor survives a destroyed subscription's handle (it skips it).

What the incompatible-QoS handlers said, ``incompatible_qos`` reads from the graph once a second
(``graph_endpoints``, read once for every check of that second): for each of
the node's subscriptions, the publishers of its type whose QoS cannot match it (a best-effort camera driver and a
reliable ``image`` subscription: no frame ever comes), and for each of its publishers, the subscribers it cannot
match (a subscriber asking for transient-local ``/emotion``). It names the topic and the peer node, which the
event never did."""
from __future__ import annotations

from rclpy.qos import QoSCompatibility, qos_check_compatible

from ddvlm_ros.compat import PublisherEventCallbacks, SubscriptionEventCallbacks

NO_SUBSCRIPTION_EVENTS = SubscriptionEventCallbacks(use_default_callbacks=False)
NO_PUBLISHER_EVENTS = PublisherEventCallbacks(use_default_callbacks=False)
BUILTIN_TOPICS = ("/rosout", "/parameter_events")  # rclpy's own, not the node's concern


def type_name(msg_type) -> str:
    """A message class's ROS type name, e.g. sensor_msgs/msg/Image."""
    return f"{msg_type.__module__.split('.')[0]}/msg/{msg_type.__name__}"


def why_incompatible(publisher_qos, subscription_qos) -> str:
    """Why a publisher and a subscription with these QoS profiles cannot match, in words ('' when they can):
    rclpy's errors (``qos_check_compatible``), not its warnings (a system-default policy may still match)."""
    compatibility, reason = qos_check_compatible(publisher_qos, subscription_qos)
    if compatibility != QoSCompatibility.ERROR:
        return ""
    errors = [part.strip().removeprefix("ERROR:").strip() for part in reason.split(";")]
    return "; ".join(e[0].lower() + e[1:] for e in errors if e and not e.startswith("WARNING"))


def peer_name(info) -> str:
    """The fully qualified name of the node of a TopicEndpointInfo."""
    namespace = info.node_namespace.rstrip("/")
    return f"{namespace}/{info.node_name}"


def graph_endpoints(node) -> dict[str, tuple[str, list, list]]:
    """Topic -> (the node's type there, its publishers, its subscriptions on the ROS graph: TopicEndpointInfo, the
    node's own included) for each topic of the node's subscriptions and publishers outside ``BUILTIN_TOPICS``: one
    read of the graph for the checks of a tick. May raise where the graph cannot be read."""
    endpoints = [*node.subscriptions, *node.publishers]
    return {topic: (msg_type, node.get_publishers_info_by_topic(topic), node.get_subscriptions_info_by_topic(topic))
            for topic, msg_type in sorted({(e.topic_name, type_name(e.msg_type)) for e in endpoints})
            if topic not in BUILTIN_TOPICS}


def incompatible_qos(node, endpoints: dict[str, tuple[str, list, list]]) -> dict[str, str]:
    """Topic -> its peers whose QoS cannot match the node's endpoint there, in words ('<peer> (publisher): best
    effort publisher and reliable subscription'), from the node's ``graph_endpoints``. Both profiles are the graph's
    (a profile as created holds 0 for "no deadline", the graph's the infinite duration it means). Peers of another
    type are left out: DDS would not match them whatever their QoS (the node reports them as publishers of another
    type)."""
    me = node.get_fully_qualified_name()
    found: dict[str, list[str]] = {}
    for topic, (msg_type, publishers, subscribers) in endpoints.items():
        mine = [(info, role) for infos, role in ((publishers, "publisher"), (subscribers, "subscriber"))
                for info in infos if info.topic_type == msg_type and peer_name(info) == me]
        for own, role in mine:
            peers = subscribers if role == "publisher" else publishers
            for info in peers:
                if info.topic_type != msg_type or peer_name(info) == me:
                    continue
                offered, requested = (own, info) if role == "publisher" else (info, own)
                why = why_incompatible(offered.qos_profile, requested.qos_profile)
                if why:
                    peer_role = "subscriber" if role == "publisher" else "publisher"
                    found.setdefault(topic, []).append(f"{peer_name(info)} ({peer_role}): {why}")
    return {topic: ", ".join(sorted(set(peers))) for topic, peers in found.items()}
