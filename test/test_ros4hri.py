"""ROS4HRI switch on a real rclpy graph: voices in (hri_msgs/IdsList + LiveSpeech), /emotion and
hri_msgs/Expression out. hri_msgs is the vendored subset built by `make` (third_party/hri_msgs)."""
import math
import time

import hri_msgs.msg as hri  # built by make msgs (the vendored subset where the real package is missing)
import pytest
from builtin_interfaces.msg import Time
from std_msgs.msg import String

from ddvlm_ros.convert import sec_to_stamp


def track(h, *ids, expect=None):
    expect = set(ids) if expect is None else expect
    h.publish(hri.IdsList, "/humans/voices/tracked", hri.IdsList(ids=list(ids)))
    deadline = time.monotonic() + 15
    while set(h.node._hri.voices) != expect and time.monotonic() < deadline:
        time.sleep(0.02)
    assert set(h.node._hri.voices) == expect


def speech(final="", incremental="", stamp=0.0, locale="en_US"):
    msg = hri.LiveSpeech(final=final, incremental=incremental, confidence=0.9, locale=locale)
    msg.header.stamp = sec_to_stamp(stamp, Time)
    return msg


def until(h, voice, msg, done, timeout=10.0):
    """Publish one LiveSpeech on the voice's speech topic and wait until done()."""
    deadline = time.monotonic() + timeout
    h.publish(hri.LiveSpeech, f"/humans/voices/{voice}/speech", msg)
    while not done() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert done()


def answer_held_back(harness, checkpoint, monkeypatch, hold_s: float):
    """A ROS4HRI node with voice anna tracked, whose answer to "I got the job!" waits (up to ``hold_s``) for the gate
    returned: (harness, anna's Expressions as they come, the gate)."""
    import threading

    h = harness(model_dir=checkpoint, ros4hri=True).start()
    expressions = []
    h.client.create_subscription(hri.Expression, "/humans/voices/anna/expression", expressions.append, 10)
    track(h, "anna")
    gate, predict = threading.Event(), h.node.pipeline.recognizer.predict
    monkeypatch.setattr(h.node.pipeline.recognizer, "predict", lambda turns: gate.wait(hold_s) and predict(turns))
    until(h, "anna", speech(final="I got the job!"), lambda: h.node.pipeline.stats.utterances == 1)  # being answered
    return h, expressions, gate


def test_voices_become_speakers_and_results_are_mirrored_as_expressions(harness, tiny_text_checkpoint):
    from ddvlm_ros.ros4hri import EXPRESSION_NAME

    h = harness(model_dir=tiny_text_checkpoint, ros4hri=True).start()
    expressions = {"anna": [], "bob": []}
    for voice in expressions:
        h.client.create_subscription(hri.Expression, f"/humans/voices/{voice}/expression",
                                     expressions[voice].append, 10)
    track(h, "anna", "bob")
    now = h.now()
    # one step at a time: messages on different topics have no delivery order
    until(h, "anna", speech(incremental="I got"), lambda: "anna" in h.node._hri.speaking)  # anna starts: id 1
    h.publish(hri.LiveSpeech, "/humans/voices/anna/speech", speech(incremental="I got the"))  # same utterance
    until(h, "bob", speech(final="Hi there.", stamp=now), lambda: len(h.received) == 1)  # id 2
    until(h, "anna", speech(final="I got the job!", stamp=now + 1), lambda: len(h.received) == 2)  # id 1
    h.publish(hri.LiveSpeech, "/humans/voices/bob/speech", speech(final="   "))  # empty final: nothing
    h.settle()
    got = list(h.received)
    assert [(m.speaker_id, m.utterance_id, m.speaker_token) for m in got] == [("bob", "2", "<s1>"),
                                                                              ("anna", "1", "<s2>")]
    assert h.node._next_id() == "3"  # incremental results and finals used no other ids
    for m in got:
        [e] = expressions[m.speaker_id]
        assert e.expression == getattr(hri.Expression, EXPRESSION_NAME[m.top_label])
        assert e.confidence == pytest.approx(m.confidence) and math.isnan(e.valence) and math.isnan(e.arousal)
        assert (e.header.stamp.sec, e.header.stamp.nanosec) == (m.header.stamp.sec, m.header.stamp.nanosec)
    assert got[1].header.stamp.sec == int(now + 1)  # stamp = the LiveSpeech result's stamp
    assert h.node.diagnostic_status().values  # still alive
    assert {kv.key: kv.value for kv in h.node.diagnostic_status().values}["ros4hri"] == "on (2 voices)"


