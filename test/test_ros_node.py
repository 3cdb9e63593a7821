"""The emotion node on a real rclpy graph: transcripts in, /emotion out; lifecycle; bad input."""
import json
import math
import re
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from ddvlm_core.captioner import Caption
from ddvlm_core.labels import LABELS
from ddvlm_msgs.msg import EmotionDistribution, Utterance
from ddvlm_ros.convert import sec_to_stamp
from ddvlm_ros.emotion_node import EmotionNode
from ros_harness import WindowCaptioner, logged_line, result_of, rosout_listener  # test/ros_harness.py


@pytest.fixture(autouse=True)
def no_slow_warning(monkeypatch):
    """The status message names one fault, and 'slow: p90 latency' outranks every other: on a loaded machine (CI's
    two test processes) one answer of 1.5 s among a test's few (their p90 is the slowest of 10 or fewer) hid the fault
    a test checked; since, one is not enough (SLOW_MIN_ANSWERS), but a busy machine can make two. The slow warning's
    own tests set the threshold again."""
    monkeypatch.setattr("ddvlm_ros.emotion_node.SLOW_LATENCY_MS", math.inf)


def image_msg(stamp: float, h=64, w=64, encoding="rgb8", value=None, seed=0):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 255, (h, w, 3), dtype=np.uint8) if value is None else np.full((h, w, 3), value, np.uint8)
    msg = Image(height=h, width=w, encoding=encoding, step=w * 3, data=data.tobytes())
    msg.header.stamp = sec_to_stamp(stamp, Time)
    return msg


def utterance(text, speaker="ross", start=0.0, end=0.0, final=True, utt_id="", conv=""):
    return Utterance(text=text, speaker_id=speaker, is_final=final, utterance_id=utt_id, conversation_id=conv,
                     start=sec_to_stamp(start, Time), end=sec_to_stamp(end, Time))


def test_transcripts_give_valid_distributions_with_stable_speaker_tokens(harness, tiny_text_checkpoint):
    h = harness(model_dir=tiny_text_checkpoint).start()
    for line in ["Ross: I got the job!", "Rachel: No way!", "Joey: How you doin'?", "Ross: Yes way."]:
        h.publish(String, "transcript", String(data=line))
    got = h.wait_for(4)
    assert [m.speaker_id for m in got] == ["Ross", "Rachel", "Joey", "Ross"]
    assert [m.speaker_token for m in got] == ["<s1>", "<s2>", "<s3>", "<s1>"]
    assert [m.utterance_id for m in got] == ["1", "2", "3", "4"]
    for m in got:
        assert list(m.labels) == list(LABELS) and sum(m.probabilities) == pytest.approx(1, abs=1e-5)
        assert m.top_label == LABELS[int(np.argmax(m.probabilities))] and m.confidence == max(m.probabilities)
        assert m.modalities == "text" and not m.refined and m.latency_ms > 0 and m.conversation_id == "default"


def test_utterance_messages_keep_ids_and_stamp_the_end(harness, tiny_text_checkpoint):
    h = harness(model_dir=tiny_text_checkpoint).start()
    h.publish(Utterance, "utterance", utterance("partial", final=False))
    h.publish(Utterance, "utterance", utterance("Hello there", "monica", 10.0, 11.5, utt_id="u7", conv="kitchen"))
    got = h.wait_for(1)
    h.settle()
    assert len(h.received) == 1  # the partial (is_final = false) is not classified
    m = got[0]
    assert (m.utterance_id, m.conversation_id, m.speaker_id) == ("u7", "kitchen", "monica")
    assert (m.header.stamp.sec, m.header.stamp.nanosec) == (11, 500_000_000)


def test_an_utterance_stamped_before_one_already_answered_is_placed_before_it_and_flagged(
        harness, tiny_text_checkpoint):
    """Utterances of two ASRs on one topic, the later one first: the earlier one (its end stamp, or without one its
    header stamp) goes before it in the context and its answer says it arrived late; an utterance without stamps
    ends when it arrives, and is the latest."""
    h = harness(model_dir=tiny_text_checkpoint).start()
    h.publish(Utterance, "utterance", utterance("Really?", "bob", 11.0, 11.5))
    h.publish(Utterance, "utterance", utterance("I waited all night for your call!", "ann", 6.0, 11.0))
    header_only = utterance("Where were you?", "ann")
    header_only.header.stamp = sec_to_stamp(11.2, Time)
    h.publish(Utterance, "utterance", header_only)
    h.publish(Utterance, "utterance", utterance("Out.", "bob"))
    got = h.wait_for(4, predicate=first_answer)
    assert [("transcript-arrived-late" in m.flags) for m in got] == [False, True, True, False]
    turns = h.node.pipeline.conversations["default"].dialogue.turns
    assert [t.text for t in turns] == ["I waited all night for your call!", "Where were you?", "Really?", "Out."]
    assert (got[1].header.stamp.sec, got[2].header.stamp.nanosec) == (11, 200_000_000)
    h.settle()  # "Really?" was answered again after each of the two that went before it
    assert [m.utterance_id for m in h.received if not first_answer(m)] == [got[0].utterance_id] * 2


def first_answer(msg) -> bool:
    """An utterance's first answer, not one published again after a late transcript went before it."""
    return "answer-revised" not in msg.flags


def test_utterances_from_two_publishers_of_one_asr_are_answered_once_and_diagnosed(harness, tiny_text_checkpoint):
    """A relay forwards the ASR's Utterances onto the node's topic while the ASR publishes there too: every
    utterance arrives twice. Each is answered once, the context holds it once, and /diagnostics says the transcripts
    come twice once three copies came."""
    h = harness(model_dir=tiny_text_checkpoint).start()
    relay = h.client.create_publisher(Utterance, "utterance", 10)
    lines = [("Hi.", 10.0), ("I got the job!", 12.0), ("They called this morning.", 15.0)]
    for k, (text, end) in enumerate(lines):
        msg = utterance(text, "ann", end - 1.0, end, utt_id=f"u{k}")
        h.publish(Utterance, "utterance", msg)
        deadline = time.monotonic() + 15
        while relay.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        relay.publish(msg)
    h.wait_for(3)
    h.settle()
    assert [m.utterance_id for m in h.received] == ["u0", "u1", "u2"]
    assert [t.text for t in h.node.pipeline.conversations["default"].dialogue.turns] == [t for t, _ in lines]
    status = h.node.diagnostic_status()
    values = {kv.key: kv.value for kv in status.values}
    assert status.message == "transcripts come twice (see duplicate_transcripts)"
    assert values["duplicate_transcripts"] == ("3 transcripts came a second time and were dropped (the latest: 'They "
                                               "called this morning.' on utterance again)")


def test_how_long_after_its_end_a_stamped_transcript_came_is_diagnosed_and_another_clock_is_a_warning(
        harness, tiny_text_checkpoint):
    """transcript_delay_s: the ASR's delay, from the end stamp of an utterance to its transcript's arrival (Whisper
    on a CPU takes seconds). Stamps from another clock (an ASR stamping with its audio device's clock, an hour off)
    are a warning, as they misplace the utterance's camera window and its place in the dialogue."""
    h = harness(model_dir=tiny_text_checkpoint).start()
    now = h.now()
    for k, delay in enumerate((0.6, 0.8, 1.0)):
        h.publish(Utterance, "utterance", utterance(f"Line {k}.", "ann", now - delay - 1.0, now - delay))
    h.publish(Utterance, "utterance", utterance("No stamps: not counted.", "ann"))
    h.wait_for(4, predicate=first_answer)  # (the later delays end earlier: those lines arrive late, and are placed)
    status = h.node.diagnostic_status()
    delay = {kv.key: kv.value for kv in status.values}["transcript_delay_s"]
    assert delay.endswith(" s (the latest 3 stamped transcripts: their end stamp to their arrival, on this node's "
                          "clock)")
    p50, p90 = (float(delay.split()[k]) for k in (1, 4))
    assert 0.8 <= p50 < 0.8 + 5 and 1.0 <= p90 < 1.0 + 5 and status.level == b"\x00"
    for k in range(3):
        h.publish(Utterance, "utterance", utterance(f"Off by an hour {k}.", "bob", now - 3601.0, now - 3600.0))
    h.wait_for(7, predicate=first_answer)
    status = h.node.diagnostic_status()
    assert status.level == b"\x01" and status.message == "transcripts stamped on another clock (see transcript_delay_s)"


@pytest.mark.parametrize("utt_id", ["u9", ""])  # an ASR that numbers its utterances, and one that does not
def test_the_caption_made_while_a_person_speaks_refines_the_final_result(harness, tiny_visual_checkpoint, utt_id):
    h = harness(model_dir=tiny_visual_checkpoint, captioner="cue", frames_per_window=4).start()
    now = h.now()
    for k in range(6):
        h.publish(Image, "image", image_msg(now - 1.0 + 0.15 * k, seed=k))
        time.sleep(0.05)
    time.sleep(0.3)
    h.publish(Utterance, "utterance", utterance("Look at", "ross", now - 1.05, 0.0, final=False, utt_id=utt_id))
    deadline = time.monotonic() + 20  # the streaming caption is made while the words come
    while h.node.pipeline.queue_depths()["caption"] or not h.node.pipeline._prefetched:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    h.publish(Utterance, "utterance", utterance("Look at this!", "ross", now - 1.05, now, utt_id=utt_id))
    got = h.wait_for(2)
    assert [m.refined for m in got] == [False, True] and got[1].utterance_id == (utt_id or "1")
    values = {kv.key: kv.value for kv in h.node.diagnostic_status().values}
    assert values["caption_prefetch_hits"] == "1"


def test_text_result_first_then_refined_with_frames_of_the_window(harness, tiny_visual_checkpoint):
    h = harness(model_dir=tiny_visual_checkpoint, captioner="cue", frames_per_window=4).start()
    now = h.now()
    h.publish(Image, "image", image_msg(now - 5.0, seed=3))  # outside the window
    for k in range(6):  # frames inside the utterance window, a moving bright block, ~20 Hz (depth-1 QoS)
        msg = image_msg(now - 1.0 + 0.15 * k, value=0)
        arr = np.zeros((64, 64, 3), np.uint8)
        arr[10:50, 5 + 8 * k: 25 + 8 * k] = 255
        msg.data = arr.tobytes()
        h.publish(Image, "image", msg)
        time.sleep(0.05)
    time.sleep(0.3)
    h.publish(Utterance, "utterance", utterance("Look at this!", "ross", now - 1.05, now, utt_id="a"))
    got = h.wait_for(2)
    assert [m.refined for m in got] == [False, True]
    text, fused = got
    assert text.modalities == "text" and fused.modalities == "text+visual"
    assert fused.caption_source == "cue-fallback" and "fallback-captioner" in fused.flags
    assert "Movement" in fused.caption or "movement" in fused.caption
    assert fused.utterance_id == text.utterance_id == "a"
    assert list(fused.probabilities) != list(text.probabilities)
    values = {kv.key: kv.value for kv in h.node.diagnostic_status().values}
    assert values["captioner_check"] == "training captioner unknown"  # a checkpoint not from training.loop
    assert values["confidence_calibration"].startswith("not calibrated (temperature 1")  # nor training.calibrate
    from ddvlm_ros.convert import cv_bridge_problem

    assert values["image_decoder"] == ("cv_bridge" if not cv_bridge_problem() else
                                       f"ddvlm (cv_bridge: {cv_bridge_problem()})")  # here: not installed


def test_a_node_without_a_captioner_leaves_cv_bridge_alone(harness, tiny_text_checkpoint, monkeypatch, capfd):
    """rosdep installs apt's cv_bridge, which imports under the venv's NumPy 2 and crashes at its first conversion.
    A text-only node reads no camera: it neither probes cv_bridge (a child process at each configure) nor warns
    that it does not work."""
    import ddvlm_ros.emotion_node as emotion_node

    crashed = "the process crashed (signal 11) converting a test image"
    probed = []
    monkeypatch.setattr(emotion_node, "cv_bridge_problem", lambda: probed.append(1) or crashed)
    monkeypatch.setattr(emotion_node, "use_cv_bridge", lambda: probed.append(1) or f"ddvlm (cv_bridge: {crashed})")
    capfd.readouterr()
    h = harness(model_dir=tiny_text_checkpoint).start()
    values = {kv.key: kv.value for kv in h.node.diagnostic_status().values}
    assert values["image_decoder"] == emotion_node.NO_IMAGES_DECODED and probed == []
    assert "cv_bridge" not in capfd.readouterr().err


