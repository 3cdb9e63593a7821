"""Replay a bag into the running emotion node with its timing and score what comes out on /emotion.

    python -m ddvlm_ros.replay BAG [--model-dir DIR] [--speed 5] [--live] [--report reports/replay.md]

The node runs in-process on a real executor with ``use_sim_time``; the replayer publishes ``/clock``
from the bag's time line and each message at its time (divided by ``--speed``), records every
``/emotion`` message, joins them with the bag's labels side file and reports WA-F1, accuracy,
per-class F1, the confusion matrix, the latency distribution and how many utterances got no answer.
The fused (refined) answer counts where there is one, else the text answer.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import Reader

from ddvlm_core.labels import LABELS, label_id
from ddvlm_core.metrics import metrics
from ddvlm_ros.bag import BagError, load_labels


def ros_type(msgtype: str):
    """'pkg/msg/Type' -> the rclpy message class."""
    pkg, _, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.msg"), name)


def bag_messages(path: str | Path) -> list[tuple[float, str, str, bytes]]:
    """(time s, topic, msgtype, raw CDR) of every message, in time order."""
    try:
        with Reader(Path(path)) as reader:
            return [(t * 1e-9, c.topic, c.msgtype, bytes(raw)) for c, t, raw in reader.messages()]
    except Exception as e:  # rosbags raises several types for broken bags
        raise BagError(f"{path}: cannot read bag ({type(e).__name__}: {e})") from None


@dataclass
class ReplayResult:
    answers: dict[str, dict] = field(default_factory=dict)  # key -> {"text": msg, "refined": msg}
    finals: list[str] = field(default_factory=list)  # keys of the final utterances replayed, in order
    wall_s: float = 0.0

    def prediction(self, key: str):
        entry = self.answers.get(key, {})
        return entry.get("refined") or entry.get("text")

    def score(self, labels: dict[str, str]) -> dict:
        keys = [k for k in self.finals if k in labels]
        answered = [k for k in keys if self.prediction(k) is not None]
        gold = [label_id(labels[k]) for k in answered]
        pred = [LABELS.index(self.prediction(k).top_label) for k in answered]
        result = metrics(gold, pred) if answered else {"n": 0}
        latencies = [self.answers[k]["text"].latency_ms for k in answered if "text" in self.answers[k]]
        result |= {
            "utterances": len(keys), "answered": len(answered), "unanswered": len(keys) - len(answered),
            "refined": sum(1 for k in answered if "refined" in self.answers[k]),
            "duplicates": sum(self.answers[k].get("duplicates", 0) for k in answered),
            "latency_ms": {"p50": float(np.percentile(latencies, 50)), "p90": float(np.percentile(latencies, 90)),
                           "max": float(max(latencies))} if latencies else {},
        }
        return result


def replay(bag: str | Path, params: dict, speed: float = 1.0, answer_timeout_s: float = 60.0,
           on_answer=None, max_in_flight: int = 0) -> ReplayResult:
    """Play ``bag`` into a fresh node. ``max_in_flight`` > 0 holds back the next utterance while that many
    are unanswered (evaluation of a whole split faster than real time without overrunning the node)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from rclpy.serialization import deserialize_message
    from rosgraph_msgs.msg import Clock

    from ddvlm_msgs.msg import EmotionDistribution
    from ddvlm_ros.convert import sec_to_stamp
    from ddvlm_ros.emotion_node import EmotionNode

    messages = bag_messages(bag)
    if not messages:
        raise BagError(f"{bag}: no messages")
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    overrides = [Parameter("use_sim_time", value=True)] + [Parameter(k, value=v) for k, v in params.items()]
    node = EmotionNode(context=ctx, parameter_overrides=overrides)
    player = rclpy.create_node("ddvlm_replay", context=ctx)
    result = ReplayResult()
    lock = threading.Lock()

    def on_emotion(msg):
        key = f"{msg.conversation_id}/{msg.utterance_id}"
        with lock:
            entry = result.answers.setdefault(key, {})
            slot = "refined" if msg.refined else "text"
            if slot in entry:
                entry["duplicates"] = entry.get("duplicates", 0) + 1
            entry[slot] = msg
        if on_answer is not None:
            on_answer(key, msg)

    player.create_subscription(EmotionDistribution, "emotion", on_emotion, 500)
    clock_pub = player.create_publisher(Clock, "/clock", 10)
    topic_map = {"/utterance": "utterance", "/transcript": "transcript", "/image": "image",
                 "/image/compressed": "image/compressed"}
    pubs, types = {}, {}
    for _, topic, msgtype, _ in messages:
        if topic in topic_map and topic not in pubs:
            types[topic] = ros_type(msgtype)
            depth = 1 if "image" in topic else 500
            pubs[topic] = player.create_publisher(types[topic], topic_map[topic], depth)
    executor = SingleThreadedExecutor(context=ctx)  # as the node's main(): callbacks only enqueue
    executor.add_node(node)
    executor.add_node(player)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        t_first = messages[0][0]
        clock_pub.publish(Clock(clock=sec_to_stamp(t_first, type(Clock().clock))))
        node.trigger_configure()
        if node.load_error:
            raise RuntimeError(f"emotion node did not configure: {node.load_error}")
        node.trigger_activate()
        deadline = time.monotonic() + 10
        while any(p.get_subscription_count() == 0 for p in pubs.values()) and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        for t, topic, msgtype, raw in messages:
            if topic not in pubs:
                continue
            delay = (t - t_first) / speed - (time.monotonic() - started)
            if delay > 0:
                time.sleep(delay)
            if max_in_flight and topic in ("/utterance", "/transcript"):
                while True:
                    with lock:
                        waiting = sum(1 for k in result.finals if "text" not in result.answers.get(k, {}))
                    if waiting < max_in_flight:
                        break
                    time.sleep(0.01)
            clock_pub.publish(Clock(clock=sec_to_stamp(t, type(Clock().clock))))
            msg = deserialize_message(raw, types[topic])
            if topic == "/utterance" and msg.is_final:
                result.finals.append(f"{msg.conversation_id}/{msg.utterance_id}")
            elif topic == "/transcript":
                result.finals.append(f"{node.p('conversation_id')}/{len(result.finals) + 1}")
            pubs[topic].publish(msg)
        deadline = time.monotonic() + answer_timeout_s
        while time.monotonic() < deadline:
            with lock:
                missing = [k for k in result.finals if "text" not in result.answers.get(k, {})]
            if not missing and node.pipeline.idle():
                break
            time.sleep(0.05)
        time.sleep(0.3)  # late refined answers
        result.wall_s = time.monotonic() - started
    finally:
        if node.pipeline is not None:
            node.pipeline.stop()
        executor.shutdown()
        spinner.join(timeout=5)  # spin must be out of rcl_wait before the context goes
        node.destroy_node()
        player.destroy_node()
        rclpy.shutdown(context=ctx)
    return result