def test_a_voice_that_is_no_longer_tracked_is_unsubscribed_once_its_linger_ran_out(
        harness, tiny_text_checkpoint, monkeypatch):
    """Without another tracked list: the node's own timer unsubscribes it; what it says then is not heard."""
    import ddvlm_ros.ros4hri

    h = harness(model_dir=tiny_text_checkpoint, ros4hri=True).start()
    track(h, "anna")
    h.publish(hri.LiveSpeech, "/humans/voices/anna/speech", speech(final="hello"))
    assert len(h.wait_for(1)) == 1
    pub = h._pubs["/humans/voices/anna/speech"]
    monkeypatch.setattr(ddvlm_ros.ros4hri, "VOICE_LINGER_S", 0.0)
    track(h, "bad/id", "", "7up", "zoë", expect=set())  # anna is gone; invalid topic tokens are ignored
    deadline = time.monotonic() + 15
    while pub.get_subscription_count() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pub.get_subscription_count() == 0 and h.node._hri.leaving == {}
    h.publish(hri.LiveSpeech, "/humans/voices/anna/speech", speech(final="still there?"))
    h.settle()
    assert len(h.received) == 1
    assert h.change_state("deactivate")
    assert h.node._hri is None


def test_a_voices_last_words_that_come_after_the_list_that_dropped_it_are_answered_and_mirrored(
        harness, tiny_text_checkpoint):
    """An ASR's final result may come after the tracked list that drops its voice (or be delivered after it: nothing
    orders two topics). The node still hears the voice for VOICE_LINGER_S: the words are answered as the utterance
    its incremental result began, and the answer is mirrored as its Expression."""
    h = harness(model_dir=tiny_text_checkpoint, ros4hri=True).start()
    expressions = []
    h.client.create_subscription(hri.Expression, "/humans/voices/anna/expression", expressions.append, 10)
    track(h, "anna")
    until(h, "anna", speech(incremental="I got"), lambda: "anna" in h.node._hri.speaking)  # id 1
    track(h, expect=set())
    assert "anna" in h.node._hri.leaving
    h.publish(hri.LiveSpeech, "/humans/voices/anna/speech", speech(final="I got the job!", stamp=h.now()))
    [answer] = h.wait_for(1)
    assert (answer.speaker_id, answer.utterance_id) == ("anna", "1")
    deadline = time.monotonic() + 15
    while not expressions and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [e.confidence for e in expressions] == [pytest.approx(answer.confidence)]


def test_a_voice_that_leaves_the_tracked_list_before_its_answer_still_gets_its_expression(
        harness, tiny_text_checkpoint, monkeypatch):
    """An ASR's voice may leave /humans/voices/tracked before the model has answered its last words: the node stops
    hearing it at once, but the answer is still mirrored on its expression topic (the publisher lingers), and once
    VOICE_LINGER_S has passed, the node drops the publisher. Tracked again meanwhile, it keeps it."""
    from pathlib import Path

    import ddvlm_ros.ros4hri
    from ddvlm_ros.ros4hri import VOICE_LINGER_S

    h, expressions, gate = answer_held_back(harness, tiny_text_checkpoint, monkeypatch, 10)
    track(h, expect=set())  # anna leaves the list before her answer
    assert "anna" in h.node._hri.leaving
    gate.set()
    [answer] = h.wait_for(1)
    deadline = time.monotonic() + 15
    while not expressions and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [e.confidence for e in expressions] == [pytest.approx(answer.confidence)]
    lingering = h.node._hri.leaving["anna"]
    track(h, "anna")  # back before the linger ran out: the same subscription and publisher
    assert h.node._hri.voices["anna"] == (lingering.speech, lingering.expression, lingering.is_speaking)
    assert "anna" not in h.node._hri.leaving
    monkeypatch.setattr(ddvlm_ros.ros4hri, "VOICE_LINGER_S", 0.0)
    track(h, expect=set())  # gone once the (now no) linger ran out, without another list
    deadline = time.monotonic() + 15
    while h.node._hri.leaving and time.monotonic() < deadline:
        time.sleep(0.02)
    assert h.node._hri.leaving == {} and not h.node._hri.publish("anna", None, None)
    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    assert f"still heard for {VOICE_LINGER_S:g} s" in readme  # the value imported before the patch


