"""The end of every ddvlm_ros entry point: spin until Ctrl-C or an external shutdown, then clean up once; and an
executor spun on a thread of its own until it is stopped (BackgroundSpin)."""
from __future__ import annotations

import threading
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


class BackgroundSpin:
    """An executor spun on a daemon thread until ``stop()``, which ends the spinning before it shuts the executor
    down (the replay's and the tests' nodes, spun beside the thread that drives them).

    rclpy's ``Executor.shutdown()`` called from another thread while ``spin()`` runs races with it: shutdown
    destroys the executor's guard condition without waiting for the spinning thread, which may take a ready
    callback just then, and dies with AttributeError ("'NoneType' object has no attribute 'trigger'") or
    InvalidHandle (rclpy 9.1, Kilted). A long replay printed that traceback when it ended. Here the thread spins
    until a future completes; ``stop()`` completes it (which wakes the executor), joins the thread, then shuts
    the executor down."""

    def __init__(self, executor):
        from rclpy.task import Future

        self.executor, self._stopped = executor, Future()
        self.thread = threading.Thread(target=executor.spin_until_future_complete, args=(self._stopped,), daemon=True)
        self.thread.start()

    def stop(self, timeout_s: float = 5.0) -> bool:
        """Stop spinning and shut the executor down; False when a callback still ran after ``timeout_s`` (the
        executor is shut down all the same)."""
        if not self._stopped.done():
            self._stopped.set_result(None)
        self.thread.join(timeout=timeout_s)
        self.executor.shutdown()
        return not self.thread.is_alive()