def offline_predictions(bag: str | Path, recognizer) -> dict[str, str]:
    """What ddvlm_core predicts, offline, for every final utterance of a bag (same contexts, text only)."""
    from rclpy.serialization import deserialize_message

    contexts: dict[str, list[tuple[str, str]]] = {}
    out = {}
    for _, topic, msgtype, raw in bag_messages(bag):
        if topic != "/utterance":
            continue
        msg = deserialize_message(raw, ros_type(msgtype))
        if not msg.is_final:
            continue
        turns = contexts.setdefault(msg.conversation_id, [])
        turns.append((msg.speaker_id, msg.text))
        out[f"{msg.conversation_id}/{msg.utterance_id}"] = recognizer.predict(list(turns)).top_label
    return out


def report_markdown(title: str, score: dict, bag: str, params: dict, speed: float, extra: str = "") -> str:
    lines = [f"# {title}", "", f"Bag `{bag}`, replayed at {speed}x through the emotion node "
             f"(`python -m ddvlm_ros.replay`), params {json.dumps(params)}. {extra}", ""]
    if score.get("n"):
        lines += [f"- utterances: {score['utterances']}, answered {score['answered']}, unanswered "
                  f"{score['unanswered']}, refined {score['refined']}, duplicate answers {score['duplicates']}",
                  f"- WA-F1 **{score['wa_f1']:.2f}**, macro F1 {score['macro_f1']:.2f}, accuracy {score['accuracy']:.2f}",
                  f"- text-result latency ms: p50 {score['latency_ms']['p50']:.1f}, p90 {score['latency_ms']['p90']:.1f}, "
                  f"max {score['latency_ms']['max']:.1f}", "",
                  "| class | F1 |", "|---|---|"]
        lines += [f"| {name} | {f1:.2f} |" for name, f1 in score["per_class_f1"].items()]
        lines += ["", "Confusion (rows gold, columns predicted, order " + ", ".join(LABELS) + "):", "", "```"]
        lines += [" ".join(f"{v:5d}" for v in row) for row in score["confusion"]] + ["```"]
    else:
        lines.append(f"No utterance was answered ({score.get('utterances', 0)} replayed).")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m ddvlm_ros.replay", description=__doc__.split("\n\n")[0])
    ap.add_argument("bag")
    ap.add_argument("--model-dir", default="")
    ap.add_argument("--speed", type=float, default=1.0)
    ap.add_argument("--captioner", default="none")
    ap.add_argument("--live", action="store_true", help="print a table row per answer")
    ap.add_argument("--max-in-flight", type=int, default=0,
                    help="hold back utterances while this many are unanswered (0: pure bag timing)")
    ap.add_argument("--report", help="write Markdown here and JSON next to it")
    ap.add_argument("--title", default="Bag replay through the emotion node")
    args = ap.parse_args(argv)
    from transformers.utils import logging

    logging.set_verbosity_error()
    labels = load_labels(args.bag)
    params = {"model_dir": args.model_dir, "captioner": args.captioner, "input_timeout_s": 0.0}

    def live(key, msg):
        if args.live:
            gold = labels.get(key, "-")
            mark = "*" if msg.refined else " "
            print(f"{key:<22} {msg.speaker_id[:12]:<12} {msg.speaker_token:<5} {msg.top_label:<9} "
                  f"{msg.confidence:5.2f} {mark}  gold {gold:<9} {msg.latency_ms:7.1f} ms", flush=True)

    if args.live:
        print(f"{'utterance':<22} {'speaker':<12} {'tok':<5} {'emotion':<9} {'conf':>5} R  {'gold':<14} latency")
    result = replay(args.bag, params, args.speed, on_answer=live, max_in_flight=args.max_in_flight)
    score = result.score(labels)
    print(f"\nanswered {score['answered']}/{score['utterances']} utterances "
          f"({score['unanswered']} without answer, {score['refined']} refined) in {result.wall_s:.1f}s")
    if score.get("n"):
        print(f"WA-F1 {score['wa_f1']:.2f}  macro F1 {score['macro_f1']:.2f}  accuracy {score['accuracy']:.2f}  "
              f"latency p50 {score['latency_ms']['p50']:.1f} ms")
    if args.report:
        path = Path(args.report)
        path.parent.mkdir(parents=True, exist_ok=True)
        extra = (f"At most {args.max_in_flight} utterances in flight (latency includes that queue)."
                 if args.max_in_flight else "")
        path.write_text(report_markdown(args.title, score, args.bag, params, args.speed, extra))
        path.with_suffix(".json").write_text(json.dumps({"bag": args.bag, "speed": args.speed, "params": params,
                                                         "score": score, "wall_s": result.wall_s}, indent=1) + "\n")
        print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