def test_a_voice_that_left_keeps_its_expression_publisher_while_the_node_still_has_answers_to_give(
        harness, tiny_text_checkpoint, monkeypatch):
    """A backlog (a slow CPU, a burst of speech) can hold an answer back longer than VOICE_LINGER_S: the publisher of a
    voice that left stays while the node has utterances to answer, so that the late answer is still mirrored; then
    it goes."""
    import ddvlm_ros.ros4hri

    h, expressions, gate = answer_held_back(harness, tiny_text_checkpoint, monkeypatch, 20)
    monkeypatch.setattr(ddvlm_ros.ros4hri, "VOICE_LINGER_S", 0.0)
    track(h, expect=set())
    time.sleep(2.5)  # the reaper ran twice: the linger is over, the answer still to come
    assert "anna" in h.node._hri.leaving and not expressions
    gate.set()
    [answer] = h.wait_for(1)
    deadline = time.monotonic() + 15
    while (not expressions or h.node._hri.leaving) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [e.confidence for e in expressions] == [pytest.approx(answer.confidence)] and h.node._hri.leaving == {}


def test_ros4hri_without_hri_msgs_says_so_and_the_node_keeps_working(harness, tiny_text_checkpoint, monkeypatch):
    from std_msgs.msg import String

    import ddvlm_ros.ros4hri

    monkeypatch.setattr(ddvlm_ros.ros4hri, "hri_msgs_available", lambda: False)
    h = harness(model_dir=tiny_text_checkpoint, ros4hri=True).start()
    status = {kv.key: kv.value for kv in h.node.diagnostic_status().values}
    assert status["ros4hri"] == "requested, but hri_msgs is not installed" and h.node._hri is None
    h.publish(String, "transcript", String(data="Ross: still here"))
    assert len(h.wait_for(1)) == 1


def test_voices_that_speak_keep_the_transcript_topics_from_being_reported_silent(harness, tiny_text_checkpoint):
    """With ROS4HRI the transcripts come from the voices: nothing on transcript or utterance is then expected. A
    quiet room is no fault while the voices are tracked; once nothing tracks them, the transcripts are missed."""
    h = harness(model_dir=tiny_text_checkpoint, ros4hri=True, input_timeout_s=0.5).start()
    track(h, "anna")
    for k in range(8):
        h.publish(hri.LiveSpeech, "/humans/voices/anna/speech", speech(incremental=f"word {k}"))
        time.sleep(0.2)
    assert not h.node._silence_warned & {"transcript", "utterance"}
    time.sleep(2.0)  # anna stops speaking, four times input_timeout_s: the voices are still tracked
    assert h.node._silence_warned == set()
    h.client.destroy_publisher(h._pubs.pop("/humans/voices/tracked"))  # the voice tracker died: now they are missed
    deadline = time.monotonic() + 15  # on every transcript topic, none of which ever had a publisher
    while not h.node._silence_warned and time.monotonic() < deadline:
        time.sleep(0.1)
    assert h.node._silence_warned == {"transcript", "utterance", "transcription"}
    values = {kv.key: kv.value for kv in h.node.diagnostic_status().values}
    assert {values[f"silent_why[{t}]"] for t in ("transcript", "utterance", "transcription")} == {
        "no node publishes it (check the remapping); nor does any node publish /humans/voices/tracked (ros4hri: "
        "true), so no voice's speech is read"}


def test_the_locale_a_voice_is_heard_in_flags_its_answers(harness, tiny_text_checkpoint):
    """LiveSpeech.locale (hri_msgs 2.1 on; 'language' before) is the ASR's word for what it heard: German speech is
    flagged transcript-not-english (the model reads English only), /diagnostics says so, and its answer is not
    mirrored as hri_msgs/Expression (which has no flags; the answer says nothing of the speaker); English and untagged
    speech is not flagged. PAL's asr_vosk sends its final result with ``incremental`` set to the same words: one
    answer."""
    h = harness(model_dir=tiny_text_checkpoint, ros4hri=True).start()
    expressions = []
    h.client.create_subscription(hri.Expression, "/humans/voices/anna/expression", expressions.append, 10)
    track(h, "anna")
    until(h, "anna", speech(final="I got the job!"), lambda: len(h.received) == 1)
    german = speech(final="Ich habe den Job!", incremental="Ich habe den Job!", locale="de_DE")
    until(h, "anna", german, lambda: len(h.received) == 2)
    until(h, "anna", speech(final="Really?", locale=""), lambda: len(h.received) == 3)
    h.settle()
    assert [("transcript-not-english" in m.flags) for m in h.received] == [False, True, False]
    assert [m.utterance_id for m in h.received] == ["1", "2", "3"] and "anna" not in h.node._hri.speaking
    deadline = time.monotonic() + 15
    while len(expressions) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    h.settle()
    assert [e.confidence for e in expressions] == [pytest.approx(h.received[k].confidence) for k in (0, 2)]
    values = {kv.key: kv.value for kv in h.node.diagnostic_status().values}
    assert values["transcripts_not_english"] == ("1 of the latest 3 transcripts are not English (the latest: "
                                                 "language tag 'de_DE')")


