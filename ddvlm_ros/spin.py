"""The end of every ddvlm_ros entry point: spin until Ctrl-C or an external shutdown, then clean up once."""
from __future__ import annotations

from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException


def spin_until_shutdown(node, spin: Callable[[], None], before_destroy: Callable[[], None] = lambda: None) -> int:
    """Run ``spin()`` (e.g. ``lambda: rclpy.spin(node)``) until Ctrl-C or an external shutdown, then
    ``before_destroy()``, destroy ``node`` and shut rclpy down if nothing else did; the exit status, 0."""
    try:
        spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        before_destroy()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0
