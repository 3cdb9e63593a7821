"""rclpy across the ROS 2 distributions the node runs on: Humble (Ubuntu 22.04, JetPack 6), Jazzy, Kilted.

Two things the node uses arrived after Humble:
- ``rclpy.event_handler`` (Iron); Humble has the same classes in ``rclpy.qos_event``, which later
  distributions keep only as a deprecated alias that warns on import;
- ``Node.add_post_set_parameters_callback`` (Iron): see :func:`add_after_set_parameters`.
"""
from __future__ import annotations

from typing import Callable

try:
    from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import PublisherEventCallbacks, SubscriptionEventCallbacks

__all__ = ["PublisherEventCallbacks", "SubscriptionEventCallbacks", "add_after_set_parameters"]


def add_after_set_parameters(node, check: Callable, after: Callable) -> None:
    """Have ``node`` call ``check(params)`` (returns a SetParametersResult) before parameters are set and
    ``after(params)`` once they are.

    Where rclpy has post-set callbacks (Iron and later) they run ``after``. Humble's rclpy has only the
    on-set callback; it sets the parameters as soon as every on-set callback returns successful (type and
    read-only checks come before), so there ``after`` runs at the end of a successful ``check``: nothing is
    applied for a set that is refused."""
    post_set = getattr(node, "add_post_set_parameters_callback", None)
    if post_set is not None:
        node.add_on_set_parameters_callback(check)
        post_set(after)
        return

    def check_then_apply(params):
        result = check(params)
        if result.successful:
            after(params)
        return result

    node.add_on_set_parameters_callback(check_then_apply)