def test_a_livespeechs_locale_is_read_from_either_version_of_hri_msgs():
    """hri_msgs 2.0 named the field ``language`` (an IETF tag), 2.1 added ``locale`` and 2.2.1 removed ``language``:
    a node built against any of them reads what the ASR said (rclpy messages of those versions, as duck types)."""
    from types import SimpleNamespace

    from ddvlm_ros.ros4hri import spoken_locale

    assert spoken_locale(hri.LiveSpeech(locale="de_DE")) == "de_DE"
    assert spoken_locale(hri.LiveSpeech()) == ""
    assert spoken_locale(SimpleNamespace(language="en-GB")) == "en-GB"  # 2.0
    assert spoken_locale(SimpleNamespace(locale="", language="fr-FR")) == "fr-FR"  # 2.1, the old field filled
    assert spoken_locale(SimpleNamespace(locale="it_IT", language="")) == "it_IT"  # 2.1, the new one
    assert spoken_locale(SimpleNamespace(final="hi")) == ""  # before 2.0


def test_a_voices_asr_confidence_is_carried_and_a_low_one_flagged(harness, tiny_text_checkpoint):
    """LiveSpeech.confidence reaches the answer (transcript_confidence); below asr_min_confidence the answer is
    flagged transcript-low-confidence, and 0 (an ASR that sets none) is no confidence."""
    h = harness(model_dir=tiny_text_checkpoint, ros4hri=True, asr_min_confidence=0.6).start()
    track(h, "anna")
    for k, confidence in enumerate((0.9, 0.3, 0.0)):
        msg = speech(final=f"I got the job {k}!")
        msg.confidence = confidence
        until(h, "anna", msg, lambda n=k + 1: len(h.received) == n)
    assert [round(m.transcript_confidence, 3) for m in h.received] == [0.9, 0.3, 0.0]
    assert [("transcript-low-confidence" in m.flags) for m in h.received] == [False, True, False]
    values = {kv.key: kv.value for kv in h.node.diagnostic_status().values}
    assert values["transcripts_low_confidence"] == ("1 of the latest 2 transcripts with an ASR confidence below 0.6 "
                                                    "(p50 0.90); 1 in all")


def test_a_voice_that_repeats_the_robot_gets_its_answer_flagged_and_no_expression(harness, tiny_text_checkpoint):
    """The robot's speech heard back through a voice's ASR: /emotion carries transcript-echoes-robot, and no
    hri_msgs/Expression is published for it (Expression has no flags: the robot's words would read as the voice's
    expression). The voice's own words are mirrored."""
    h = harness(model_dir=tiny_text_checkpoint, ros4hri=True).start()
    expressions = []
    h.client.create_subscription(hri.Expression, "/humans/voices/anna/expression", expressions.append, 10)
    track(h, "anna")
    h.publish(String, "robot_speech", String(data="Shall I bring you the blue cup?"))
    h.settle()
    until(h, "anna", speech(final="shall i bring you the blue cup"), lambda: len(h.received) == 1)
    until(h, "anna", speech(final="Yes, please!"), lambda: len(h.received) == 2)
    h.settle()
    assert [("transcript-echoes-robot" in m.flags) for m in h.received] == [True, False]
    assert [e.confidence for e in expressions] == [pytest.approx(h.received[1].confidence)]


