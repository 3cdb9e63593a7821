"""A soak test: the node under a seeded random mix of everything a robot and its operator do to it at once.

Transcripts (good, empty, huge), utterances (final, partial, several conversations), camera frames (good,
odd encodings, truncated, stamped in the past or future), corrupt compressed frames, ROS4HRI voices coming and
going, persons linked to them and to faces (whose expression topics the node publishes on, then leaves), voice
activity (the VAD's, each voice's is_speaking, the robot's speaking) flickering, lifecycle
transitions and parameter changes (as an operator makes them: through the node's services), conversation
resets and /clock going forwards and back. The invariants: no exception escapes a callback or a worker thread,
and afterwards the node answers.
"""
import random
import threading
import time
import traceback

import hri_msgs.msg as hri  # built by make msgs (the vendored subset where the real package is missing)
import numpy as np
from builtin_interfaces.msg import Time
from lifecycle_msgs.msg import State
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Bool, String

from ddvlm_msgs.msg import Utterance
from ddvlm_ros.convert import sec_to_stamp

OPS = ("transcript", "transcript", "utterance", "partial", "image", "image", "bad_image", "compressed", "clock",
       "clock", "deactivate", "activate", "cleanup", "configure", "parameter", "reset", "track", "speech", "speech",
       "vad", "vad", "voice_vad", "robot_speaking", "persons", "link", "link")
PARAMETERS = (("idle_timeout_s", 0.0), ("caption_timeout_s", 0.5), ("frames_per_window", 2),
              ("diagnostics_period_s", 0.3), ("input_timeout_s", 0.0), ("image_topic", "camera"),
              ("conversation_id", "lab"))


def image(rng: random.Random, stamp: float) -> Image:
    data = np.random.default_rng(rng.randrange(1 << 30)).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    msg = Image(height=32, width=32, encoding=rng.choice(["rgb8", "bgr8", "mono8", "no-such-encoding"]), step=96,
                data=data.tobytes())
    msg.header.stamp = sec_to_stamp(stamp, Time)
    return msg


