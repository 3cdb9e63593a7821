"""The end of every ddvlm_ros entry point: spin until Ctrl-C or an external shutdown, then clean up once."""
from __future__ import annotations

from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy


def spin_until_shutdown(node, spin: Callable[[], None], before_destroy: Callable[[], None] = lambda: None) -> int:
    """Run ``spin()`` (e.g. ``lambda: rclpy.spin(node)``) until Ctrl-C or an external shutdown, then
    ``before_destroy()``, destroy ``node`` and shut its rclpy context down if nothing else did; the exit status, 0.

    Ctrl-C can shut the context down while the executor is between its shutdown check and making its wait set:
    rclpy then raises RCLError ("the given context is not valid") instead of ExternalShutdownException. That is
    a shutdown too; an RCLError while the context is still valid is a real error and is raised."""
    context = node.context
    try:
        spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except _rclpy.RCLError:
        if context.ok():
            raise
    finally:
        before_destroy()
        node.destroy_node()
        if context.ok():
            rclpy.shutdown(context=context)
    return 0