def test_lifecycle_transitions_and_diagnostics(harness, tiny_text_checkpoint, capfd):
    from lifecycle_msgs.msg import State

    h = harness(model_dir=tiny_text_checkpoint)
    assert h.node.diagnostic_status().message in ("inactive", "running")
    capfd.readouterr()
    h.start()
    assert "Loading weights" not in capfd.readouterr().err  # no progress bars in the node's log
    assert h.node.diagnostic_status().level == b"\x00"
    assert h.change_state("deactivate")
    assert h.node._state_machine.current_state[0] == State.PRIMARY_STATE_INACTIVE
    h.publish(String, "transcript", String(data="Ross: anyone?"), wait_subscribers=False)
    time.sleep(0.5)
    assert h.received == []  # inactive: nothing is classified or published
    h.node.trigger_activate()
    h.publish(String, "transcript", String(data="Ross: now?"))
    answer = h.wait_for(1)[0]
    values = {kv.key: kv.value for kv in h.node.diagnostic_status().values}
    assert values["last_output"] == f"default/{answer.utterance_id} Ross: {answer.top_label} {answer.confidence:.2f}"
    assert values["conversations"] == "1" and values["published"] == "1"
    assert h.change_state("deactivate")
    assert h.change_state("cleanup")
    assert h.node.recognizer is None and h.node._state_machine.current_state[0] == State.PRIMARY_STATE_UNCONFIGURED


def test_transcripts_without_punctuation_are_flagged_and_diagnosed(harness, tiny_text_checkpoint):
    """An ASR that does not punctuate: each answer says so in its flags, and /diagnostics warns once most of the
    latest transcripts come so (the model scores far lower on such text)."""
    h = harness(model_dir=tiny_text_checkpoint).start()
    h.publish(String, "transcript", String(data="Ross: I got the job!"))
    for k in range(10):
        h.publish(String, "transcript", String(data=f"Ross: i got the job number {k}"))
    got = h.wait_for(11)
    assert [("transcript-unpunctuated" in m.flags) for m in got] == [False] + [True] * 10
    h.settle()
    status = h.node.diagnostic_status()
    values = {kv.key: kv.value for kv in status.values}
    assert status.level == b"\x01"
    assert status.message == "transcripts without punctuation (see transcripts_unpunctuated)"
    assert values["transcripts_unpunctuated"] == ("10 of the latest 11 transcripts of 3+ words have no punctuation; "
                                                  "the prompts end their turns with a full stop")  # auto: the default
    assert h.node.recognizer.end_unpunctuated_turns
    from rclpy.parameter import Parameter

    assert h.node.set_parameters([Parameter("end_unpunctuated_turns", value="never")])[0].successful
    assert not h.node.recognizer.end_unpunctuated_turns  # at once
    assert not h.node.set_parameters([Parameter("end_unpunctuated_turns", value="sometimes")])[0].successful


def test_an_asr_that_hears_the_robot_is_diagnosed(harness, tiny_text_checkpoint):
    """The robot's TTS reaches the node as its context-only speaker, and the ASR, listening while the robot speaks,
    sends the same words back: those answers carry transcript-echoes-robot, and once three of the latest
    transcripts do, /diagnostics says the ASR hears the robot."""
    h = harness(model_dir=tiny_text_checkpoint, context_only_speakers="robot").start()
    for k in range(3):
        h.publish(String, "transcript", String(data=f"robot: Shall I bring you the blue cup number {k}?"))
        h.publish(String, "transcript", String(data=f"shall i bring you the blue cup number {k}"))
        h.publish(String, "transcript", String(data="Ann: Yes, please."))
    got = h.wait_for(6)
    assert [("transcript-echoes-robot" in m.flags, m.speaker_id) for m in got] == [(True, ""), (False, "Ann")] * 3
    h.settle()
    status = h.node.diagnostic_status()
    values = {kv.key: kv.value for kv in status.values}
    assert status.level == b"\x01" and status.message == "the ASR hears the robot (see self_echo_transcripts)"
    assert values["self_echo_transcripts"] == (
        "3 of the latest 6 transcripts repeated what the robot had just said (the latest: 'shall i bring you the blue "
        "cup number 2' after the robot's 'Shall I bring you the blue cup number 2?')")


def test_transcripts_that_are_partial_results_are_diagnosed(harness, tiny_text_checkpoint):
    """An ASR's partial results remapped onto transcript: each next version of the utterance carries
    transcript-extends-previous, the context holds it once, and /diagnostics says the transcripts are partial
    results once three of the latest are, quoting them until quote_speech is set false."""
    h = harness(model_dir=tiny_text_checkpoint).start()
    for text in ("i", "i can't", "i can't believe", "I can't believe it!"):
        h.publish(String, "transcript", String(data=f"Ann: {text}"))
    got = h.wait_for(4)
    assert [("transcript-extends-previous" in m.flags) for m in got] == [False, True, True, True]
    h.settle()
    status = h.node.diagnostic_status()
    values = {kv.key: kv.value for kv in status.values}
    assert status.level == b"\x01"
    assert status.message == "transcripts are partial results (see partial_result_transcripts)"
    assert values["partial_result_transcripts"].startswith(
        "3 of the latest 4 transcripts repeated and extended the one before them (the latest: \"I can't believe it!\" ")
    assert [t.text for t in h.node.pipeline.conversations["default"].dialogue.turns] == ["I can't believe it!"]
    from rclpy.parameter import Parameter  # quote_speech: false, at once: the words leave /diagnostics

    assert h.node.set_parameters([Parameter("quote_speech", value=False)])[0].successful
    values = {kv.key: kv.value for kv in h.node.diagnostic_status().values}
    assert values["partial_result_transcripts"].startswith(
        "3 of the latest 4 transcripts repeated and extended the one before them (the latest: <4 words> ")
    assert values["partial_result_transcripts"].endswith(" s after <3 words>)")


def test_what_the_robot_says_on_robot_speech_joins_the_context_and_its_echo_is_flagged(harness, tiny_text_checkpoint):
    """naoqi_driver's /speech (what Pepper is told to say) remapped onto robot_speech: the robot's turns join the
    context as speaker 'robot', markup removed, with no answer of their own; the ASR's transcript of them is
    flagged."""
    h = harness(model_dir=tiny_text_checkpoint).start()
    h.publish(String, "robot_speech", String(data="\\rspd=90\\Shall I bring you the blue cup?"))
    h.settle()  # two topics: the robot spoke first
    h.publish(String, "transcript", String(data="shall i bring you the blue cup"))
    h.publish(String, "transcript", String(data="Ann: Yes, please."))
    echo, reply = h.wait_for(2)
    assert ("transcript-echoes-robot" in echo.flags, "transcript-echoes-robot" in reply.flags) == (True, False)
    turns = h.node.pipeline.conversations["default"].dialogue.turns
    assert [(t.speaker, t.speaker_token, t.text) for t in turns] == [
        ("robot", "<s1>", "Shall I bring you the blue cup?"), ("", "<s0>", "shall i bring you the blue cup"),
        ("Ann", "<s2>", "Yes, please.")]
    h.publish(String, "transcript", String(data="robot: Here you are."))  # speaker robot: the robot's on any input
    h.settle()
    values = {kv.key: kv.value for kv in h.node.diagnostic_status().values}
    assert values["context_only_utterances"] == "2" and "input_age_s[robot_speech]" in values
    assert h.received == [echo, reply]  # nothing for the robot's own turns


def call_reset(h, conversation_id: str):
    from ddvlm_msgs.srv import ResetConversation

    client = h.client.create_client(ResetConversation, "/ddvlm_emotion/reset_conversation")
    assert client.wait_for_service(timeout_sec=5)
    return result_of(client.call_async(ResetConversation.Request(conversation_id=conversation_id)))


def test_the_reset_service_starts_one_conversation_over_and_refuses_while_inactive(harness, tiny_text_checkpoint):
    h = harness(model_dir=tiny_text_checkpoint)
    refused = call_reset(h, "")
    assert not refused.success and "not active" in refused.message
    h.start()
    for text, speaker, conv in [("Hi", "ross", "kitchen"), ("Hey", "monica", "kitchen"), ("Yo", "joey", "hall")]:
        h.publish(Utterance, "utterance", utterance(text, speaker, conv=conv))
    h.wait_for(3)
    h.settle()
    answer = call_reset(h, "kitchen")
    assert answer.success and answer.message == "conversation 'kitchen' starts over"
    h.publish(Utterance, "utterance", utterance("Bye", "monica", conv="kitchen"))  # the next participant
    h.publish(Utterance, "utterance", utterance("So", "chandler", conv="hall"))
    got = h.wait_for(5)
    assert [(m.conversation_id, m.speaker_token) for m in got] == [
        ("kitchen", "<s1>"), ("kitchen", "<s2>"), ("hall", "<s1>"), ("kitchen", "<s1>"), ("hall", "<s2>")]
    values = {kv.key: kv.value for kv in h.node.diagnostic_status().values}
    assert values["resets_requested"] == "1" and values["conversations"] == "2"


class OnSetOnlyEmotionNode(EmotionNode):
    """The node on an rclpy without post-set parameter callbacks, as Humble's (ddvlm_ros.compat)."""
    add_post_set_parameters_callback = None


@pytest.mark.parametrize("node_class", [EmotionNode, OnSetOnlyEmotionNode], ids=["post-set-callbacks", "humble"])
def test_param_set_on_a_running_node_applies_live_settings_and_names_the_rest_as_pending(
        harness, tiny_text_checkpoint, capfd, node_class):
    h = harness(node_class=node_class, model_dir=tiny_text_checkpoint).start()
    assert h.set_parameters(idle_timeout_s=0.0, caption_timeout_s=3, conversation_id="lab") == [True] * 3
    assert (h.node.pipeline.idle_timeout_s, h.node.pipeline.caption_timeout_s) == (0.0, 3.0)
    h.publish(String, "transcript", String(data="Ross: hi"))
    assert h.wait_for(1)[0].conversation_id == "lab"
    assert h.node.pending_parameters() == []
    assert h.set_parameters(frames_per_window=2, frame_buffer_s=0) == [True, False]  # 0 is refused
    values = {kv.key: kv.value for kv in h.node.diagnostic_status().values}
    assert values["parameters_pending"] == "frames_per_window (next configure)"
    assert h.node.pipeline.frames_per_window == 4  # the running pipeline keeps its configuration
    assert "frames_per_window = 2 takes effect at the next configure (in use: 4)" in capfd.readouterr().err
    assert h.set_parameters(max_context_turns=32) == [True]  # the value in use: nothing to say
    assert "max_context_turns" not in capfd.readouterr().err and h.node.pending_parameters() == ["frames_per_window"]
    assert h.set_parameters(transcript_topic="asr/text", diagnostics_period_s=0.25) == [True, True]
    assert h.node.pending_parameters() == ["frames_per_window", "transcript_topic"]
    assert "transcript_topic = 'asr/text' takes effect at the next activate" in capfd.readouterr().err
    assert h.node._diag_timer.timer_period_ns == 250_000_000  # at once
    assert h.change_state("deactivate")
    h.node.trigger_activate()  # subscribes to the new topic; the pipeline's settings wait for configure
    assert h.node.pending_parameters() == ["frames_per_window"]
    h.publish(String, "asr/text", String(data="Rachel: hi"))
    assert h.wait_for(2)[-1].speaker_id == "Rachel"
    assert h.change_state("deactivate")
    assert h.change_state("cleanup")
    h.start()
    assert h.node.pipeline.frames_per_window == 2 and h.node.pending_parameters() == []
    assert "parameters_pending" not in {kv.key for kv in h.node.diagnostic_status().values}


