"""Whether the executor that spins the emotion node survives its lifecycle transitions: deactivate and activate
made by an operator's ``ros2 lifecycle set`` (a ChangeState client in another participant) one after the other,
while transcripts keep coming, until ``--transitions`` or ``--seconds``, or until the executor's spin ends.

    python bench/executor_transitions.py [--model-dir DIR] [--transitions 1000] [--seconds 120]

Each deactivate destroys the node's input subscriptions and each activate makes them again. Rows:
- MultiThreadedExecutor, with rclpy's QoS event handlers on the node's entities (the node before
  ``ddvlm_ros/qos.py``): the transitions run on a pool thread while the spinning thread gathers what to wait on,
  and a destroyed subscription's event handler ends the spin with InvalidHandle (ros2/rclpy#1284);
- MultiThreadedExecutor, the node as shipped (no event handlers);
- SingleThreadedExecutor (the node's ``main``), as shipped.

A robot that spins the node beside its own nodes in a MultiThreadedExecutor is the first two rows. Writes
reports/executor_transitions.json and reports/executor_transitions.md.
"""
from __future__ import annotations

import argparse
import platform
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.shared import refuse_non_checkpoint, write_report  # noqa: E402

ROWS = (("multi_threaded", True), ("multi_threaded", False), ("single_threaded", False))


def node_class(event_handlers: bool):
    """EmotionNode, or with ``event_handlers`` the node as it was: rclpy's default QoS event handlers on every
    subscription and publisher."""
    from rclpy.lifecycle import LifecycleNode

    from ddvlm_ros.emotion_node import EmotionNode

    if not event_handlers:
        return EmotionNode

    class WithEventHandlers(EmotionNode):
        def create_subscription(self, *args, **kwargs):
            return LifecycleNode.create_subscription(self, *args, **kwargs)

        def create_publisher(self, *args, **kwargs):
            return LifecycleNode.create_publisher(self, *args, **kwargs)

        def create_lifecycle_publisher(self, *args, event_callbacks=None, **kwargs):
            return super().create_lifecycle_publisher(*args, **kwargs)

    return WithEventHandlers


def measure(model_dir: str, executor_kind: str, event_handlers: bool, transitions: int, seconds: float) -> dict:
    """One row: the node in its own participant, spun by ``executor_kind``; an operator in another."""
    import rclpy
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState
    from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter
    from std_msgs.msg import String

    from ddvlm_ros.spin import BackgroundSpin

    name = f"executor_transitions_{time.time_ns()}"
    robot, operator_context = rclpy.Context(), rclpy.Context()
    rclpy.init(context=robot)
    rclpy.init(context=operator_context)
    node = node_class(event_handlers)(node_name=name, context=robot, parameter_overrides=[
        Parameter("model_dir", value=model_dir), Parameter("captioner", value="none"),
        Parameter("input_timeout_s", value=0.0)])
    ended: list[str] = []
    executor = (MultiThreadedExecutor if executor_kind == "multi_threaded" else SingleThreadedExecutor)(context=robot)
    executor.add_node(node)

    def spin() -> None:
        try:
            executor.spin()
        except Exception as e:  # noqa: BLE001 - what ended the spin is the row's result
            ended.append(f"{type(e).__name__}: {e}")

    operator = rclpy.create_node(f"{name}_operator", context=operator_context)
    operator_spin = BackgroundSpin(SingleThreadedExecutor(context=operator_context))
    operator_spin.executor.add_node(operator)
    made, began = 0, time.monotonic()
    try:
        if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            raise RuntimeError(f"the node did not configure: {node.load_error}")
        node.trigger_activate()
        spinner = threading.Thread(target=spin, daemon=True)
        spinner.start()
        client = operator.create_client(ChangeState, f"/{name}/change_state")
        transcripts = operator.create_publisher(String, "transcript", 10)
        if not client.wait_for_service(timeout_sec=30):
            raise RuntimeError("the node's change_state service did not appear")
        active, began = True, time.monotonic()
        while made < transitions and time.monotonic() - began < seconds and spinner.is_alive():
            for _ in range(3):
                transcripts.publish(String(data="Ross: are you there?"))
            step = Transition.TRANSITION_DEACTIVATE if active else Transition.TRANSITION_ACTIVATE
            future = client.call_async(ChangeState.Request(transition=Transition(id=step)))
            deadline = time.monotonic() + 10
            while not future.done() and spinner.is_alive() and time.monotonic() < deadline:
                time.sleep(0.002)
            if not (future.done() and future.result().success):
                break
            active, made = not active, made + 1
        row = {"executor": executor_kind, "event_handlers": event_handlers, "transitions": made,
               "seconds": round(time.monotonic() - began, 1), "executor_spinning": spinner.is_alive(),
               "ended_by": ended[0] if ended else ""}  # before the shutdown below, which may end the spin too
    finally:
        operator_spin.stop()
        executor.shutdown()
        for n in (operator, node):
            n.destroy_node()
        for context in (robot, operator_context):
            rclpy.shutdown(context=context)
    return row


def markdown(rows: list[dict], args) -> str:
    lines = ["# Lifecycle transitions under each executor (`python bench/executor_transitions.py`)", "",
             f"Deactivate, activate, ... through the node's change_state service, 3 transcripts before each, up to "
             f"{args.transitions} transitions or {args.seconds:g} s per row; model {args.model_name}; "
             f"{platform.processor() or platform.machine()}.", "",
             "| executor | QoS event handlers | transitions | seconds | executor still spinning | what ended it |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        handlers = "rclpy's (before)" if r["event_handlers"] else "none (as shipped)"
        lines.append(f"| {r['executor']} | {handlers} | {r['transitions']} | {r['seconds']} | "
                     f"{'yes' if r['executor_spinning'] else 'no'} | {r['ended_by'] or '-'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", help="the checkpoint (default: the embedded one)")
    ap.add_argument("--transitions", type=int, default=1000, help="transitions per row at most")
    ap.add_argument("--seconds", type=float, default=120.0, help="seconds per row at most")
    ap.add_argument("--report-dir", default=str(REPO / "reports"), help="folder of executor_transitions.json/.md")
    args = ap.parse_args(argv)
    if args.transitions < 1 or not args.seconds > 0:
        ap.error(f"--transitions must be >= 1 and --seconds > 0, got {args.transitions} and {args.seconds}")
    from ddvlm_core.cli import DEFAULT_CHECKPOINT, quiet_transformers

    directory = args.model_dir or str(DEFAULT_CHECKPOINT)
    refuse_non_checkpoint(ap, directory)
    quiet_transformers()
    args.model_name = Path(directory).name
    rows = [measure(directory, kind, handlers, args.transitions, args.seconds) for kind, handlers in ROWS]
    data = {"model": args.model_name, "rows": rows, "max_transitions": args.transitions, "max_seconds": args.seconds}
    write_report(args.report_dir, "executor_transitions", data, markdown(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