def test_a_voices_transcript_that_arrives_after_a_later_one_is_placed_by_its_stamp_and_flagged(harness,
                                                                                               tiny_text_checkpoint):
    """An ASR per voice: Bob's short reply is transcribed first, Anna's long turn before it arrives after it. Its
    answer carries transcript-arrived-late, Bob's reply is answered again (answer-revised: same utterance, same
    stamp), the context holds the turns in the order said, /diagnostics counts it; revise_answers applies at once."""
    from rclpy.parameter import Parameter

    h = harness(model_dir=tiny_text_checkpoint, ros4hri=True).start()
    track(h, "anna", "bob")
    now = h.now()
    until(h, "bob", speech(final="Really?", stamp=now + 2), lambda: len(h.received) == 1)
    until(h, "anna", speech(final="I waited all night for your call!", stamp=now + 1), lambda: len(h.received) == 3)
    last = {kv.key: kv.value for kv in h.node.diagnostic_status().values}["last_output"]
    assert last.startswith(f"default/{h.received[0].utterance_id} bob: ") and last.endswith(" (revised)")
    until(h, "bob", speech(final="Sorry.", stamp=now + 4), lambda: len(h.received) == 4)
    got = list(h.received)
    assert [(m.speaker_id, list(m.flags)) for m in got] == [
        ("bob", []), ("anna", ["transcript-arrived-late"]), ("bob", ["answer-revised"]), ("bob", [])]
    assert got[2].utterance_id == got[0].utterance_id and got[2].header.stamp == got[0].header.stamp
    turns = h.node.pipeline.conversations["default"].dialogue.turns
    assert [t.speaker for t in turns] == ["anna", "bob", "bob"]
    values = {kv.key: kv.value for kv in h.node.diagnostic_status().values}
    assert values["late_transcripts"].startswith("1 transcripts placed before turns that ended after them")
    assert values["late_transcripts"].endswith("; 1 answers to those turns revised")
    # `ros2 param set /ddvlm_emotion revise_answers false`: the next late one leaves the turns after it as answered
    assert h.node.set_parameters([Parameter("revise_answers", value=False)])[0].successful
    until(h, "anna", speech(final="Me neither.", stamp=now + 3.5), lambda: len(h.received) == 5)
    h.settle()
    assert [list(m.flags) for m in h.received[4:]] == [["transcript-arrived-late"]]


def test_two_voices_saying_the_same_words_at_once_are_both_answered(harness, tiny_text_checkpoint):
    """Two children answer the robot's question together: the same words from two voices, at one time, are two
    utterances (voices are speakers of one input, not two inputs carrying one transcript)."""
    h = harness(model_dir=tiny_text_checkpoint, ros4hri=True).start()
    track(h, "anna", "bob")
    now = h.now()
    h.publish(hri.LiveSpeech, "/humans/voices/anna/speech", speech(final="Yes, we want to play!", stamp=now))
    h.publish(hri.LiveSpeech, "/humans/voices/bob/speech", speech(final="Yes, we want to play!", stamp=now))
    assert sorted(m.speaker_id for m in h.wait_for(2)) == ["anna", "bob"]
    assert h.node.pipeline.stats.copies_dropped == 0


class ShapeCaptioner:
    """Records the image shape of each caption's frames."""

    name = "shapes"

    def __init__(self):
        self.shapes = []

    def caption(self, frames, window=None):
        from ddvlm_core.captioner import Caption

        self.shapes.append({f.image.shape for f in frames})
        return Caption("The head is turning left.", self.name, len(frames))


def image(stamp, height, width, value):
    import numpy as np
    from sensor_msgs.msg import Image

    msg = Image(height=height, width=width, encoding="rgb8", step=width * 3,
                data=np.full((height, width, 3), value, np.uint8).tobytes())
    msg.header.stamp = sec_to_stamp(stamp, Time)
    return msg