def test_the_readme_behaviour_node_example_receives_the_nodes_answers(harness, tiny_text_checkpoint, capfd):
    import re
    from pathlib import Path

    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from ddvlm_msgs.msg import EmotionDistribution
    from ddvlm_ros.spin import BackgroundSpin

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (example,) = re.findall(r"```python\n(# A behaviour node.*?)```", readme, re.S)
    namespace = {"__name__": "readme_example"}
    exec(compile(example, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    h = harness(model_dir=tiny_text_checkpoint).start()
    rclpy.init()  # the example uses the default context, as a node of its own process would
    try:
        behaviour = namespace["EmotionAwareBehaviour"]()
        executor = SingleThreadedExecutor()
        executor.add_node(behaviour)
        spinner = BackgroundSpin(executor)
        deadline = time.monotonic() + 15  # both ends: the node sees the example's reader, the example the node's writer
        while (h.node.count_subscribers("emotion") < 2 or behaviour.count_publishers("emotion") < 1) and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        h.publish(String, "transcript", String(data="Ross: I got the job!"))
        answer = h.wait_for(1)[0]
        angry = EmotionDistribution(labels=list(LABELS), probabilities=[0.1, 0, 0, 0, 0.1, 0.1, 0.7],
                                    top_label="anger", confidence=0.7, speaker_id="joey")
        angry.header.stamp = sec_to_stamp(20.0, Time)
        echo = EmotionDistribution(labels=list(LABELS), probabilities=[0, 0, 0, 1, 0, 0, 0], top_label="sadness",
                                   confidence=1.0, speaker_id="ann", flags=["transcript-echoes-robot"])
        earlier = EmotionDistribution(labels=list(LABELS), probabilities=[0, 0, 0, 0, 1, 0, 0], top_label="joy",
                                      confidence=1.0, speaker_id="joey", flags=["transcript-arrived-late"])
        earlier.header.stamp = sec_to_stamp(12.0, Time)  # joey said it before the angry line; its transcript came later
        revised = EmotionDistribution(labels=list(LABELS), probabilities=[0.2, 0.6, 0, 0, 0.1, 0, 0.1],
                                      top_label="surprise", confidence=0.6, speaker_id="joey", flags=["answer-revised"])
        revised.header.stamp = angry.header.stamp  # the angry line again, with joey's earlier line in its context
        others = h.client.create_publisher(EmotionDistribution, "emotion", 10)  # other answers, as if the node's
        deadline = time.monotonic() + 15
        while others.get_subscription_count() < 2 and time.monotonic() < deadline:  # the test's and the example's
            time.sleep(0.02)
        others.publish(echo)  # before joey's on the same publisher: handled first
        others.publish(angry)
        others.publish(earlier)
        others.publish(revised)
        others.publish(last := EmotionDistribution(  # handled after all of them
            labels=list(LABELS), probabilities=[1, 0, 0, 0, 0, 0, 0], top_label="neutral", confidence=1.0,
            speaker_id="zoe"))
        deadline = time.monotonic() + 15
        while "zoe" not in behaviour.mood and time.monotonic() < deadline:
            time.sleep(0.05)
        assert behaviour.mood == {"Ross": (answer.top_label, answer.confidence),
                                  "joey": ("surprise", pytest.approx(0.6)), "zoe": (last.top_label, last.confidence)}
        # ann's answer was the robot's words heard back: skipped; joey's joy ended before his anger: kept out; the
        # anger line's revised answer replaced its first
        deadline = time.monotonic() + 15
        err = ""
        while "joey sounds upset: slowing down" not in err and time.monotonic() < deadline:
            err += capfd.readouterr().err
            time.sleep(0.05)
        assert "joey sounds upset: slowing down" in err
        spinner.stop()
        behaviour.destroy_node()
    finally:
        rclpy.shutdown()


def test_deactivate_with_utterances_queued_drops_them_and_the_reactivated_node_answers(harness, tiny_text_checkpoint):
    h = harness(model_dir=tiny_text_checkpoint).start()
    for i in range(60):
        h.publish(String, "transcript", String(data=f"Ross: line {i}"))
    deadline = time.monotonic() + 10
    while h.node.pipeline.stats.utterances < 5 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert h.change_state("deactivate")  # while the rest of the burst waits (or is still arriving)
    h.settle()
    stats = h.node.pipeline.stats
    before = len(h.received)
    assert stats.published == stats.utterances == before  # each one taken up was answered, the rest dropped
    assert stats.dropped_at_stop >= 1 and before + stats.dropped_at_stop <= 60
    h.node.trigger_activate()
    h.publish(String, "transcript", String(data="Rachel: are you still there?"))
    assert h.wait_for(before + 1)[-1].speaker_id == "Rachel"
    values = {kv.key: kv.value for kv in h.node.diagnostic_status().values}
    assert values["dropped_at_deactivate"] == str(stats.dropped_at_stop)


# ---- bad input: each case a clear log or flag, and the node keeps answering ----------------------------


def assert_alive(h, n_before):
    h.publish(String, "transcript", String(data="Ross: still there?"))
    assert len(h.wait_for(n_before + 1)) == n_before + 1


@pytest.mark.parametrize("text", ["", "   \t  ", "Ross:    "])
def test_empty_or_blank_transcripts_are_no_speech_counted_without_a_warning(harness, tiny_text_checkpoint, text):
    """What an ASR wrapper publishes when its VAD fired on noise: nothing was said. It is counted with the
    transcripts of no speech, as Whisper's [BLANK_AUDIO] is, not rejected with a WARN each time (a robot's log
    filled with one per second of noise), and it is no turn of the dialogue."""
    h = harness(model_dir=tiny_text_checkpoint).start()
    warned = []
    h.node.pipeline.log = lambda level, message: level != "info" and warned.append(message)
    for _ in range(3):
        h.publish(String, "transcript", String(data=text))
    h.settle()
    stats = h.node.pipeline.stats
    assert h.received == [] and (stats.non_speech, stats.rejected, stats.utterances) == (3, 0, 0) and warned == []
    assert_alive(h, 0)
    assert [len(c.dialogue) for c in h.node.pipeline.conversations.values()] == [1]


def test_huge_transcript_is_answered_with_a_truncation_flag(harness, tiny_text_checkpoint):
    h = harness(model_dir=tiny_text_checkpoint).start()
    h.publish(String, "transcript", String(data="Ross: " + " ".join(f"blah{k}" for k in range(20000))))
    m = h.wait_for(1)[0]
    assert "current-utterance-truncated" in m.flags


def test_an_asr_repetition_loop_is_cut_flagged_and_counted(harness, tiny_text_checkpoint):
    """Whisper looping on noise: the transcript reaches the model with 3 repeats, the answer says the ASR looped,
    and /diagnostics counts it."""
    h = harness(model_dir=tiny_text_checkpoint).start()
    h.publish(String, "transcript", String(data="Ross: I got the job!"))
    h.publish(String, "transcript", String(data="Rachel: " + "Thank you. " * 40 + "Thank"))
    first, looped = h.wait_for(2)
    assert first.flags == [] and looped.flags == ["transcript-repetition-loop"]
    values = {kv.key: kv.value for kv in h.node.diagnostic_status().values}
    assert values["asr_repetition_loops"] == "1"


@pytest.mark.parametrize("text", [b"\xff\xfe\xfa", "I love it \ud83d"])  # not UTF-8; half an emoji
def test_text_that_is_not_unicode_is_rejected_by_the_pipeline(harness, tiny_text_checkpoint, text):
    from ddvlm_ros.pipeline import UtteranceIn

    h = harness(model_dir=tiny_text_checkpoint).start()
    h.node.pipeline.submit(UtteranceIn("default", "x", "ross", text, 0, 0, time.monotonic()))
    h.settle()
    assert h.node.pipeline.stats.rejected == 1 and h.received == [] and h.node.pipeline.stats.last_error == ""
    assert_alive(h, 0)


@pytest.mark.parametrize("msg_factory", [
    lambda t: Image(height=8, width=8, encoding="nv24", step=16, data=b"\x00" * 128),  # unknown encoding
    lambda t: Image(height=0, width=0, encoding="rgb8", step=0, data=b""),  # zero size
    lambda t: Image(height=8, width=8, encoding="rgb8", step=24, data=b"\x00" * 10),  # truncated buffer
])
def test_bad_raw_frames_are_counted_and_text_still_flows(harness, tiny_visual_checkpoint, msg_factory):
    h = harness(model_dir=tiny_visual_checkpoint, captioner="cue").start()
    now = h.now()
    msg = msg_factory(now)
    msg.header.stamp = sec_to_stamp(now - 0.5, Time)
    h.publish(Image, "image", msg)
    time.sleep(0.2)
    h.publish(Utterance, "utterance", utterance("hi", "ross", now - 1, now + 0.1))
    assert len(h.wait_for(1)) == 1
    h.settle()
    assert h.node._bad_frames >= 1 and all(not m.refined for m in h.received)
    miss = h.node.pipeline.stats.frame_window_miss
    if msg.encoding == "nv24":  # buffered, then undecodable: said; the others never reach the buffer
        assert "none of the 1 frames in its window could be decoded" in miss and "'nv24'" in miss
    else:
        assert miss == ""


def test_corrupt_compressed_frame_is_counted(harness, tiny_visual_checkpoint):
    h = harness(model_dir=tiny_visual_checkpoint, captioner="cue").start()
    now = h.now()
    msg = CompressedImage(format="jpeg", data=b"\xff\xd8garbage")
    msg.header.stamp = sec_to_stamp(now - 0.5, Time)
    h.publish(CompressedImage, "image/compressed", msg)
    time.sleep(0.2)
    h.publish(Utterance, "utterance", utterance("hi", "ross", now - 1, now + 0.1))
    h.wait_for(1)
    h.settle()
    assert h.node._bad_frames == 1 and len(h.received) == 1


def jpeg_frame(k):
    ok, jpg = cv2.imencode(".jpg", np.full((48, 48, 3), 40 * k, np.uint8))
    return CompressedImage(format="jpeg", data=jpg.tobytes())


def yuyv_frame(k):  # a USB camera's YUYV frames, brightening
    return Image(height=8, width=8, encoding="yuyv", step=16, data=bytes([60 + 40 * k, 128] * 64))


@pytest.mark.parametrize("msg_type, topic, make", [(CompressedImage, "image/compressed", jpeg_frame),
                                                   (Image, "image", yuyv_frame)])
def test_good_frames_refine(harness, tiny_visual_checkpoint, msg_type, topic, make):
    h = harness(model_dir=tiny_visual_checkpoint, captioner="cue").start()
    now = h.now()
    for k in range(3):
        msg = make(k)
        msg.header.stamp = sec_to_stamp(now - 0.6 + 0.2 * k, Time)
        h.publish(msg_type, topic, msg)
        time.sleep(0.05)
    time.sleep(0.3)
    h.publish(Utterance, "utterance", utterance("hi", "ross", now - 1, now + 0.1))
    assert [m.refined for m in h.wait_for(2)] == [False, True]
    assert h.node._bad_frames == 0


def caption_window(h, recorder, msg_type, topic, msg) -> tuple[tuple[float, float], list[float], float]:
    """Frames at 5 Hz over the 6 s before now, then ``msg``: (its caption's window, the stamps of its frames, its
    answer's header stamp)."""
    now = h.now()
    for k in range(31):
        h.publish(Image, "image", image_msg(now - 6.0 + 0.2 * k, seed=k))
        time.sleep(0.04)
    h.settle()
    answered = len(h.received)
    h.publish(msg_type, topic, msg)
    fused = h.wait_for(answered + 2)[-1]
    assert fused.refined and len(recorder.windows) == answered // 2 + 1
    return recorder.windows[-1], recorder.stamps[-1], fused.header.stamp.sec + fused.header.stamp.nanosec * 1e-9


def test_a_transcript_without_stamps_is_captioned_from_when_its_words_were_said(harness, tiny_visual_checkpoint):
    """"I got the job!" takes 0.99 + 4 x 0.27 = 2.07 s to say (ddvlm_core.speech_timing). Its String transcript came
    at t (its answer's stamp): the ASR waited 0.5 s of silence (text_asr_endpoint_s) and decoded for 0.3 x 2.07 s
    (text_asr_rtf), so the words were said over [t - 3.191, t - 1.121], and the caption sees frames from then only,
    none of the last second. text_asr_rtf and text_window_s take effect at once; an Utterance with an end stamp only
    began its words' duration before it."""
    from rclpy.parameter import Parameter

    h = harness(model_dir=tiny_visual_checkpoint, captioner="cue", frames_per_window=4).start()
    recorder = h.node.pipeline.captioner = WindowCaptioner()
    (start, end), stamps, came = caption_window(h, recorder, String, "transcript", String(data="Ross: I got the job!"))
    assert (start, end) == (pytest.approx(came - 3.191, abs=1e-6), pytest.approx(came - 1.121, abs=1e-6))
    assert len(stamps) == 4 and all(start <= s <= end for s in stamps)
    h.node.set_parameters([Parameter("text_asr_rtf", value=1.0), Parameter("text_window_s", value=3.0)])
    (start, end), _, came = caption_window(h, recorder, String, "transcript", String(data="Rachel: No way!"))
    assert (start, end) == (pytest.approx(came - 5.03, abs=1e-6), pytest.approx(came - 2.03, abs=1e-6))
    h.node.set_parameters([Parameter("text_window_s", value=0.0)])
    ended = h.now() - 1.0
    said = utterance("Oh my God.", "ross", 0.0, ended)
    (start, end), _, _ = caption_window(h, recorder, Utterance, "utterance", said)
    assert (start, end) == (pytest.approx(ended - 1.8, abs=1e-6), pytest.approx(ended, abs=1e-6))


def test_a_whisper_ros_transcription_is_captioned_from_when_its_audio_says_its_words_were_said(
        harness, tiny_visual_checkpoint):
    """whisper_ros' Transcription: its audio lasted 2.5 s and transcribing it took 0.7 s. It came at t (its answer's
    stamp), so its audio ended at t - 0.7, its words 0.5 s of silence before (text_asr_endpoint_s): said over
    [t - 3.2, t - 1.2], whatever their number, by default_speaker. An audio_time that is no time (NaN): the window is
    estimated from the words, as for a String transcript ([t - 3.191, t - 1.121])."""
    import math

    from whisper_msgs.msg import Transcription

    h = harness(model_dir=tiny_visual_checkpoint, captioner="cue", frames_per_window=4).start()
    recorder = h.node.pipeline.captioner = WindowCaptioner()
    said = Transcription(text="I got the job!", audio_time=2.5, transcription_time=0.7)
    (start, end), stamps, came = caption_window(h, recorder, Transcription, "transcription", said)
    assert (start, end) == (pytest.approx(came - 3.2, abs=1e-6), pytest.approx(came - 1.2, abs=1e-6))
    assert len(stamps) == 4 and all(start <= s <= end for s in stamps)
    assert {m.speaker_id for m in h.received} == {h.node.p("default_speaker")}
    broken = Transcription(text="I got the job!", audio_time=math.nan, transcription_time=0.7)
    (start, end), _, came = caption_window(h, recorder, Transcription, "transcription", broken)
    assert (start, end) == (pytest.approx(came - 3.191, abs=1e-6), pytest.approx(came - 1.121, abs=1e-6))
    assert [m.utterance_id for m in h.received] == ["1", "1", "2", "2"]  # text, then fused answer, each
    values = {kv.key: kv.value for kv in h.node.diagnostic_status().values}  # the valid one: whisper's own RTF
    assert values["whisper_transcriptions"] == ("the latest 1: median audio 2.50 s, transcribed in 0.70 s (real-time "
                                                "factor 0.28)")


def test_a_transcript_without_stamps_is_captioned_from_the_speech_its_vad_heard(harness, tiny_visual_checkpoint):
    """voice_activity (std_msgs/Bool: respeaker_ros' is_speeching) went on and, 0.8 s later, off before "I got the
    job!" came: its caption's window is that speech, from the on to the off as the node timed them, not the window
    estimated from its words. What the robot says (robot_speech) takes none of the VAD's speech. The next
    transcript, with no fresh speech heard, gets the estimate ([t - 2.489, t - 0.959] for "No way!")."""
    from ddvlm_core.speech_timing import AsrTiming

    h = harness(model_dir=tiny_visual_checkpoint, captioner="cue", frames_per_window=4).start()
    recorder = h.node.pipeline.captioner = WindowCaptioner()
    vad = h.node._activity
    assert {kv.key: kv.value for kv in h.node.diagnostic_status().values}["voice_activity"] == (
        "/voice_activity: 0 transcript windows placed on the speech heard, 0 estimated from their words (no fresh "
        "speech heard); no VAD message yet (/voice_activity has no publisher)")  # a wrong remap shows
    h.vad_says(vad, True)
    time.sleep(0.8)
    h.vad_says(vad, False)
    [(on, off)] = [tuple(i) for i in vad.intervals]
    assert 0.8 <= off - on < 2.0
    answered = len(h.received)
    h.publish(String, "robot_speech", String(data="Did you get the job?"))  # context only: no answer, no window
    h.settle()
    assert len(h.received) == answered and [tuple(i) for i in vad.intervals] == [(on, off)]
    (start, end), stamps, came = caption_window(h, recorder, String, "transcript", String(data="Ross: I got the job!"))
    assert (start, end) == (on, off) and came - end > 1.0
    assert all(on <= s <= off for s in stamps) and stamps
    (start, end), _, came = caption_window(h, recorder, String, "transcript", String(data="Rachel: No way!"))
    assert (start, end) == tuple(pytest.approx(t, abs=1e-6) for t in AsrTiming().said("No way!", came))
    assert (start, end) == (pytest.approx(came - 2.489, abs=1e-6), pytest.approx(came - 0.959, abs=1e-6))
    values = {kv.key: kv.value for kv in h.node.diagnostic_status().values}
    assert values["voice_activity"] == ("/voice_activity: 1 transcript windows placed on the speech heard, 1 "
                                        "estimated from their words (no fresh speech heard)")


def test_what_the_vad_hears_while_the_robot_speaks_places_no_window(harness, tiny_visual_checkpoint):
    """robot_speaking (the /robot_speaking Bool of a robot's speech stack) is on while the VAD hears the robot; the
    robot stops while the VAD still hears speech (a person who spoke over its last words), which goes off 0.6 s later:
    the transcript is captioned from when the robot stopped to the VAD's off, not from the robot's voice."""
    from std_msgs.msg import Bool

    h = harness(model_dir=tiny_visual_checkpoint, captioner="cue", frames_per_window=4).start()
    recorder = h.node.pipeline.captioner = WindowCaptioner()
    vad = h.node._activity

    def robot(speaking):
        h.publish(Bool, "robot_speaking", Bool(data=speaking))
        deadline = time.monotonic() + 10
        while vad.robot_speaking != speaking and time.monotonic() < deadline:
            time.sleep(0.01)
        assert vad.robot_speaking == speaking

    robot(True)
    h.vad_says(vad, True)
    time.sleep(0.5)
    assert not vad.intervals  # the robot's voice
    robot(False)
    [(person, _)] = [tuple(i) for i in vad.intervals]
    time.sleep(0.6)
    h.vad_says(vad, False)
    [(on, off)] = [tuple(i) for i in vad.intervals]
    assert on == person and off - on >= 0.6
    (start, end), _, _ = caption_window(h, recorder, String, "transcript", String(data="Ross: Wait, what?"))
    assert (start, end) == (on, off)


def test_the_vad_is_read_only_with_a_captioner(harness, tiny_text_checkpoint):
    """Without a captioner no window is captioned: voice_activity is not subscribed, as the camera is not."""
    h = harness(model_dir=tiny_text_checkpoint).start()
    assert h.node._activity is None and "/voice_activity" not in {s.topic_name for s in h.node._subs}
    assert {kv.key: kv.value for kv in h.node.diagnostic_status().values}["voice_activity"] == ("not read: no "
                                                                                                "captioner")


def test_future_and_out_of_order_frame_stamps(harness, tiny_visual_checkpoint):
    h = harness(model_dir=tiny_visual_checkpoint, captioner="cue").start()
    now = h.now()
    h.publish(Image, "image", image_msg(now + 3600))  # an hour in the future
    time.sleep(0.1)
    for stamp in (now - 0.2, now - 0.8, now - 0.5):  # out of order
        h.publish(Image, "image", image_msg(stamp))
        time.sleep(0.1)
    time.sleep(0.3)
    stats = h.node.pipeline.stats
    assert stats.frames_dropped_future == 1 and stats.frames == 3
    stamps = [s for s, _ in h.node.pipeline.frames.window(now - 1, now)]
    assert stamps == sorted(stamps)


def test_windows_longer_than_the_frame_buffer_allows_are_diagnosed(harness, tiny_visual_checkpoint):
    """frame_buffer_s 1 s, utterances of 2 s: each window's first second had left the buffer when its transcript
    came. Each is still refined from the frames left; after three, /diagnostics says so (WARN) with the buffer that
    would have kept the latest whole."""
    h = harness(model_dir=tiny_visual_checkpoint, captioner="cue", frame_buffer_s=1.0).start()
    now = h.now()
    for k in range(11):  # now - 2.0 ... now at 5 Hz: the buffer holds the last second
        h.publish(Image, "image", image_msg(now - 2.0 + 0.2 * k, seed=k))
        time.sleep(0.05)
    h.settle()
    for k in range(3):
        h.publish(Utterance, "utterance", utterance(f"A long sentence {k}.", "ross", now - 2.0, now, utt_id=f"u{k}"))
    assert [m.refined for m in h.wait_for(6)].count(True) == 3
    h.settle()
    status = h.node.diagnostic_status()
    values = {kv.key: kv.value for kv in status.values}
    assert status.level == b"\x01" and status.message == "utterance windows cut short (see windows_cut_short)"
    assert re.fullmatch(r"3 utterance windows began before the oldest buffered frame, 3 of the latest 3 \(the "
                        r"latest: its first 0\.\d s of 2\.0 s; frame_buffer_s 2 s would have kept it\)",
                        values["windows_cut_short"]), values["windows_cut_short"]


def test_frames_on_another_clock_are_diagnosed_and_frames_on_the_nodes_clock_refine(harness, tiny_visual_checkpoint):
    h = harness(model_dir=tiny_visual_checkpoint, captioner="cue").start()
    now = h.now()
    for k in range(3):  # `ros2 bag play` without --clock: the bag's stamps, an hour before the node's clock
        h.publish(Image, "image", image_msg(now - 3600 + 0.2 * k, seed=k))
        time.sleep(0.1)
    h.publish(String, "transcript", String(data="Ross: can you see me?"))
    h.wait_for(1)
    h.settle()
    status = h.node.diagnostic_status()
    values = {kv.key: kv.value for kv in status.values}
    assert [m.modalities for m in h.received] == ["text"] and values["windows_without_frames"] == "1"
    assert status.level == b"\x01" and "frame_window_miss" in status.message
    assert "different clocks" in values["frame_window_miss"] and "use_sim_time:=true" in values["frame_window_miss"]
    assert -3601 < float(values["frame_stamp_offset_s"]) < -3599
    now = h.now()
    for k in range(10):  # the camera on the node's clock, over the 2.5 s before now: when the words were said
        h.publish(Image, "image", image_msg(now - 2.5 + 0.25 * k, seed=k))
        time.sleep(0.05)
    h.publish(String, "transcript", String(data="Ross: and now?"))
    assert [m.refined for m in h.wait_for(3)] == [False, False, True]
    status = h.node.diagnostic_status()
    values = {kv.key: kv.value for kv in status.values}
    assert status.level == b"\x00" and values["frame_window_miss"] == "" and values["windows_without_frames"] == "1"
    assert abs(float(values["frame_stamp_offset_s"])) < 1.0


def test_sim_time_without_a_clock_is_a_warning_until_clock_comes(harness, tiny_text_checkpoint):
    from rosgraph_msgs.msg import Clock

    h = harness(model_dir=tiny_text_checkpoint, use_sim_time=True).start()
    status = h.node.diagnostic_status()
    values = {kv.key: kv.value for kv in status.values}
    assert status.level == b"\x01" and status.message == "no /clock (use_sim_time: true)"
    assert "ros2 bag play --clock" in values["clock"]
    h.publish(Clock, "/clock", Clock(clock=sec_to_stamp(1700000000.5, Time)))
    deadline = time.monotonic() + 15
    while h.node.get_clock().now().nanoseconds == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    status = h.node.diagnostic_status()
    assert status.level == b"\x00" and "clock" not in {kv.key for kv in status.values}
    assert abs(h.now() - 1700000000.5) < 1e-3


def test_the_pipeline_logs_at_every_severity_in_any_order(harness, tiny_text_checkpoint):
    """rclpy's logger keys its context by call site and raises if one site changes severity: the worker
    thread that logged "info" and then "error" through one helper died of it."""
    h = harness(model_dir=tiny_text_checkpoint)
    for level in ("warn", "info", "error", "info", "warn"):
        h.node._log(level, f"a {level} line")


def test_a_bag_played_again_time_going_back_starts_frames_and_contexts_afresh(harness, tiny_visual_checkpoint):
    """`ros2 bag play --clock` twice (or --loop) under use_sim_time: ROS time jumps back. The frames and
    dialogue contexts of the first play belong to a timeline that will not come again."""
    from rosgraph_msgs.msg import Clock

    h = harness(model_dir=tiny_visual_checkpoint, captioner="cue", use_sim_time=True).start()

    def play(t0: float) -> list:
        h.publish(Clock, "/clock", Clock(clock=sec_to_stamp(t0, Time)))
        deadline = time.monotonic() + 15
        while abs(h.now() - t0) > 1e-3 and time.monotonic() < deadline:
            time.sleep(0.02)
        for k in range(3):
            h.publish(Image, "image", image_msg(t0 + 0.2 * k, seed=k))
            time.sleep(0.1)
        h.publish(Clock, "/clock", Clock(clock=sec_to_stamp(t0 + 1.0, Time)))
        n = len(h.received)
        for speaker, text in [("ross", "Can you see me?"), ("rachel", "Yes!")]:
            h.publish(Utterance, "utterance", utterance(text, speaker, t0, t0 + 0.9, conv="dia1"))
        h.wait_for(n + 4)
        h.settle()
        return h.received[n:]

    first = play(1000.0)
    again = play(1000.0 - 60)  # the bag from its start: a minute back
    for answers in (first, again):
        assert sorted((m.speaker_token, m.refined) for m in answers) == [
            ("<s1>", False), ("<s1>", True), ("<s2>", False), ("<s2>", True)]

    def text_answers(answers):
        return [list(m.probabilities) for m in answers if not m.refined]

    assert text_answers(again) == text_answers(first)  # the same prompts: the first play is not in the context
    values = {kv.key: kv.value for kv in h.node.diagnostic_status().values}
    assert values["time_jumps_back"] == "1" and values["windows_without_frames"] == "0"
    assert values["speaker_tokens_reused"] == "0"  # two speakers: each keeps a token of their own


def test_a_bag_played_again_places_its_transcripts_on_the_speech_its_vad_heard_again(harness, tiny_visual_checkpoint):
    """Under use_sim_time, the VAD heard [1000.0, 1000.8] and the transcript after it was placed there; the bag is
    played again, a minute back: its VAD's speech at 940 s places the same transcript again. Before, the speech of
    the first play, later than any of the second, kept the second play's from counting as fresh: estimated."""
    from rosgraph_msgs.msg import Clock

    h = harness(model_dir=tiny_visual_checkpoint, captioner="cue", use_sim_time=True).start()

    def at(t):
        h.publish(Clock, "/clock", Clock(clock=sec_to_stamp(t, Time)))
        deadline = time.monotonic() + 15
        while abs(h.now() - t) > 1e-3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert abs(h.now() - t) <= 1e-3

    def play(t0):
        at(t0)
        h.vad_says(h.node._activity, True)
        at(t0 + 0.8)
        h.vad_says(h.node._activity, False)
        at(t0 + 1.5)
        placed = dict(h.node._windows_by)
        h.publish(String, "transcript", String(data="Ross: I got the job!"))
        deadline = time.monotonic() + 10
        while h.node._windows_by == placed and time.monotonic() < deadline:
            time.sleep(0.01)
        return {k: h.node._windows_by[k] - placed[k] for k in placed}

    assert play(1000.0) == {"vad": 1, "estimate": 0}
    assert play(1000.0 - 60) == {"vad": 1, "estimate": 0}


def test_idle_timeout_counts_ros_time_so_a_paused_bag_keeps_its_contexts(harness, tiny_text_checkpoint):
    """Under use_sim_time a conversation's silence is measured on the bag's clock: pausing `ros2 bag play`
    (or replaying it faster or slower) must not change which utterances share a context."""
    from rosgraph_msgs.msg import Clock

    h = harness(model_dir=tiny_text_checkpoint, use_sim_time=True, idle_timeout_s=1.0).start()

    def at(t: float, text: str) -> EmotionDistribution:
        h.publish(Clock, "/clock", Clock(clock=sec_to_stamp(t, Time)))
        deadline = time.monotonic() + 15
        while abs(h.now() - t) > 1e-3 and time.monotonic() < deadline:
            time.sleep(0.02)
        n = len(h.received)
        h.publish(String, "transcript", String(data=text))
        return h.wait_for(n + 1)[-1]

    assert at(1000.0, "Ross: hi").speaker_token == "<s1>"
    time.sleep(1.5)  # the bag is paused: its clock stands still
    assert at(1000.0, "Rachel: still here").speaker_token == "<s2>"  # the same conversation
    assert at(1000.5, "Joey: yo").speaker_token == "<s3>"
    assert at(1002.0, "Monica: hello?").speaker_token == "<s1>"  # 1.5 s of bag time in silence: a new context
    assert h.node.pipeline.stats.conversations_reset == 1


def test_utterances_that_are_never_final_are_a_warning_that_names_is_final(harness, tiny_text_checkpoint,
                                                                           monkeypatch):
    from ddvlm_ros import emotion_node

    monkeypatch.setattr(emotion_node, "NO_FINAL_WARN_S", 0.3)  # 30 s on a robot
    h = harness(model_dir=tiny_text_checkpoint).start()
    for k in range(4):  # an ASR node that leaves Utterance.is_final at its default, false
        h.publish(Utterance, "utterance", utterance(f"hello there {k}", final=False))
        time.sleep(0.15)
    h.settle()
    status = h.node.diagnostic_status()
    values = {kv.key: kv.value for kv in status.values}
    assert h.received == [] and values["utterance_msgs"] == "0 final, 4 partial"
    assert status.level == b"\x01" and status.message == "no final utterance (is_final)"
    assert "none with is_final true" in values["no_final_utterance"]
    h.publish(Utterance, "utterance", utterance("hello there", final=True))
    assert len(h.wait_for(1)) == 1
    status = h.node.diagnostic_status()
    assert status.level == b"\x00" and "no_final_utterance" not in {kv.key for kv in status.values}


def test_an_asrs_json_results_on_transcript_are_read_and_its_partial_results_skipped(harness, tiny_text_checkpoint,
                                                                                     monkeypatch):
    """Vosk nodes publish Result() / PartialResult() as they are: JSON objects. A final result's text is the
    utterance; partial results and empty results (silence) are no utterance; a JSON object with no transcript
    field is refused and counted. Partial results only, for NO_FINAL_WARN_S: a warning (partial topic remapped)."""
    from ddvlm_ros import emotion_node

    monkeypatch.setattr(emotion_node, "NO_FINAL_WARN_S", 0.3)  # 30 s on a robot
    h = harness(model_dir=tiny_text_checkpoint).start()
    for data in ['{\n  "partial" : "i can"\n}', '{\n  "partial" : "i can\'t"\n}', '{"partial" : ""}']:
        h.publish(String, "transcript", String(data=data))
    time.sleep(0.4)
    h.settle()
    status = h.node.diagnostic_status()
    assert h.received == [] and status.level == b"\x01"
    assert status.message == "transcripts are partial results only (see json_transcripts)"
    for data in ['{\n  "text" : "i can\'t believe it"\n}', '{"text" : ""}', '{"words": ["hi"]}', "Ann: Okay."]:
        h.publish(String, "transcript", String(data=data))
    assert [m.speaker_id for m in h.wait_for(2)] == ["", "Ann"]
    h.settle()
    turns = h.node.pipeline.conversations["default"].dialogue.turns
    assert [t.text for t in turns] == ["i can't believe it", "Okay."]
    status = h.node.diagnostic_status()
    values = {kv.key: kv.value for kv in status.values}
    assert status.level == b"\x00"
    assert values["json_transcripts"] == ("1 final results read from JSON (field 'text' the latest), 3 partial results "
                                          "skipped, 1 empty, 1 without a transcript field")


def test_the_asrs_confidence_comes_from_utterances_and_json_results_and_its_threshold_is_set_at_once(
        harness, tiny_text_checkpoint):
    """Utterance.confidence and a JSON result's (Vosk's words' conf) reach the answer as transcript_confidence; below
    asr_min_confidence (0.5 by default) it is flagged; ros2 param set moves the threshold at once and refuses one
    above 1."""
    h = harness(model_dir=tiny_text_checkpoint).start()
    h.publish(Utterance, "utterance", Utterance(speaker_id="ann", text="I won!", is_final=True, confidence=0.25))
    h.wait_for(1)
    h.publish(String, "transcript", String(data='{"result": [{"conf": 0.9, "word": "great"}, {"conf": 0.7, '
                                                '"word": "news"}], "text": "great news"}'))
    h.wait_for(2)
    assert [round(m.transcript_confidence, 3) for m in h.received] == [0.25, 0.8]
    assert [("transcript-low-confidence" in m.flags) for m in h.received] == [True, False]
    assert h.set_parameters(asr_min_confidence=0.85) == [True]
    assert h.set_parameters(asr_min_confidence=1.5) == [False]
    h.publish(String, "transcript", String(data='{"text": "Oh no.", "confidence": 0.8}'))
    assert "transcript-low-confidence" in h.wait_for(3)[-1].flags


def test_no_camera_at_all_gives_text_only_results(harness, tiny_visual_checkpoint):
    h = harness(model_dir=tiny_visual_checkpoint, captioner="cue").start()
    h.publish(String, "transcript", String(data="Ross: is the camera on?"))
    h.wait_for(1)
    h.settle()
    assert len(h.received) == 1 and h.received[0].modalities == "text"


class ExplodingCaptioner:
    name = "exploding"

    def caption(self, frames, window=None):
        raise RuntimeError("GPU fell off")


class SlowCaptioner:
    name = "slow"

    def caption(self, frames, window=None):
        time.sleep(1.5)
        return Caption("The head is turning left.", self.name, len(frames))


@pytest.mark.parametrize("captioner, counter", [(ExplodingCaptioner(), "caption_errors"),
                                                (SlowCaptioner(), "caption_timeouts")])
def test_captioner_crash_or_timeout_never_stops_text_results(harness, tiny_visual_checkpoint, captioner, counter):
    h = harness(model_dir=tiny_visual_checkpoint, captioner="cue", caption_timeout_s=0.5).start()
    h.node.pipeline.captioner = captioner
    now = h.now()
    h.publish(Image, "image", image_msg(now - 0.5))
    time.sleep(0.2)
    t0 = time.monotonic()
    for k in range(3):
        h.publish(Utterance, "utterance", utterance(f"line {k}", "ross", now - 1, now + 0.1))
    assert len(h.wait_for(3)) == 3
    assert time.monotonic() - t0 < 1.5  # text results did not wait for the captioner
    time.sleep(2.0 if counter == "caption_timeouts" else 0.3)
    h.settle()
    assert getattr(h.node.pipeline.stats, counter) >= 1
    assert all(not m.refined for m in h.received)
    assert_alive(h, 3)


def test_burst_of_100_utterances_is_answered_exactly_once_each(harness, tiny_text_checkpoint):
    h = harness(model_dir=tiny_text_checkpoint).start()
    for k in range(100):
        h.publish(Utterance, "utterance", utterance(f"utterance number {k}", f"s{k % 3}", utt_id=str(k)))
    got = h.wait_for(100, timeout=60)
    h.settle()
    assert sorted(int(m.utterance_id) for m in h.received) == list(range(100))
    assert [m.speaker_token for m in got[:4]] == ["<s1>", "<s2>", "<s3>", "<s1>"]


def test_missing_model_dir_fails_configure_clearly_and_the_node_lives(harness, tmp_path):
    h = harness(model_dir=str(tmp_path / "nope"))
    h.node.trigger_configure()
    assert "does not exist" in h.node.load_error
    status = h.node.diagnostic_status()
    assert status.level == b"\x02" and "configure failed" in status.message


def test_corrupt_checkpoint_fails_configure_with_the_reason(harness, tmp_path, tiny_text_checkpoint):
    import shutil

    bad = tmp_path / "ckpt"
    shutil.copytree(tiny_text_checkpoint, bad)
    head = bad / "text_head.safetensors"
    head.write_bytes(head.read_bytes()[:-4] + b"\x00\x00\x00\x00")
    h = harness(model_dir=str(bad))
    h.node.trigger_configure()
    assert "sha256 mismatch" in h.node.load_error
    manifest = json.loads((bad / "manifest.json").read_text())
    assert manifest["modules"]["text_head"]["file"] == "text_head.safetensors"


def test_a_captioner_folder_that_cannot_load_fails_configure_with_the_reason_and_the_node_lives(
        harness, tmp_path, tiny_visual_checkpoint, tiny_qwen_dir):
    """Qwen2.5-VL weights cut short on their way to the robot raise safetensors' own error, which configure
    reports like any other (the node does not die); with the weights whole the same node configures."""
    import shutil

    from rclpy.parameter import Parameter

    qwen = tmp_path / "qwen"
    shutil.copytree(tiny_qwen_dir, qwen)
    weights = next(qwen.glob("*.safetensors"))
    whole = weights.read_bytes()
    weights.write_bytes(whole[:1000])
    h = harness(model_dir=tiny_visual_checkpoint, captioner="qwen", captioner_model_dir=str(qwen))
    h.node.trigger_configure()
    assert h.node.load_error.startswith("SafetensorError") and h.node.diagnostic_status().level == b"\x02"
    (qwen / "chat_template.jinja").unlink()
    (qwen / "chat_template.json").write_text('{"template": "not the key"}')
    weights.write_bytes(whole)
    h.node.trigger_configure()
    assert "chat_template.json: no 'chat_template' text in it" in h.node.load_error
    (qwen / "chat_template.json").unlink()
    h.node.set_parameters([Parameter("captioner", value="cue")])
    h.start()
    h.publish(String, "transcript", String(data="Ross: Hi!"))
    assert h.wait_for(1)[0].top_label in LABELS


def test_start_after_end_and_unknown_speaker(harness, tiny_text_checkpoint):
    h = harness(model_dir=tiny_text_checkpoint).start()
    h.publish(Utterance, "utterance", utterance("Who said that?", "", 20.0, 10.0))
    m = h.wait_for(1)[0]
    assert m.speaker_token == "<s0>" and m.speaker_id == ""


def test_silent_inputs_are_reported_with_what_the_graph_says_about_them(harness, tiny_visual_checkpoint):
    import rclpy

    h = harness(model_dir=tiny_visual_checkpoint, captioner="cue", input_timeout_s=0.5).start()
    context = rclpy.Context()  # another process's node: a participant of its own
    rclpy.init(context=context)
    camera = rclpy.create_node("wrongly_remapped_camera", context=context)
    try:
        camera.create_publisher(CompressedImage, "image", 1)  # a compressed stream remapped onto `image`
        camera.create_publisher(CompressedImage, "image/compressed", 1)  # a camera that stalled
        wrong = camera.create_publisher(Utterance, "transcript", 1)  # an ASR's Utterances remapped onto `transcript`
        deadline = time.monotonic() + 10  # the warnings, and the camera's publishers discovered (a busy machine
        while time.monotonic() < deadline and (  # can take seconds: the status would say "no node publishes it",
                h.node._silence_warned != {"image", "image/compressed", "transcript"}  # and a check that ran before
                or not h.node.count_publishers("image")  # the discovery names all 5 topics until the next one)
                or not h.node.count_publishers("transcript") or not h.node.count_publishers("image/compressed")):
            time.sleep(0.1)
        status = h.node.diagnostic_status()
        values = {v.key: v.value for v in status.values}
        why = {k[len("silent_why["):-1]: v for k, v in values.items() if k.startswith("silent_why[")}
        camera.destroy_publisher(wrong)
        camera.create_publisher(String, "transcript", 1)  # the ASR, rightly wired, on the graph: nobody speaks yet,
        deadline = time.monotonic() + 10  # which is no fault; the camera still is
        while time.monotonic() < deadline and h.node._silence_warned != {"image", "image/compressed"}:
            time.sleep(0.1)
        warned_with_an_asr = set(h.node._silence_warned)
    finally:
        camera.destroy_node()
        rclpy.shutdown(context=context)
    assert status.level == b"\x01" and "no input on" in status.message
    ages = {k: float(v) for k, v in values.items() if k.startswith("input_age_s")}
    assert ages and all(age >= 0.5 for age in ages.values())
    assert why["image"] == "its publishers send sensor_msgs/msg/CompressedImage; this input takes sensor_msgs/msg/Image"
    assert why["image/compressed"] == ("1 publisher(s) of sensor_msgs/msg/CompressedImage, nothing received (they "
                                       "are idle, or their QoS: see incompatible_qos)")
    assert why["transcript"] == "its publishers send ddvlm_msgs/msg/Utterance; this input takes std_msgs/msg/String"
    assert set(why) == {"image", "image/compressed", "transcript"}  # not the alternatives no node publishes
    assert warned_with_an_asr == {"image", "image/compressed"}
    assert h.set_parameters(input_timeout_s=0) == [True]  # off, on a running node: the warnings go
    deadline = time.monotonic() + 15
    while h.node._silence_warned and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "no input on" not in h.node.diagnostic_status().message


def test_an_optional_input_whose_publishers_send_another_type_is_a_warning(harness, tiny_visual_checkpoint):
    """voice_activity remapped onto a VAD that publishes its speech probability (std_msgs/Float32), and what the robot
    says (robot_speech) onto the robot's speaking Bool: DDS matches neither, and as most robots publish no VAD and no
    robot speech, silence would never tell. Each is logged once, named in inputs_not_read and in voice_activity, and
    the status is a WARN until a publisher of the right type replaces it."""
    import rclpy
    from std_msgs.msg import Bool, Float32

    h = harness(model_dir=tiny_visual_checkpoint, captioner="cue", node_name="mistyped_inputs_node")
    logged = rosout_listener(h)
    h.start()
    assert {kv.key: kv.value for kv in h.node.diagnostic_status().values}["inputs_not_read"] == "none"
    context = rclpy.Context()  # another process's node: a participant of its own
    rclpy.init(context=context)
    robot = rclpy.create_node("wrongly_remapped_vad", context=context)
    try:
        probability = robot.create_publisher(Float32, "voice_activity", 1)
        robot.create_publisher(Bool, "robot_speech", 1)
        deadline = time.monotonic() + 15  # discovery, then the check each second
        while time.monotonic() < deadline and set(h.node._mistyped) != {"voice_activity", "robot_speech"}:
            time.sleep(0.1)
        status = h.node.diagnostic_status()
        values = {kv.key: kv.value for kv in status.values}
        robot.destroy_publisher(probability)
        robot.create_publisher(Bool, "voice_activity", 1)  # the VAD's Bool: read
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and set(h.node._mistyped) != {"robot_speech"}:
            time.sleep(0.1)
        mistyped_after = dict(h.node._mistyped)
    finally:
        robot.destroy_node()
        rclpy.shutdown(context=context)
    assert status.level == b"\x01" and status.message == "publishers of another type (see inputs_not_read)"
    assert values["inputs_not_read"] == (
        "/robot_speech: its publishers send std_msgs/msg/Bool; this input takes std_msgs/msg/String; "
        "/voice_activity: its publishers send std_msgs/msg/Float32; this input takes std_msgs/msg/Bool")
    assert values["voice_activity"].endswith(
        "; no VAD message yet (/voice_activity is not read: its publishers send std_msgs/msg/Float32; this input "
        "takes std_msgs/msg/Bool)")
    assert logged_line(logged, "/voice_activity is not read") == (
        "/voice_activity is not read: its publishers send std_msgs/msg/Float32; this input takes std_msgs/msg/Bool")
    assert sum(m.msg.startswith("/voice_activity is not read") for m in logged) == 1  # once, not each second
    assert mistyped_after == {
        "robot_speech": "its publishers send std_msgs/msg/Bool; this input takes std_msgs/msg/String"}
    deadline = time.monotonic() + 15  # the robot's node gone: nothing of another type is left
    while time.monotonic() < deadline and h.node._mistyped:
        time.sleep(0.1)
    assert h.node.diagnostic_status().message != "publishers of another type (see inputs_not_read)"


def test_a_peer_whose_qos_cannot_match_is_named_with_its_topic_and_node(harness, tiny_visual_checkpoint):
    """A camera driver publishing best effort to a node that reads the camera reliably, an ASR publishing best
    effort to the reliable transcript subscription, and a behaviour node asking /emotion for transient-local
    durability: DDS matches none of these pairs, so nothing passes. The node names each topic, peer node and policy
    in a WARN (once), in incompatible_qos and in the camera's silent_why; they go with the peers. Before, rclpy's
    QoS event said "incompatible QoS with a peer (policy 2)", naming neither the topic nor the peer."""
    import rclpy
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    h = harness(model_dir=tiny_visual_checkpoint, captioner="cue", image_qos_reliability="reliable",
                input_timeout_s=0.5, node_name="qos_checked_node")
    logged = rosout_listener(h)
    h.start()
    context = rclpy.Context()  # another process's nodes: a participant of its own
    rclpy.init(context=context)
    robot = rclpy.create_node("robot_drivers", context=context)
    best_effort = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
    try:
        robot.create_publisher(Image, "image", best_effort)
        robot.create_publisher(String, "transcript", best_effort)
        robot.create_subscription(EmotionDistribution, "emotion", lambda m: None,
                                  QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        deadline = time.monotonic() + 15  # discovery, then the check each second
        while time.monotonic() < deadline and (set(h.node._qos_mismatch) != {"/image", "/transcript", "/emotion"}
                                               or "image" not in h.node._silence_warned):
            time.sleep(0.1)
        values = {kv.key: kv.value for kv in h.node.diagnostic_status().values}
    finally:
        robot.destroy_node()
        rclpy.shutdown(context=context)
    assert values["incompatible_qos"] == (
        "/emotion: /robot_drivers (subscriber): volatile publisher and transient local subscription; "
        "/image: /robot_drivers (publisher): best effort publisher and reliable subscription; "
        "/transcript: /robot_drivers (publisher): best effort publisher and reliable subscription")
    assert values["silent_why[image]"] == (
        "1 publisher(s) of sensor_msgs/msg/Image, nothing received (incompatible QoS: /robot_drivers (publisher): "
        "best effort publisher and reliable subscription)")
    assert logged_line(logged, "incompatible QoS on /transcript") == (
        "incompatible QoS on /transcript: /robot_drivers (publisher): best effort publisher and reliable "
        "subscription; nothing passes between them (set transcript_qos_reliability, or the peer's QoS, to match)")
    assert logged_line(logged, "incompatible QoS on /emotion").endswith(
        "nothing passes between them (set the peer's QoS to match)")  # no parameter sets /emotion's durability
    assert sum(m.msg.startswith("incompatible QoS on /transcript") for m in logged) == 1  # once, not each second
    deadline = time.monotonic() + 15  # the peers gone: nothing is left to match
    while time.monotonic() < deadline and h.node._qos_mismatch:
        time.sleep(0.1)
    assert {kv.key: kv.value for kv in h.node.diagnostic_status().values}["incompatible_qos"] == "none"


def test_an_unused_alternative_input_is_not_reported_silent(harness, tiny_text_checkpoint):
    """The usual wiring: an ASR on transcript, nothing on utterance, and no captioner, so that the camera topics are
    not needed. Before, utterance, image and image/compressed were each reported silent (WARN) for ever."""
    h = harness(model_dir=tiny_text_checkpoint, input_timeout_s=0.5).start()
    for k in range(8):
        h.publish(String, "transcript", String(data=f"Ross: line {k}"))
        time.sleep(0.2)
    h.wait_for(8)
    assert h.node._silence_warned == set()
    assert {kv.key: kv.value for kv in h.node.diagnostic_status().values}["whisper_transcriptions"] == "none yet"
    assert "no input on" not in h.node.diagnostic_status().message
    time.sleep(2.0)  # nobody speaks, four times input_timeout_s: no fault while the ASR is on the graph
    assert h.node._silence_warned == set() and "no input on" not in h.node.diagnostic_status().message
    h.client.destroy_publisher(h._pubs.pop("transcript"))  # the ASR died: now the transcripts are missed, on the
    deadline = time.monotonic() + 15  # topic it used (not utterance and transcription, which nobody meant to use;
    while not h.node._silence_warned and time.monotonic() < deadline:  # nor the camera, without a captioner)
        time.sleep(0.1)
    time.sleep(1.5)  # the silence checks after the first (each second)
    assert h.node._silence_warned == {"transcript"}
    status = h.node.diagnostic_status()
    values = {kv.key: kv.value for kv in status.values}
    assert status.message == "no input on transcript"
    assert values["silent_why[transcript]"] == "no node publishes it (check the remapping)"


def test_slow_answers_are_the_warning_the_status_gives_first(harness, tiny_text_checkpoint, monkeypatch):
    """A p90 latency above SLOW_LATENCY_MS is a WARN whose message says so, before the ASR's faults (here an ASR
    that does not punctuate); latency_p50_ms and latency_p90_ms hold the answers' latencies."""
    h = harness(model_dir=tiny_text_checkpoint).start()
    for k in range(12):
        h.publish(String, "transcript", String(data=f"ross: i said line {k} without punctuation"))
    h.wait_for(12)
    status = h.node.diagnostic_status()
    values = {kv.key: kv.value for kv in status.values}
    latencies = sorted(h.node.pipeline.stats.latencies_ms)
    assert float(values["latency_p90_ms"]) == round(latencies[int(0.9 * len(latencies))], 1) > 0
    assert float(values["latency_p50_ms"]) == round(latencies[len(latencies) // 2], 1)
    assert status.message == "transcripts without punctuation (see transcripts_unpunctuated)"  # fast enough
    p90 = latencies[int(0.9 * len(latencies))]
    monkeypatch.setattr("ddvlm_ros.emotion_node.SLOW_LATENCY_MS", p90 - 1e-3)
    status = h.node.diagnostic_status()
    assert status.level == b"\x01" and status.message == f"slow: p90 latency {p90:.0f} ms"


def test_one_slow_answer_among_few_is_not_called_slow(harness, tiny_text_checkpoint, monkeypatch):
    """The p90 of 10 or fewer answers is the slowest one: a single slow answer (a long prompt, the machine busy for
    a moment) is no WARN, nor does it hide the status's other faults; a second one is. The README's troubleshooting
    row says so."""
    import ddvlm_ros.emotion_node as node

    monkeypatch.undo()  # the threshold as shipped (no_slow_warning raised it), for the README's words
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert node.SLOW_MIN_ANSWERS == 2 and f"is above {node.SLOW_LATENCY_MS:.0f} ms, and two answers at least" in readme
    h = harness(model_dir=tiny_text_checkpoint).start()
    for k in range(6):
        h.publish(String, "transcript", String(data=f"Ross: I said line {k}."))
    h.wait_for(6)
    h.settle()
    latencies = sorted(h.node.pipeline.stats.latencies_ms)
    assert len(latencies) == 6 and latencies[-2] < latencies[-1]
    monkeypatch.setattr("ddvlm_ros.emotion_node.SLOW_LATENCY_MS", (latencies[-2] + latencies[-1]) / 2)
    status = h.node.diagnostic_status()
    values = {kv.key: kv.value for kv in status.values}
    assert float(values["latency_p90_ms"]) == round(latencies[-1], 1)  # the slowest, as the values still say
    assert status.level == b"\x00" and status.message == "running"
    monkeypatch.setattr("ddvlm_ros.emotion_node.SLOW_LATENCY_MS", (latencies[-3] + latencies[-2]) / 2)
    status = h.node.diagnostic_status()
    assert status.level == b"\x01" and status.message == f"slow: p90 latency {latencies[-1]:.0f} ms"


@pytest.mark.parametrize("captioner", ["none", "cue"])  # cue: asked for, ignored (no visual branch to read it)
def test_a_text_only_node_leaves_the_camera_unsubscribed_and_logs_what_it_reads(harness, tiny_text_checkpoint,
                                                                                captioner):
    """Without a captioner the answers come from text alone: the camera topics get no subscription (a camera stream
    taken into Python and buffered for nothing; before, 92 MB of frames at 640x480 and 5 Hz), and the log at activate
    names the topics the node reads, remaps applied, and that the camera is left alone."""
    h = harness(model_dir=tiny_text_checkpoint, captioner=captioner, transcript_topic="/asr/text",
                node_name=f"emotion_text_only_{captioner}_{time.time_ns()}")
    logged = rosout_listener(h)
    h.start()
    assert h.client.count_subscribers("/image") == 0 and h.client.count_subscribers("/image/compressed") == 0
    assert h.client.count_subscribers("/asr/text") == 1
    line = logged_line(logged, "active: ")
    assert line.startswith("active: reading /asr/text (std_msgs/msg/String), /utterance (ddvlm_msgs/msg/Utterance)")
    assert line.endswith("; camera not subscribed (no captioner: answers from text alone); answers on /emotion")
    h.publish(String, "/asr/text", String(data="Ross: I got the job!"))
    assert len(h.wait_for(1)) == 1
    values = {kv.key: kv.value for kv in h.node.diagnostic_status().values}
    assert values["camera"] == "not subscribed: no captioner"
    assert not any(k.startswith("input_age_s[image") for k in values)


def test_a_node_with_a_captioner_subscribes_the_camera_and_logs_it(harness, tiny_visual_checkpoint):
    h = harness(model_dir=tiny_visual_checkpoint, captioner="cue", image_topic="/cam/raw",
                node_name=f"emotion_captioning_{time.time_ns()}")
    logged = rosout_listener(h)
    h.start()
    assert h.client.count_subscribers("/cam/raw") == 1 and h.client.count_subscribers("/image/compressed") == 1
    line = logged_line(logged, "active: ")
    assert "/cam/raw (sensor_msgs/msg/Image), /image/compressed (sensor_msgs/msg/CompressedImage)" in line, line
    assert "camera not subscribed" not in line and line.endswith("; answers on /emotion")
    values = {kv.key: kv.value for kv in h.node.diagnostic_status().values}
    assert values["camera"] == "/cam/raw, /image/compressed"


def test_quantized_node_answers_with_the_chosen_woq_kernel(harness, tiny_text_checkpoint):
    from ddvlm_core.quantization import Int8WeightOnlyLinear, cpu_bf16_units

    h = harness(model_dir=tiny_text_checkpoint, quantized=True, woq_kernel="decompress").start()
    layers = [m for m in h.node.recognizer.model.modules() if isinstance(m, Int8WeightOnlyLinear)]
    assert layers and all(m.config.kernel == "decompress" for m in layers)
    values = {kv.key: kv.value for kv in h.node.diagnostic_status().values}
    native_bf16 = bool(cpu_bf16_units())  # decompress computes in bf16 only where the CPU has bf16 units
    assert values["quantization"] == f"woq-int8 (decompress, {'bfloat16' if native_bf16 else 'float32'} activations)"
    h.publish(String, "transcript", String(data="Ross: I got the job!"))
    m = h.wait_for(1)[0]
    assert sum(m.probabilities) == pytest.approx(1, abs=1e-5) and m.top_label in LABELS


def test_compiled_quantized_node_compiles_at_activate_and_answers_like_the_eager_one(harness, tiny_text_checkpoint):
    eager = harness(model_dir=tiny_text_checkpoint, quantized=True, woq_kernel="decompress").start()
    eager.publish(String, "transcript", String(data="Ross: I got the job!"))
    expected = eager.wait_for(1)[0]
    eager.close()  # one node on /transcript and /emotion at a time
    h = harness(model_dir=tiny_text_checkpoint, quantized=True, woq_kernel="decompress", compile=True,
                cpu_threads=3).start()
    values = {kv.key: kv.value for kv in h.node.diagnostic_status().values}
    # compiled on the inference worker, with its 3 threads (inductor bakes the count into its CPU kernels)
    assert values["compiled"].startswith("inductor default on cpu, 3 threads") and values["load_error"] == ""
    assert h.node.recognizer.model.text.backbone._compiled_call_impl is not None  # compiled before the first utterance
    h.publish(String, "transcript", String(data="Ross: I got the job!"))
    m = h.wait_for(1)[0]
    assert max(abs(a - b) for a, b in zip(m.probabilities, expected.probabilities)) < 2e-3


def test_cudagraphs_compile_mode_needs_no_inductor_and_answers_like_the_eager_node(harness, tiny_text_checkpoint):
    eager = harness(model_dir=tiny_text_checkpoint, quantized=True, woq_kernel="dequant").start()
    eager.publish(String, "transcript", String(data="Ross: I got the job!"))
    expected = eager.wait_for(1)[0]
    eager.close()
    h = harness(model_dir=tiny_text_checkpoint, quantized=True, woq_kernel="dequant", compile=True,
                compile_mode="cudagraphs").start()
    values = {kv.key: kv.value for kv in h.node.diagnostic_status().values}
    assert values["compiled"].startswith("dynamo cudagraphs (no inductor) on cpu") and values["load_error"] == ""
    assert values["compiled"].endswith("; no CUDA graphs on cpu (they are recorded on a GPU only)")
    h.publish(String, "transcript", String(data="Ross: I got the job!"))
    m = h.wait_for(1)[0]
    assert max(abs(a - b) for a, b in zip(m.probabilities, expected.probabilities)) < 1e-5


def test_a_compiler_failure_leaves_the_node_inactive_with_the_reason_and_it_activates_without_compile(
        harness, tiny_text_checkpoint, monkeypatch):
    from lifecycle_msgs.msg import State
    from rclpy.parameter import Parameter

    from ddvlm_core.model import DDVLM

    def no_compiler(self, mode="default"):  # what a robot without g++ / Triton gets from inductor
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

    monkeypatch.setattr(DDVLM, "compile_text", no_compiler)
    h = harness(model_dir=tiny_text_checkpoint, compile=True)
    h.node.trigger_configure()
    h.node.trigger_activate()
    assert h.node._state_machine.current_state[0] == State.PRIMARY_STATE_INACTIVE
    values = {kv.key: kv.value for kv in h.node.diagnostic_status().values}
    assert "compile failed" in values["load_error"] and "compile:=false" in values["load_error"]
    assert h.node.pipeline._threads == []  # the worker started for the compile was stopped again
    h.node.set_parameters([Parameter("compile", value=False)])
    h.node.trigger_activate()
    assert h.node._state_machine.current_state[0] == State.PRIMARY_STATE_ACTIVE and h.node.load_error == ""
    h.publish(String, "transcript", String(data="Ross: I got the job!"))
    assert h.wait_for(1)[0].top_label in LABELS


def test_unknown_woq_kernel_fails_configure_with_the_choices(harness, tiny_text_checkpoint):
    h = harness(model_dir=tiny_text_checkpoint, quantized=True, woq_kernel="turbo")
    h.node.trigger_configure()
    assert "woq_kernel" in h.node.load_error and "decompress" in h.node.load_error


def test_integer_values_are_accepted_for_float_parameters(harness, tiny_text_checkpoint):
    # `frame_buffer_s: 5` in YAML or `-p caption_timeout_s:=3` give integers; rclpy's static typing would
    # raise InvalidParameterTypeException in the constructor and the node would never start.
    h = harness(model_dir=tiny_text_checkpoint, frame_buffer_s=5, caption_timeout_s=3, idle_timeout_s=0).start()
    assert h.node.p("frame_buffer_s") == 5.0 and type(h.node.p("frame_buffer_s")) is float
    assert type(h.node.pipeline.frames.keep_s) is float and h.node.pipeline.frames.keep_s == 5.0
    assert h.node.pipeline.caption_timeout_s == 3.0 and h.node.pipeline.idle_timeout_s == 0.0
    h.publish(String, "transcript", String(data="Ross: I got the job!"))
    assert h.wait_for(1)[0].top_label in LABELS


def test_wrong_parameter_types_and_values_fail_configure_with_every_reason_and_can_be_fixed(
        harness, tiny_text_checkpoint):
    from rclpy.parameter import Parameter

    h = harness(model_dir=tiny_text_checkpoint, quantized="yes", frames_per_window=2.5, frame_buffer_s=-1.0,
                image_qos_reliability="reliabel", emotion_topic="", transcript_topic="my asr", diagnostics_period_s=0.0,
                caption_timeout_s=math.nan)
    h.node.trigger_configure()
    for reason in ("'quantized' must be a bool", "'yes'", "'frames_per_window' must be an integer",
                   "'frame_buffer_s' must be > 0", "'image_qos_reliability' must be one of: reliable, best_effort",
                   "'emotion_topic' must be a valid topic name", "'transcript_topic' must be a valid topic name or ''",
                   "'diagnostics_period_s' must be > 0", "'caption_timeout_s' must be a finite number > 0, got nan"):
        assert reason in h.node.load_error, reason
    assert h.node.diagnostic_status().level == b"\x02" and h.node._diag_timer.timer_period_ns == 10**9
    for name, value in (("diagnostics_period_s", math.nan), ("idle_timeout_s", math.inf)):  # YAML .nan, .inf
        refused = h.node.set_parameters([Parameter(name, value=value)])[0]
        assert not refused.successful and f"'{name}' must be a finite number" in refused.reason
    assert h.node._diag_timer.timer_period_ns == 10**9
    refused = h.node.set_parameters([Parameter("cpu_threads", value="two")])[0]
    assert not refused.successful and "'cpu_threads' must be an integer" in refused.reason
    refused = h.node.set_parameters([Parameter("captioner", value="blip")])[0]
    assert not refused.successful and "one of: none, cue, qwen" in refused.reason
    assert h.node.get_parameter("cpu_threads").value == 0 and h.node.get_parameter("captioner").value == "none"
    good = {"quantized": False, "frames_per_window": 2, "frame_buffer_s": 5, "image_qos_reliability": "reliable",
            "emotion_topic": "emotion", "transcript_topic": "transcript", "diagnostics_period_s": 1.0,
            "caption_timeout_s": 10}
    fixed = h.node.set_parameters([Parameter(name, value=value) for name, value in good.items()])
    assert all(r.successful for r in fixed)
    h.start()  # the same node configures once the values are right
    h.publish(String, "transcript", String(data="Rachel: No way!"))
    assert h.wait_for(1)[0].top_label in LABELS


def test_a_cuda_device_the_machine_lacks_fails_configure_clearly(harness, tiny_text_checkpoint):
    h = harness(model_dir=tiny_text_checkpoint, device="cuda:7")
    h.node.trigger_configure()
    assert "device 'cuda:7'" in h.node.load_error and "CUDA device(s)" in h.node.load_error


def test_a_params_file_and_command_line_with_integers_for_numbers_start_the_node(tmp_path):
    """What `ddvlm-emotion --ros-args --params-file my.yaml -p caption_timeout_s:=3` does on a robot."""
    import rclpy

    from ddvlm_ros.emotion_node import EmotionNode

    params = tmp_path / "my.yaml"
    params.write_text("ddvlm_emotion:\n  ros__parameters:\n    frame_buffer_s: 5\n    idle_timeout_s: 60\n"
                      "    quantized: true\n")
    ctx = rclpy.Context()
    rclpy.init(args=["ddvlm-emotion", "--ros-args", "--params-file", str(params), "-p", "caption_timeout_s:=3"],
               context=ctx)
    try:
        node = EmotionNode(context=ctx)
        values = {n: node.p(n) for n in ("frame_buffer_s", "idle_timeout_s", "caption_timeout_s", "quantized")}
        assert values == {"frame_buffer_s": 5.0, "idle_timeout_s": 60.0, "caption_timeout_s": 3.0, "quantized": True}
        assert all(type(values[n]) is float for n in ("frame_buffer_s", "idle_timeout_s", "caption_timeout_s"))
        assert node.parameter_errors() == []
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)


def test_echo_tool_prints_one_readable_line_per_answer(harness, tiny_text_checkpoint):
    h = harness(model_dir=tiny_text_checkpoint).start()
    lines = h.add_echo()
    h.publish(String, "transcript", String(data="Ross: I got the job!"))
    m = h.wait_for(1)[0]
    deadline = time.monotonic() + 15
    while not lines and time.monotonic() < deadline:
        time.sleep(0.01)
    ranked = sorted(zip(m.labels, m.probabilities), key=lambda lp: -lp[1])
    assert lines == [f"default/{m.utterance_id}  Ross <s1>  {m.top_label} {m.confidence:.2f}  "
                     f"({ranked[1][0]} {ranked[1][1]:.2f}, {ranked[2][0]} {ranked[2][1]:.2f})  text  "
                     f"{m.latency_ms:.0f} ms"]
    h.publish(String, "transcript", String(data='{"speaker": "Rachel", "text": "Oh.", "confidence": 0.31}'))
    m = h.wait_for(2)[1]
    while len(lines) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert lines[1].startswith("default/") and lines[1].endswith(
        f"text  {m.latency_ms:.0f} ms  asr 0.31  flags: transcript-low-confidence")
    from ddvlm_ros.echo import main

    assert main(["ddvlm-emotion-echo", "--help"]) == 0 and main(["ddvlm-emotion-echo", "--bogus"]) == 2  # no spin


def test_ctrl_c_between_the_executors_shutdown_check_and_its_wait_set_is_a_clean_stop():
    """The race CI met once: SIGINT shut the context down just before the executor made its wait set, and the
    entry point ended in an RCLError traceback with status 1. An RCLError while the context is valid still raises."""
    import rclpy
    from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy

    from ddvlm_ros.spin import spin_until_shutdown

    def spin_racing_ctrl_c(ctx):
        def spin():
            rclpy.shutdown(context=ctx)  # what rclpy's SIGINT handler does, from the signal
            _rclpy.WaitSet(0, 0, 0, 0, 0, 0, ctx.handle)  # the executor's next step: RCLError, context not valid
        return spin

    for failing_while_valid in (False, True):
        ctx = rclpy.Context()
        rclpy.init(context=ctx)
        node = rclpy.create_node(f"race_{time.time_ns()}", context=ctx)
        cleaned = []

        def spin_failing():
            raise _rclpy.RCLError("a real error, the context still valid")

        spin = spin_failing if failing_while_valid else spin_racing_ctrl_c(ctx)
        if failing_while_valid:
            with pytest.raises(_rclpy.RCLError, match="a real error"):
                spin_until_shutdown(node, spin, before_destroy=lambda: cleaned.append(1))
        else:
            assert spin_until_shutdown(node, spin, before_destroy=lambda: cleaned.append(1)) == 0
        assert cleaned == [1] and not ctx.ok()  # cleaned up, and the node's own context shut down either way


def test_an_executor_spun_in_the_background_stops_without_its_thread_dying(monkeypatch):
    """rclpy's Executor.shutdown() from another thread while spin() runs took a ready callback on the spinning thread
    after the guard condition was gone: a long replay ended with "'NoneType' object has no attribute 'trigger'" from
    its spinner. BackgroundSpin stops the spinning first. Here shutdown comes while a timer and a flooded
    subscription keep the executor busy, and the interpreter switches threads every microsecond (this made rclpy's
    own spin-and-shutdown fail in about half of 100 tries); no spinner dies, and each stop ends its thread."""
    import sys
    import threading

    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from ddvlm_ros.spin import BackgroundSpin

    died = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(repr(args.exc_value)))
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for attempt in range(40):
            ctx = rclpy.Context()
            rclpy.init(context=ctx)
            node = rclpy.create_node(f"spun_{attempt}", context=ctx)
            node.create_subscription(String, "flood", lambda msg: None, 100)
            node.create_timer(0.0002, lambda: None)
            pub, flooding = node.create_publisher(String, "flood", 100), threading.Event()
            executor = SingleThreadedExecutor(context=ctx)
            executor.add_node(node)
            spinner = BackgroundSpin(executor)
            flood = threading.Thread(target=lambda: [pub.publish(String(data="x"))
                                                     for _ in iter(flooding.is_set, True)])
            flood.start()
            time.sleep(0.01)
            assert spinner.stop() and not spinner.thread.is_alive()
            flooding.set()
            flood.join()
            node.destroy_node()
            rclpy.shutdown(context=ctx)
    finally:
        sys.setswitchinterval(switch)
    assert died == []


def test_entry_points_stop_cleanly_on_ctrl_c(tmp_path):
    """ddvlm_ros.spin.spin_until_shutdown ends both entry points: Ctrl-C gives status 0, no traceback. The emotion
    node's entry point warns of a params file that gave it nothing (its autostart: true did not reach it)."""
    import signal
    import subprocess
    import sys

    import rclpy

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    watcher = rclpy.create_node("ctrl_c_watcher", context=ctx)
    try:
        for module in ("ddvlm_ros.echo", "ddvlm_ros.emotion_node"):
            name = f"ctrl_c_{module.rpartition('.')[2]}_{time.time_ns()}"  # not a name other tests' nodes left
            # Ctrl-C as a terminal gives it: to a process whose SIGINT is Python's handler. A test run started in
            # the background may hand its children SIGINT ignored (a background job inherits that), and rclpy then
            # only wakes the executor: such a child never ended (twice in this suite)
            start = "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            params = []  # the emotion node also checks its params files: one keyed by another name gives it nothing
            if module == "ddvlm_ros.emotion_node":
                params = ["--params-file", str(tmp_path / "keyed_by_name.yaml")]
                Path(params[1]).write_text("ddvlm_emotion:\n  ros__parameters:\n    autostart: true\n")
            proc = subprocess.Popen([sys.executable, "-X", "faulthandler", "-c",
                                     f"{start}from {module} import main; sys.exit(main())",
                                     "--ros-args", "-r", f"__node:={name}", *params],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 60
            while name not in watcher.get_node_names() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)  # until its node is on the graph, i.e. it spins
            assert proc.poll() is None and name in watcher.get_node_names(), proc.communicate()[1]
            time.sleep(0.5)
            proc.send_signal(signal.SIGINT)
            try:
                _, err = proc.communicate(timeout=60)  # a loaded machine (the whole suite) takes its time
            except subprocess.TimeoutExpired:  # where it was: its signal masks, and every thread's stack
                masks = [line for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                         if line.startswith(("SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt"))]
                proc.send_signal(signal.SIGABRT)  # faulthandler writes every thread's stack to stderr
                pytest.fail(f"{module}: still running 60 s after Ctrl-C; {masks}; its threads:\n"
                            f"{proc.communicate()[1][-8000:]}")
            assert proc.returncode == 0 and "Traceback" not in err, err
            if module == "ddvlm_ros.emotion_node":  # started by hand without autostart: it says why it sits still
                assert f"params file not applied: {params[1]}: nothing in it applies to this node, /{name}: its " \
                       "parameters are for /ddvlm_emotion" in err, err
                assert f"unconfigured (autostart: false): waiting for a lifecycle manager, or for `ros2 lifecycle " \
                       f"set /{name} configure`" in err, err
    finally:
        watcher.destroy_node()
        rclpy.shutdown(context=ctx)


def test_drop_self_echoes_takes_effect_at_once(harness, tiny_text_checkpoint):
    """`ros2 param set /ddvlm_emotion drop_self_echoes true` on a running node: the next echo gets no answer."""
    from rclpy.parameter import Parameter

    h = harness(model_dir=tiny_text_checkpoint).start()
    h.publish(String, "robot_speech", String(data="Shall I bring you the blue cup?"))
    h.settle()
    h.publish(String, "transcript", String(data="shall i bring you the blue cup"))
    assert "transcript-echoes-robot" in h.wait_for(1)[0].flags
    assert h.node.set_parameters([Parameter("drop_self_echoes", value=True)])[0].successful
    h.publish(String, "robot_speech", String(data="Here is your blue cup."))
    h.settle()
    h.publish(String, "transcript", String(data="here is your blue cup"))
    h.publish(String, "transcript", String(data="Ann: Thank you!"))
    answers = h.wait_for(2)
    assert [m.speaker_id for m in answers] == ["", "Ann"] and "transcript-echoes-robot" not in answers[1].flags
    h.settle()
    values = {kv.key: kv.value for kv in h.node.diagnostic_status().values}
    assert values["self_echoes_dropped"] == "1" and "parameters_pending" not in values
