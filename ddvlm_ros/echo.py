"""ddvlm-emotion-echo: /emotion as one readable line per answer, to check the wiring on a robot.

    ddvlm-emotion-echo [--ros-args -r emotion:=/my_robot/emotion]

`ros2 topic echo /emotion` prints the raw arrays; this prints who, which emotion, how sure, the runners-up,
text or text+visual, refined or not, latency, the ASR's confidence in the transcript (where it gave one) and flags,
e.g.

    default/3  Ross <s1>  joy 0.82  (surprise 0.10, neutral 0.05)  text  45 ms
    default/4  Ann <s2>  neutral 0.41  (joy 0.22, fear 0.15)  text  38 ms  asr 0.31  flags: transcript-low-confidence
"""
from __future__ import annotations

import sys

import rclpy
from rclpy.node import Node

from ddvlm_ros.msgs import EmotionDistribution
from ddvlm_ros.spin import spin_until_shutdown


def format_emotion(msg, runners_up: int = 2) -> str:
    """One line for one EmotionDistribution."""
    ranked = sorted(zip(msg.labels, msg.probabilities), key=lambda lp: -lp[1])
    others = ", ".join(f"{label} {p:.2f}" for label, p in ranked[1:1 + runners_up])
    line = (f"{msg.conversation_id}/{msg.utterance_id}  {msg.speaker_id or '?'} {msg.speaker_token}  "
            f"{msg.top_label} {msg.confidence:.2f}  ({others})  {msg.modalities}"
            f"{' refined' if msg.refined else ''}  {msg.latency_ms:.0f} ms"
            f"{f'  asr {msg.transcript_confidence:.2f}' if msg.transcript_confidence else ''}")
    return line + (f"  flags: {', '.join(msg.flags)}" if msg.flags else "")


class EmotionEcho(Node):
    def __init__(self, out=print, **kwargs):
        super().__init__("ddvlm_emotion_echo", **kwargs)
        self.create_subscription(EmotionDistribution, "emotion", lambda msg: out(format_emotion(msg)), 50)


def main(args: list[str] | None = None) -> int:
    args = args if args is not None else sys.argv
    ours = args[1:args.index("--ros-args")] if "--ros-args" in args else args[1:]
    if ours:  # -h, --help or anything else that is not a ROS argument
        print(__doc__.strip())
        return 0 if set(ours) <= {"-h", "--help"} else 2
    rclpy.init(args=args)
    node = EmotionEcho(out=lambda line: print(line, flush=True))
    return spin_until_shutdown(node, lambda: rclpy.spin(node))


if __name__ == "__main__":
    sys.exit(main())