def test_a_voices_utterance_is_captioned_from_its_persons_body_crops(harness, tiny_visual_checkpoint):
    """The person manager links voice anna to person p1 and p1 to body b1 (latched, as hri_person_manager publishes
    them): anna's utterance is captioned from b1's 24x16 crops, not the camera's 64x64 scene. With
    caption_person_crops false, or for a voice no person links, the camera's frames are captioned."""
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image

    h = harness(model_dir=tiny_visual_checkpoint, captioner="cue", ros4hri=True).start()
    recorder = h.node.pipeline.captioner = ShapeCaptioner()
    track(h, "anna", "bob")
    link_person(h, "p1", voice_id="anna", body_id="b1")
    h.publish(hri.IdsList, "/humans/bodies/tracked", hri.IdsList(ids=["b1"]))
    deadline = time.monotonic() + 15
    while (h.node._crops.crops_of("anna") != ["body/b1"] or "body/b1" not in h.node._crops.crops) \
            and time.monotonic() < deadline:
        time.sleep(0.02)
    assert h.node._crops.crops_of("anna") == ["body/b1"] and h.node._crops.crops_of("bob") == []

    def say(voice, words):
        now = h.now()
        for k in range(5):  # the camera and b1's crops over the second before now
            h.publish(Image, "image", image(now - 1.0 + 0.2 * k, 64, 64, 40))
            h.publish(Image, "/humans/bodies/b1/cropped", image(now - 1.0 + 0.2 * k, 24, 16, 200))
            time.sleep(0.05)
        h.settle()
        answered = len(h.received)
        until(h, voice, speech(final=words, stamp=now), lambda: len(h.received) == answered + 2)
        return recorder.shapes[-1]

    assert say("anna", "I got the job!") == {(24, 16, 3)}
    assert say("bob", "No way!") == {(64, 64, 3)}  # no person links bob
    h.node.set_parameters([Parameter("caption_person_crops", value=False)])
    assert say("anna", "They called this morning.") == {(64, 64, 3)}
    status = {kv.key: kv.value for kv in h.node.diagnostic_status().values}
    assert status["captions_made_from"] == "body 1, camera 2"
    broken = image(h.now(), 24, 16, 200)
    broken.data = broken.data[:100]  # rows cut short: counted as a bad frame, not buffered, the node answers on
    h.publish(Image, "/humans/bodies/b1/cropped", broken)
    deadline = time.monotonic() + 10
    while h.node._bad_frames == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert h.node._bad_frames == 1 and say("bob", "Still there?") == {(64, 64, 3)}
    crops = h.node._crops
    assert h.change_state("deactivate")
    crops._on_tracked_crops("body", hri.IdsList(ids=["b9"]))  # came in as the node deactivated: subscribes nothing
    assert crops.crops == {} and h.node.count_subscribers("/humans/bodies/b9/cropped") == 0


def test_a_voices_is_speaking_places_its_utterances_camera_window(harness, tiny_visual_checkpoint):
    """asr_vosk relays its VAD on /humans/voices/<id>/is_speaking and stamps a final result when it recognised it,
    after its endpoint. Anna's VAD went on, her partial result came 0.3 s later, her VAD went off 0.8 s after it went
    on, and her final result, stamped 0.4 s after that, came: her partial results were captioned from when her VAD
    went on, her final one over [on, off], not from her first partial result to its stamp."""
    from sensor_msgs.msg import Image

    from ros_harness import WindowCaptioner

    h = harness(model_dir=tiny_visual_checkpoint, captioner="cue", ros4hri=True, frames_per_window=4).start()
    recorder = h.node.pipeline.captioner = WindowCaptioner()
    track(h, "anna")
    vad = h.node._hri.activity["anna"]

    def vad_says(speaking):
        h.vad_says(vad, speaking, topic="/humans/voices/anna/is_speaking")

    def frames(seconds):
        for _ in range(int(seconds / 0.1)):
            h.publish(Image, "image", image(h.now(), 64, 64, 40))
            time.sleep(0.1)

    vad_says(True)
    frames(0.3)
    until(h, "anna", speech(incremental="I got"), lambda: len(recorder.windows) >= 1)  # captioned while speaking
    frames(0.5)
    vad_says(False)
    [(on, off)] = [tuple(i) for i in vad.intervals]
    time.sleep(0.4)
    answered = len(h.received)
    until(h, "anna", speech(final="I got the job!", stamp=h.now()), lambda: len(h.received) == answered + 2)
    assert recorder.windows[0][0] == on  # the partial results' window began when her VAD went on
    assert recorder.windows[-1] == (on, off)
    assert {kv.key: kv.value for kv in h.node.diagnostic_status().values}["voice_activity"] == (
        "/voice_activity and /humans/voices/<id>/is_speaking: 1 transcript windows placed on the speech heard, 0 "
        "estimated from their words (no fresh speech heard)")


def test_a_voices_vad_hears_no_person_while_the_robot_speaks(harness, tiny_visual_checkpoint):
    """robot_speaking on: a voice tracked meanwhile starts with its VAD muted, and its is_speaking heard then opens
    no speech; when the robot stops while the VAD still hears speech, the person's speech starts then."""
    from std_msgs.msg import Bool

    h = harness(model_dir=tiny_visual_checkpoint, captioner="cue", ros4hri=True).start()

    def wait(done):
        deadline = time.monotonic() + 10
        while not done() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert done()

    h.publish(Bool, "robot_speaking", Bool(data=True))
    wait(lambda: h.node._hri.robot_speaking)
    track(h, "anna")
    vad = h.node._hri.activity["anna"]
    assert vad.robot_speaking
    h.publish(Bool, "/humans/voices/anna/is_speaking", Bool(data=True))
    wait(lambda: vad.changes == 1)
    assert vad.vad_on and not vad.speaking and not vad.intervals
    stopped = h.now()
    h.publish(Bool, "robot_speaking", Bool(data=False))
    wait(lambda: vad.speaking)
    [(on, off)] = [tuple(i) for i in vad.intervals]
    assert off is None and stopped <= on <= h.now()


