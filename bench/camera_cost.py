"""What a camera stream costs the emotion node's process while nobody speaks: its CPU time with a 30 Hz 640x480
rgb8 camera publishing (reliably, from this process) for the node without a captioner, which leaves the
camera unsubscribed (the embedded default is text-only), and for the node with one (``cue``), which takes every
frame and keeps ``frame_rate_hz`` of them for ``frame_buffer_s``.

    python bench/camera_cost.py [--model-dir DIR] [--seconds 30]

Each row runs the node's entry point in a fresh process, as a robot runs it (``autostart:=true``), and reads that
process's CPU time from /proc over ``--seconds``; the ratio is between the rows of one run. The captioning row's
checkpoint is the embedded MPNet backbone with untrained heads, visual ones included (what frames cost does not
depend on the weights). Their processes hold different models, so their memory is not compared here (the frames
kept: frame_buffer_s x frame_rate_hz of them, 0.92 MB each at 640x480 rgb8). Writes
reports/camera_cost.json and reports/camera_cost.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.shared import refuse_non_checkpoint, write_report  # noqa: E402

FRAME_HZ, WIDTH, HEIGHT = 30.0, 640, 480
START_TIMEOUT_S = 120.0  # the node's process until it subscribes its transcript topic


def captioning_checkpoint() -> str:
    """A checkpoint with the embedded backbone and freshly initialised text, visual and fusion heads."""
    import torch

    from ddvlm_core.model import DDVLM, DDVLMConfig

    torch.manual_seed(0)
    model, _ = DDVLM.from_backbone(DDVLMConfig())
    return str(model.save(Path(tempfile.mkdtemp()) / "visual", ("text_head", "visual_head", "fusion")))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (/proc/<pid>/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(watcher, model_dir: str, captioner: str, seconds: float) -> dict:
    """One row: the node's process started, the camera publishing; its CPU time over ``seconds`` once it is up."""
    from diagnostic_msgs.msg import DiagnosticArray

    name = f"camera_cost_{captioner}_{time.time_ns()}"
    entry_point = "import sys; from ddvlm_ros.emotion_node import main; sys.exit(main())"
    node = subprocess.Popen([sys.executable, "-c", entry_point,
                             "--ros-args", "-r", f"__node:={name}", "-p", "autostart:=true", "-p",
                             f"model_dir:={model_dir}", "-p", f"captioner:={captioner}",
                             "-p", "image_qos_reliability:=reliable", "-p", "input_timeout_s:=0.0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    diagnostics: dict[str, str] = {}
    sub = watcher.create_subscription(DiagnosticArray, "/diagnostics", lambda m: diagnostics.update(
        {kv.key: kv.value for s in m.status for kv in s.values}), 10)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not watcher.count_subscribers("/transcript"):  # active: its inputs are subscribed
            if node.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the node did not start: {node.communicate(timeout=10)[1][-500:]}")
            time.sleep(0.2)
        time.sleep(5.0)  # the camera's publisher and the node's subscription matched, its buffer filling
        before = cpu_seconds(node.pid)
        time.sleep(seconds)
        cpu = cpu_seconds(node.pid) - before
        diagnostics.clear()
        deadline = time.monotonic() + 10
        while "frames" not in diagnostics and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        watcher.destroy_subscription(sub)
        node.terminate()
        node.wait(timeout=30)
        deadline = time.monotonic() + 30  # gone from the graph, so that the next row's start is not read from it
        while name in watcher.get_node_names() and time.monotonic() < deadline:
            time.sleep(0.2)
    taken = int(diagnostics.get("frames", 0)) + int(diagnostics.get("frames_thinned", 0))
    return {"captioner": captioner, "cpu_s": cpu, "cpu_share_of_a_core": cpu / seconds,
            "frames_taken": taken, "camera": diagnostics.get("camera", "")}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", help="the text-only checkpoint (default: the embedded one)")
    ap.add_argument("--seconds", type=float, default=30.0, help="seconds of CPU time measured per row")
    ap.add_argument("--report-dir", default=str(REPO / "reports"), help="folder of camera_cost.json and .md")
    args = ap.parse_args(argv)
    if not args.seconds > 0:
        ap.error(f"--seconds must be > 0, got {args.seconds}")
    from ddvlm_core.cli import DEFAULT_CHECKPOINT, quiet_transformers

    directory = args.model_dir or str(DEFAULT_CHECKPOINT)
    refuse_non_checkpoint(ap, directory)
    quiet_transformers()

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image

    from ddvlm_ros.spin import BackgroundSpin

    visual = captioning_checkpoint()
    rclpy.init()
    watcher = rclpy.create_node("camera_cost_bench")
    camera_pub = watcher.create_publisher(Image, "image", 10)
    executor = SingleThreadedExecutor()
    executor.add_node(watcher)
    spinner = BackgroundSpin(executor)
    stop = threading.Event()
    frame = np.random.default_rng(0).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8).tobytes()

    def camera() -> None:
        while not stop.is_set():
            msg = Image(height=HEIGHT, width=WIDTH, encoding="rgb8", step=WIDTH * 3, data=frame)
            msg.header.stamp = watcher.get_clock().now().to_msg()
            camera_pub.publish(msg)
            time.sleep(1 / FRAME_HZ)

    threading.Thread(target=camera, daemon=True).start()
    try:
        rows = {"text_only": measure(watcher, directory, "none", args.seconds),
                "captioning": measure(watcher, visual, "cue", args.seconds)}
    finally:
        stop.set()
        spinner.stop()
        watcher.destroy_node()
        rclpy.shutdown()
    ratio = rows["text_only"]["cpu_s"] / rows["captioning"]["cpu_s"]
    camera_text = f"{FRAME_HZ:g} Hz {WIDTH}x{HEIGHT} rgb8"
    data = {"rows": rows, "cpu_ratio_text_only_vs_captioning": ratio,
            "meta": {"model_dir": directory, "seconds": args.seconds, "camera": camera_text,
                     "machine": platform.machine(), "cpus": os.cpu_count()}}
    lines = ["# What a camera costs the emotion node while nobody speaks (CPU)", "",
             f"`python bench/camera_cost.py --seconds {args.seconds:g}`; a {camera_text} camera "
             f"published reliably; the node's process measured over {args.seconds:g} s, each row a fresh process, "
             f"{os.cpu_count()} CPUs.", "",
             "| node | camera | frames taken | CPU s | share of a core |", "|---|---|---|---|---|"]
    for key, label in (("text_only", "no captioner (the embedded default)"), ("captioning", "captioner `cue`")):
        r = rows[key]
        lines.append(f"| {label} | {r['camera']} | {r['frames_taken']} | {r['cpu_s']:.2f} | "
                     f"{100 * r['cpu_share_of_a_core']:.1f} % |")
    lines += ["", f"CPU time without a captioner: {ratio:.2f}x that with one, in this run."]
    write_report(args.report_dir, "camera_cost", data, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