def act(h, rng: random.Random, op: str, sim: list[float]) -> None:
    state = h.node._state_machine.current_state[0]
    now = h.now()
    if op == "transcript":
        text = rng.choice(["Ross: hi", "Rachel: what?!", "", "   ", "blah " * 1000, "how you doin"])
        h.publish(String, "transcript", String(data=text), wait_subscribers=False)
    elif op in ("utterance", "partial"):
        h.publish(Utterance, "utterance", Utterance(
            text="hey there", speaker_id=rng.choice(["a", "b", ""]), is_final=op == "utterance",
            conversation_id=rng.choice(["", "c1", "c2"]), start=sec_to_stamp(now - 1, Time),
            end=sec_to_stamp(now, Time)), wait_subscribers=False)
    elif op == "image":
        h.publish(Image, "image", image(rng, now + rng.choice([0.0, -0.5, -100.0, 100.0])), wait_subscribers=False)
    elif op == "bad_image":
        h.publish(Image, "image", Image(height=32, width=32, encoding="rgb8", step=96, data=b"12"),
                  wait_subscribers=False)
    elif op == "compressed":
        h.publish(CompressedImage, "image/compressed", CompressedImage(format="jpeg", data=b"not a jpeg"),
                  wait_subscribers=False)
    elif op == "clock":
        sim[0] = max(100.0, sim[0] + rng.choice([0.1, 0.3, 0.5, 5.0, -30.0]))
        h.publish(Clock, "/clock", Clock(clock=sec_to_stamp(sim[0], Time)), wait_subscribers=False)
    elif op == "deactivate" and state == State.PRIMARY_STATE_ACTIVE:
        assert h.change_state("deactivate")
    elif op == "activate" and state == State.PRIMARY_STATE_INACTIVE:
        assert h.change_state("activate")
    elif op == "cleanup" and state == State.PRIMARY_STATE_INACTIVE:
        assert h.change_state("cleanup")
    elif op == "configure" and state == State.PRIMARY_STATE_UNCONFIGURED:
        assert h.change_state("configure")
    elif op == "parameter":
        name, value = rng.choice(PARAMETERS)
        h.set_parameters(**{name: value})
    elif op == "reset" and h.node.pipeline is not None and h.node._active:
        h.node.pipeline.reset(rng.choice(["", "c1"]))
    elif op == "track":
        ids = rng.sample(["anna", "bob", "cleo", "9bad", "a-b", ""], rng.randint(0, 4))
        h.publish(hri.IdsList, "/humans/voices/tracked", hri.IdsList(ids=ids), wait_subscribers=False)
    elif op == "speech":
        final = rng.random() < 0.5
        msg = hri.LiveSpeech(final="I got it" if final else "", incremental="" if final else "I go", confidence=0.9)
        msg.header.stamp = sec_to_stamp(now, Time)
        h.publish(hri.LiveSpeech, f"/humans/voices/{rng.choice(['anna', 'bob', 'cleo'])}/speech", msg,
                  wait_subscribers=False)
    elif op in ("vad", "robot_speaking"):
        h.publish(Bool, "voice_activity" if op == "vad" else "robot_speaking", Bool(data=rng.random() < 0.5),
                  wait_subscribers=False)
    elif op == "persons":
        ids = rng.sample(["p1", "p2", "9bad"], rng.randint(0, 3))
        h.publish(hri.IdsList, "/humans/persons/tracked", hri.IdsList(ids=ids), wait_subscribers=False)
    elif op == "link":  # latched, as hri_person_manager publishes them
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

        topic = f"/humans/persons/{rng.choice(['p1', 'p2'])}/{rng.choice(['voice_id', 'face_id'])}"
        if topic not in h._pubs:
            h._pubs[topic] = h.client.create_publisher(String, topic, QoSProfile(
                depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE))
        value = rng.choice(["anna", "bob", "cleo"] if topic.endswith("voice_id") else ["f1", "f2", "bad/id", ""])
        h._pubs[topic].publish(String(data=value))
    elif op == "voice_vad":
        h.publish(Bool, f"/humans/voices/{rng.choice(['anna', 'bob', 'cleo'])}/is_speaking",
                  Bool(data=rng.random() < 0.5), wait_subscribers=False)


def test_a_random_mix_of_inputs_transitions_and_settings_never_stops_the_node(
        harness, tiny_visual_checkpoint, monkeypatch):
    import ddvlm_ros.ros4hri

    escaped = []
    monkeypatch.setattr(ddvlm_ros.ros4hri, "VOICE_LINGER_S", 0.5)  # voices and faces' publishers come and go
    monkeypatch.setattr(threading, "excepthook", lambda args: escaped.append(
        f"{args.thread}: " + "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))))
    h = harness(model_dir=tiny_visual_checkpoint, captioner="cue", input_timeout_s=1.0, idle_timeout_s=0.5,
                use_sim_time=True, ros4hri=True, face_expression=True).start()
    h.publish(Clock, "/clock", Clock(clock=sec_to_stamp(1000.0, Time)))
    rng, sim, ops = random.Random(0), [1000.0], 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        act(h, rng, rng.choice(OPS), sim)
        h.node.diagnostic_status()
        ops += 1
        time.sleep(rng.random() * 0.02)
    assert h.spinner.thread.is_alive() and not escaped, escaped  # the executor still spins; no worker died
    state = h.node._state_machine.current_state[0]
    if state == State.PRIMARY_STATE_UNCONFIGURED:
        assert h.change_state("configure")
    if h.node._state_machine.current_state[0] == State.PRIMARY_STATE_INACTIVE:
        assert h.change_state("activate")
    h.set_parameters(conversation_id="after")
    h.settle()
    h.publish(String, "transcript", String(data="Ross: still there?"))
    answered = h.wait_for(1, predicate=lambda m: m.conversation_id == "after")
    assert answered and answered[0].speaker_id == "Ross", f"no answer after {ops} operations"
    assert [t.name for t in threading.enumerate()].count("ddvlm-inference") == 1