def test_no_entity_of_the_node_carries_qos_event_handlers(harness, tiny_visual_checkpoint):
    """Every subscription and publisher of an active node (the inputs, /emotion, /diagnostics, /clock under
    use_sim_time, each tracked voice's speech, is_speaking and expression, the bond) comes without rclpy's QoS
    event handlers. The executor waits on those handlers, and one of an entity destroyed meanwhile from another
    thread (a MultiThreadedExecutor's callbacks: deactivate, a voice leaving) ended its spin with InvalidHandle
    (ros2/rclpy#1284; bench/executor_transitions.py). Before, each had one or two."""
    h = harness(model_dir=tiny_visual_checkpoint, captioner="cue", ros4hri=True, use_sim_time=True).start()
    track(h, "anna", "bob")
    entities = [*h.node.subscriptions, *h.node.publishers]
    topics = {e.topic_name for e in entities}
    assert {"/clock", "/emotion", "/diagnostics", "/transcript", "/image", "/humans/voices/anna/speech",
            "/humans/voices/bob/is_speaking", "/humans/voices/bob/expression"} <= topics
    assert [e.topic_name for e in entities if e.event_handlers] == []


def link_person(h, person: str, wait_subscribers: bool = True, **links):
    """The person manager links ``person`` to ``links`` (voice_id=..., face_id=...: latched, as hri_person_manager
    publishes them) and lists it as tracked (``wait_subscribers``: once the node subscribes the list); returns the
    link publishers."""
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE)
    pubs = {link: h.client.create_publisher(String, f"/humans/persons/{person}/{link}", latched) for link in links}
    for link, value in links.items():
        pubs[link].publish(String(data=value))
    h.publish(hri.IdsList, "/humans/persons/tracked", hri.IdsList(ids=[person]), wait_subscribers=wait_subscribers)
    return pubs


def test_with_face_expression_a_voices_answer_also_goes_on_its_persons_face(
        harness, tiny_text_checkpoint, monkeypatch):
    """face_expression: true. The person manager links voice anna and face f1 to person p1: the node publishes on
    /humans/faces/f1/expression (where REP-155 puts expressions and pyhri's person.face.expression reads them) from
    then on, before anna's first answer, which a subscriber of another process would otherwise miss while it
    matches a new publisher; anna's answer goes there as on her voice's topic; bob, whom no person links, gets none.
    Another node publishing on f1's expression topic too is a WARN, logged once, with a diagnostic naming it, gone
    with it. Once no person links f1 and its linger has run out, the node no longer publishes there."""
    import ddvlm_ros.ros4hri
    from diagnostic_msgs.msg import DiagnosticStatus

    from ros_harness import logged_line, rosout_listener

    h = harness(model_dir=tiny_text_checkpoint, ros4hri=True, face_expression=True,
                node_name="ddvlm_face_expression").start()
    logged = rosout_listener(h)
    assert logged_line(logged, "active: reading").endswith(
        "answers on /emotion, /humans/voices/<id>/expression, /humans/faces/<id>/expression of their persons' faces")
    on_face, on_voice = [], []
    h.client.create_subscription(hri.Expression, "/humans/faces/f1/expression", on_face.append, 10)
    h.client.create_subscription(hri.Expression, "/humans/voices/anna/expression", on_voice.append, 10)
    link_person(h, "p1", voice_id="anna", face_id="f1")
    track(h, "anna", "bob")
    deadline = time.monotonic() + 15
    while h.node._persons.face_of("anna") != "f1" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert h.node._persons.face_of("anna") == "f1" and h.node._persons.face_of("bob") == ""
    while h.node.count_publishers("/humans/faces/f1/expression") == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert h.node._hri.face_topics() == ["/humans/faces/f1/expression"] and on_face == []  # before anna speaks
    until(h, "anna", speech(final="I got the job!", stamp=h.now()), lambda: len(on_face) == 1 and len(on_voice) == 1)
    [face], [voice] = on_face, on_voice
    assert (face.expression, face.confidence) == (voice.expression, voice.confidence)
    assert face.header.stamp == voice.header.stamp
    until(h, "bob", speech(final="No way!"), lambda: len(h.received) == 2)
    h.settle()
    assert len(on_face) == 1 and h.node._hri.face_topics() == ["/humans/faces/f1/expression"]
    [mine] = [p for p in h.node.publishers if p.topic_name == "/humans/faces/f1/expression"]
    assert not mine.event_handlers  # see test_no_entity_of_the_node_carries_qos_event_handlers
    status = {kv.key: kv.value for kv in h.node.diagnostic_status().values}
    assert (status["face_expressions"], status["face_expressions_shared"]) == ("/humans/faces/f1/expression", "none")

    classifier = rclpy_node(h, "face_expression_classifier")
    other = classifier.create_publisher(hri.Expression, "/humans/faces/f1/expression", 10)
    line = logged_line(logged, "/humans/faces/f1/expression is published by")
    assert line == ("/humans/faces/f1/expression is published by /face_expression_classifier too: two sources of "
                    "that face's expression (set face_expression false, or stop the other)")
    status = h.node.diagnostic_status()
    assert status.level == DiagnosticStatus.WARN and "face_expressions_shared" in status.message
    assert {kv.key: kv.value for kv in status.values}["face_expressions_shared"] == \
        "/humans/faces/f1/expression: /face_expression_classifier"
    h.on_executor(classifier.destroy_publisher, other)
    deadline = time.monotonic() + 10
    while h.node._faces_shared and time.monotonic() < deadline:
        time.sleep(0.05)
    assert h.node._faces_shared == {} and h.node.diagnostic_status().level == DiagnosticStatus.OK
    assert [m.msg for m in logged].count(line) == 1

    monkeypatch.setattr(ddvlm_ros.ros4hri, "VOICE_LINGER_S", 0.0)
    until(h, "anna", speech(final="They called me."), lambda: len(on_face) == 2)  # kept until now + 0 s
    assert h.node._hri.faces  # p1 still links f1
    h.publish(hri.IdsList, "/humans/persons/tracked", hri.IdsList(ids=[]))  # p1 is gone
    deadline = time.monotonic() + 15
    while h.node.count_publishers("/humans/faces/f1/expression") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert h.node.count_publishers("/humans/faces/f1/expression") == 0 and h.node._hri.faces == {}
    until(h, "anna", speech(final="Still here."), lambda: len(on_voice) == 3)
    h.settle()
    assert len(on_face) == 2  # no person links anna to a face now
    bridge, links = h.node._hri, h.node._persons
    assert h.change_state("deactivate") and h.node._persons is None
    # what comes in as the node deactivates (a MultiThreadedExecutor runs both at once) subscribes and makes nothing
    bridge.linked_faces = lambda: {"f9"}
    bridge.sync_faces()
    bridge._on_tracked(hri.IdsList(ids=["zed"]))
    links._on_persons(hri.IdsList(ids=["p7"]))
    assert bridge.faces == {} and bridge.voices == {} and links.persons == {}
    assert h.node.count_publishers("/humans/faces/f9/expression") == 0
    assert h.node.count_subscribers("/humans/voices/zed/speech") == 0
    assert h.node.count_subscribers("/humans/persons/p7/voice_id") == 0


def rclpy_node(h, name: str):
    """Another node of the harness's process (another node on the robot), spun with the harness's."""
    import rclpy

    node = rclpy.create_node(name, context=h.context)
    h.add_node(node)
    return node


def test_face_expression_is_off_by_default_and_then_no_persons_are_read(harness, tiny_text_checkpoint):
    """A facial-expression node may publish on /humans/faces/<id>/expression: by default the node leaves those topics
    alone, and a text-only node reads no person manager links."""
    h = harness(model_dir=tiny_text_checkpoint, ros4hri=True).start()
    on_face = []
    h.client.create_subscription(hri.Expression, "/humans/faces/f1/expression", on_face.append, 10)
    link_person(h, "p1", wait_subscribers=False, voice_id="anna", face_id="f1")
    track(h, "anna")
    until(h, "anna", speech(final="I got the job!"), lambda: len(h.received) == 1)
    h.settle()
    assert h.node._persons is None and on_face == [] and h.node._hri.faces == {}
    assert h.node.count_publishers("/humans/faces/f1/expression") == 0
    assert "face_expressions" not in {kv.key for kv in h.node.diagnostic_status().values}
