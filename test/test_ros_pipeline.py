"""The node's ROS-free engine: frame buffer, conversations, workers."""
import random
import threading
import time

import pytest
import torch

from ddvlm_core.inference import EmotionRecognizer
from ddvlm_ros.pipeline import EmotionPipeline, FrameBuffer, Stats, UtteranceIn


def test_frame_buffer_orders_windows_and_drops_old_and_future():
    stats = Stats()
    buf = FrameBuffer(keep_s=2.0, stats=stats, future_tolerance_s=1.0)
    for stamp in (10.0, 10.5, 10.2, 11.0):
        assert buf.add(stamp, f"f{stamp}", now=11.0)
    assert [s for s, _ in buf.window(10.1, 10.9)] == [10.2, 10.5]
    assert not buf.add(20.0, "future", now=11.0) and stats.frames_dropped_future == 1
    assert buf.add(12.5, "new", now=12.5)  # pushes 10.0 and 10.2 out of the 2 s span
    assert [s for s, _ in buf.window(0, 100)] == [10.5, 11.0, 12.5] and stats.frames_dropped_old == 2
    assert not buf.add(9.0, "stale", now=12.5) and stats.frames_dropped_old == 3


def test_the_frame_buffer_says_how_much_of_a_window_had_left_it():
    buf = FrameBuffer(keep_s=2.0, stats=Stats())
    assert buf.lost_s(0.0, 5.0) == 0.0 and buf.dropped_until is None
    for k in range(11):  # 10.0 ... 15.0: the buffer keeps 13.0 ... 15.0
        buf.add(10.0 + 0.5 * k, k)
    assert buf.span() == (13.0, 15.0) and buf.dropped_until == 12.5
    assert buf.lost_s(11.0, 14.0) == 1.5 and buf.lost_s(12.6, 14.0) == 0.0
    assert buf.lost_s(9.0, 11.5) == 2.5  # all of it
    assert not buf.add(12.8, "a late frame, older than the span") and buf.dropped_until == 12.8
    buf.clear()  # time jumped back: nothing was lost of what comes next
    assert buf.dropped_until is None and buf.lost_s(11.0, 14.0) == 0.0


def run_pipeline(recognizer, utterances, **kw):
    results = []
    pipe = EmotionPipeline(recognizer, results.append, **kw)
    answer(pipe, utterances)
    return pipe, results


def answer(pipe, utterances):
    """Start ``pipe``, submit ``utterances``, wait until it has handled them, stop it."""
    pipe.start()
    for u in utterances:
        pipe.submit(u)
    deadline = time.monotonic() + 20
    while not pipe.idle() and time.monotonic() < deadline:
        time.sleep(0.01)
    pipe.stop()


def utt(text, speaker="a", conv="c"):
    return UtteranceIn(conv, text, speaker, text, 0.0, 0.0, time.monotonic())


def test_idle_conversations_restart_and_conversations_are_separate(tiny_text_checkpoint):
    rec = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint, load_caption_embedder=False)
    pipe, results = run_pipeline(rec, [utt("hi", "a"), utt("yo", "b"), utt("hey", "z", conv="other")],
                                 idle_timeout_s=0)
    assert [r.prediction.speaker_token for r in results] == ["<s1>", "<s2>", "<s1>"]
    pipe2 = EmotionPipeline(rec, results.append, idle_timeout_s=0.05)
    pipe2.start()
    pipe2.submit(utt("hi", "a"))
    time.sleep(0.3)
    pipe2.submit(utt("later", "b"))  # after the idle timeout: a new context, b is the first speaker
    time.sleep(0.5)
    pipe2.stop()
    assert results[-1].prediction.speaker_token == "<s1>" and pipe2.stats.conversations_reset == 1


def test_the_silence_before_an_utterance_is_measured_to_when_it_came_not_to_when_it_is_answered(tiny_text_checkpoint):
    """A bag played fast under use_sim_time: the clock is 200 s on when the inference thread comes to b's turn, which
    came 10 s after a's. Measured to when it came (``heard``), b joins a's context; c, which came 130 s after b,
    starts a new one, and so does d, without a time of arrival, by the clock at its turn: 400 s."""
    rec = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint, load_caption_embedder=False)
    clock, results = [0.0], []
    pipe = EmotionPipeline(rec, results.append, idle_timeout_s=120.0, clock=lambda: clock[0])
    pipe.start()
    for speaker, heard, now in (("a", 0.0, 0.0), ("b", 10.0, 200.0), ("c", 140.0, 200.0), ("d", None, 400.0)):
        clock[0] = now
        pipe.submit(UtteranceIn("c", speaker, speaker, f"I am {speaker}.", 0.0, 0.0, time.monotonic(), heard=heard))
        deadline = time.monotonic() + 20
        while not pipe.idle() and time.monotonic() < deadline:
            time.sleep(0.01)
    pipe.stop()
    assert [r.prediction.speaker_token for r in results] == ["<s1>", "<s2>", "<s1>", "<s1>"]
    assert pipe.stats.conversations_reset == 2


def test_a_tenth_speaker_reuses_a_token_and_the_pipeline_counts_it(tiny_text_checkpoint):
    rec = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint, load_caption_embedder=False)
    guests = [utt(f"hello {k}", f"guest{k}") for k in range(1, 11)] + [utt("again", "guest1")]
    pipe, results = run_pipeline(rec, guests + [utt("other room", "guest10", conv="other")])
    tokens = [r.prediction.speaker_token for r in results]
    assert tokens[:9] == [f"<s{k}>" for k in range(1, 10)] and tokens[9] == "<s1>"  # guest1 was heard least recently
    assert tokens[10] == "<s2>" and tokens[11] == "<s1>"  # guest1 again takes guest2's; another conversation: <s1>
    assert pipe.stats.speaker_tokens_reused == 2


def test_the_model_sees_the_same_context_as_an_offline_predict(tiny_text_checkpoint):
    rec = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint, load_caption_embedder=False)
    lines = [("ross", "I got the job!"), ("rachel", "No way!"), ("ross", "Way.")]
    _, results = run_pipeline(rec, [utt(t, s) for s, t in lines])
    for k, r in enumerate(results):
        assert r.prediction.probabilities == alike(rec.predict(lines[: k + 1]).probabilities)


def test_the_robots_own_turns_join_the_context_but_get_no_answer(tiny_text_checkpoint):
    """context_only_speakers: the robot's speech (from its TTS) is context for the next human turn, as the other
    speakers' turns of a MELD dialogue are, and it is never classified."""
    rec = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint, load_caption_embedder=False)
    lines = [("ann", "Can you get me a coffee?"), ("robot", "Sorry, I cannot do that."), ("ann", "Seriously?")]
    pipe = EmotionPipeline(rec, (results := []).append, context_only_speakers=" robot , pepper")
    answer(pipe, [utt(t, s) for s, t in lines])
    assert [r.utterance.speaker_id for r in results] == ["ann", "ann"] and pipe.stats.context_only == 1
    assert results[1].prediction.probabilities == alike(rec.predict(lines).probabilities)  # with the robot's turn
    assert results[1].prediction.probabilities != rec.predict([lines[0], lines[2]]).probabilities
    assert results[1].prediction.speaker_token == "<s1>" and pipe.context_only("pepper")
    assert not pipe.context_only("") and not pipe.context_only("ann")


def test_a_reset_forgets_one_conversation_after_the_utterances_queued_before_it(tiny_text_checkpoint):
    rec = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint, load_caption_embedder=False)
    results = []
    pipe = EmotionPipeline(rec, results.append, idle_timeout_s=0)
    for u in (utt("hi", "a"), utt("yo", "b"), utt("hey", "z", conv="other")):
        pipe.submit(u)
    said = pipe.reset("c")  # queued behind the three: they keep the context they were spoken in
    assert said == "conversation 'c' starts over after the 3 utterances queued before this call"
    pipe.submit(utt("later", "b"))  # a new context: b is its first speaker
    pipe.submit(utt("still", "y", conv="other"))  # untouched: y is other's second speaker
    pipe.start()
    deadline = time.monotonic() + 20
    while not pipe.idle() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [r.prediction.speaker_token for r in results] == ["<s1>", "<s2>", "<s1>", "<s1>", "<s2>"]
    assert results[3].prediction.probabilities == alike(rec.predict([("b", "later")]).probabilities)
    assert results[4].prediction.probabilities == alike(rec.predict([("z", "hey"), ("y", "still")]).probabilities)
    assert pipe.reset("") == "every conversation starts over" and pipe.stats.resets_requested == 2
    deadline = time.monotonic() + 20
    while not pipe.idle() and time.monotonic() < deadline:
        time.sleep(0.01)
    pipe.stop()
    assert pipe.conversations == {}


class CountingCaptioner:
    name = "counting"

    def __init__(self):
        self.calls = 0

    def caption(self, frames, window=None):
        from ddvlm_core.captioner import Caption

        self.calls += 1
        return Caption("The head is turning to the left.", self.name, len(frames))


def finish_streamed_utterance(pipe, results: list, text: str = "I see it now") -> None:
    """The final result of utterance c/u1 (window 100.0-100.9 s), after its partial ones: wait for its text and
    refined answers and for the pipeline to go idle, then stop it."""
    pipe.submit(UtteranceIn("c", "u1", "a", text, 100.0, 100.9, time.monotonic()))
    deadline = time.monotonic() + 20
    while (len(results) < 2 or not pipe.idle()) and time.monotonic() < deadline:
        time.sleep(0.02)
    pipe.stop()


def test_streaming_caption_made_during_speech_is_reused_for_the_final_result(tiny_visual_checkpoint):
    rec = EmotionRecognizer.from_checkpoint(tiny_visual_checkpoint)
    results, captioner = [], CountingCaptioner()
    pipe = EmotionPipeline(rec, results.append, captioner=captioner)
    pipe.start()
    for k in range(10):
        pipe.add_frame(100.0 + 0.1 * k, __import__("numpy").zeros((8, 8, 3), "uint8"))
    pipe.prefetch(UtteranceIn("c", "u1", "a", "partial", 100.0, 100.85, time.monotonic()))  # still speaking
    time.sleep(0.5)
    finish_streamed_utterance(pipe, results)
    assert [r.refined for r in results] == [False, True]
    assert captioner.calls == 1 and pipe.stats.caption_prefetch_hits == 1


class SlowCaptioner(CountingCaptioner):
    def __init__(self):
        super().__init__()
        self.windows = []  # the window of each call

    def caption(self, frames, window=None):
        time.sleep(0.2)
        self.windows.append(window)
        return super().caption(frames, window)


def test_partial_results_faster_than_the_captioner_share_one_caption_job_per_stream(tiny_visual_checkpoint):
    """40 partial results in 0.4 s (an ASR's word-by-word hypotheses) with a captioner taking 0.2 s: one job at a
    time per stream, each captioning the newest partial, so the final result is refined at once from the
    streaming caption instead of waiting behind 40 captions."""
    rec = EmotionRecognizer.from_checkpoint(tiny_visual_checkpoint)
    results, captioner = [], SlowCaptioner()
    pipe = EmotionPipeline(rec, results.append, captioner=captioner, caption_timeout_s=5.0)
    pipe.start()
    for k in range(20):
        pipe.add_frame(100.0 + 0.05 * k, __import__("numpy").zeros((8, 8, 3), "uint8"))
    for k in range(40):
        pipe.prefetch(UtteranceIn("c", "u1", "a", "partial " * k, 100.0, 100.05 + 0.02 * k, time.monotonic()))
        time.sleep(0.01)
    time.sleep(0.5)
    finish_streamed_utterance(pipe, results)
    assert [r.refined for r in results] == [False, True] and pipe.stats.caption_prefetch_hits == 1
    assert captioner.calls <= 4 and captioner.windows[-1] == (100.0, 100.05 + 0.02 * 39)  # the newest partial


class RecordingCaptioner(CountingCaptioner):
    """Records the stamps of the frames of each caption; every caption waits until ``release`` is set."""

    def __init__(self):
        super().__init__()
        self.release, self.stamps = threading.Event(), []

    def caption(self, frames, window=None):
        self.release.wait(20)
        self.stamps.append([f.stamp for f in frames])
        return super().caption(frames, window)


def answer_two_while_the_captioner_waits(pipe, results: list) -> float:
    """Frames 99.0 ... 101.0 buffered, then u0 (99.0-99.5 s) and u1 (100.0-101.0 s) answered from their text while
    the pipeline's RecordingCaptioner waits on u0's caption; the deadline (monotonic) for the rest of the test."""
    import numpy as np

    for k in range(21):
        pipe.add_frame(99.0 + 0.1 * k, np.zeros((8, 8, 3), "uint8"))
    pipe.start()
    pipe.submit(UtteranceIn("c", "u0", "a", "First.", 99.0, 99.5, time.monotonic()))
    pipe.submit(UtteranceIn("c", "u1", "b", "Second.", 100.0, 101.0, time.monotonic()))
    deadline = time.monotonic() + 20
    while len(results) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    return deadline


def test_a_busy_captioner_captions_the_frames_buffered_when_the_transcript_was_answered(tiny_visual_checkpoint):
    """The captioner is still busy with one utterance while the camera's frames of the next one leave a short
    buffer: the next one's caption is made of its own frames, as buffered when its transcript was answered."""
    import numpy as np

    rec = EmotionRecognizer.from_checkpoint(tiny_visual_checkpoint)
    results, captioner = [], RecordingCaptioner()
    pipe = EmotionPipeline(rec, results.append, captioner=captioner, frame_buffer_s=3.0, caption_timeout_s=60)
    deadline = answer_two_while_the_captioner_waits(pipe, results)
    image = np.zeros((8, 8, 3), "uint8")
    for k in range(1, 51):  # the camera goes on: the buffer now holds 103.0 ... 106.0
        pipe.add_frame(101.0 + 0.1 * k, image)
    captioner.release.set()
    while (len(results) < 4 or not pipe.idle()) and time.monotonic() < deadline:
        time.sleep(0.01)
    pipe.stop()
    assert [(r.utterance.utterance_id, r.refined) for r in results] == [
        ("u0", False), ("u1", False), ("u0", True), ("u1", True)]
    assert len(captioner.stamps) == 2 and all(100.0 <= t <= 101.0 for t in captioner.stamps[1])
    assert pipe.stats.windows_cut_short == 0 and pipe.stats.windows_without_frames == 0


def test_a_caption_that_waited_longer_than_caption_timeout_s_for_the_captioner_is_not_made(tiny_visual_checkpoint):
    """The captioner is stuck on one utterance past caption_timeout_s: that caption is discarded when it comes, and
    the next utterance, whose caption could only be discarded too, is not captioned at all (nor are its frames
    held for it any longer)."""
    rec = EmotionRecognizer.from_checkpoint(tiny_visual_checkpoint)
    logged, captioner = [], RecordingCaptioner()
    pipe = EmotionPipeline(rec, (results := []).append, captioner=captioner, caption_timeout_s=1.0,
                           log=lambda level, text: logged.append((level, text)))
    deadline = answer_two_while_the_captioner_waits(pipe, results)
    time.sleep(1.3)
    captioner.release.set()
    while not pipe.idle() and time.monotonic() < deadline:
        time.sleep(0.01)
    pipe.stop()
    assert [r.refined for r in results] == [False, False] and captioner.calls == 1
    assert pipe.stats.caption_timeouts == 2
    assert logged == [("warn", f"caption for {u!r} took longer than 1.0s: discarded") for u in ("u0", "u1")]


def test_a_window_whose_start_had_left_the_frame_buffer_is_counted_and_said_once(tiny_visual_checkpoint):
    """An utterance longer than the buffer allows with the ASR's delay: its caption is made of the frames left, the
    pipeline says once which frame_buffer_s would have kept its window whole, and after 3 of the latest 20
    windows it says so in ``windows_cut_often`` (the node's status)."""
    import numpy as np

    rec = EmotionRecognizer.from_checkpoint(tiny_visual_checkpoint)
    logged = []
    pipe = EmotionPipeline(rec, (results := []).append, captioner=CountingCaptioner(), frame_buffer_s=2.0,
                           log=lambda level, text: logged.append((level, text)))
    for k in range(41):  # 100.0 ... 104.0: the buffer holds 102.0 ... 104.0
        pipe.add_frame(100.0 + 0.1 * k, np.zeros((8, 8, 3), "uint8"))
    answer(pipe, [UtteranceIn("c", "u1", "a", "A long story.", 101.0, 103.5, time.monotonic())])
    assert [r.refined for r in results] == [False, True] and pipe.stats.windows_cut_short == 1
    assert logged == [("warn", "the first 0.9 s of the 2.5 s window of utterance 'u1' had left the frame buffer when "
                               "its transcript came, and its caption sees the rest: frame_buffer_s (2 s) must hold an "
                               "utterance and the ASR's delay after it; 3 s would have kept this one")]
    assert pipe.window_cut_summary() == ("1 utterance windows began before the oldest buffered frame, 1 of the latest "
                                         "1 (the latest: its first 0.9 s of 2.5 s; frame_buffer_s 3 s would have "
                                         "kept it)")
    answer(pipe, [UtteranceIn("c", "u2", "a", "Short.", 103.5, 104.0, time.monotonic())])
    assert not pipe.windows_cut_often() and pipe.window_cut_summary().startswith("1 utterance windows began")
    answer(pipe, [UtteranceIn("c", f"u{k}", "a", f"Long again {k}.", 100.5, 103.0, time.monotonic()) for k in (3, 4)])
    assert pipe.windows_cut_often() and pipe.stats.windows_cut_short == 3 and len(logged) == 1
    assert pipe.window_cut_summary().endswith("3 of the latest 4 (the latest: its first 1.4 s of 2.5 s; "
                                              "frame_buffer_s 4 s would have kept it)")


def test_memory_stays_bounded_on_a_node_that_meets_new_people_for_weeks(tiny_text_checkpoint):
    rec = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint, load_caption_embedder=False)
    people = [utt(f"hello number {k}", "a", conv=f"voice{k}") for k in range(12)]
    pipe, results = run_pipeline(rec, people, idle_timeout_s=0, max_conversations=5)
    assert len(results) == 12 and list(pipe.conversations) == [f"voice{k}" for k in range(7, 12)]
    assert pipe.stats.conversations_forgotten == 7
    pipe, _ = run_pipeline(rec, [utt("hi", conv="old")], idle_timeout_s=0.05)
    time.sleep(0.1)  # "old" is now idle past the timeout: the next new conversation forgets it
    answer(pipe, [utt("hi", conv="new")])
    assert list(pipe.conversations) == ["new"] and pipe.stats.conversations_forgotten == 1
    logs = []  # "old" speaks again: a new context, said and counted as an idle restart like any other
    pipe.log = lambda level, text: logs.append(text)
    answer(pipe, [utt("hi again", conv="old")])
    assert pipe.stats.conversations_reset == 1 and any("conversation 'old' idle for" in line for line in logs)


def test_frame_buffer_thins_a_fast_camera_to_the_kept_rate():
    stats = Stats()
    buf = FrameBuffer(keep_s=10.0, stats=stats, max_rate_hz=5.0)
    for k in range(60):  # 2 s of a 30 Hz camera
        buf.add(100.0 + k / 30, k, now=100.0 + k / 30)
    kept = [s for s, _ in buf.window(0, 1e9)]
    assert len(kept) == 10 and stats.frames == 10 and stats.frames_thinned == 50
    assert all(b - a >= 0.2 - 1e-9 for a, b in zip(kept, kept[1:]))
    assert not buf.add(kept[3] + 0.05, "late, too close", now=102.0)  # out of order: checked on both sides
    assert buf.add(kept[-1] + 0.5, "next", now=102.5) and stats.frames_thinned == 51
    for hz, jitter_s in ((5.0, 0.0), (5.0, 0.005), (4.0, 0.01)):  # a camera at the kept rate or slower: every frame
        at_rate, rng = FrameBuffer(keep_s=1e6, stats=Stats(), max_rate_hz=5.0), random.Random(0)
        for k in range(500):
            at_rate.add(1764268508.0 + k / hz + rng.uniform(-jitter_s, jitter_s), k)
        assert len(at_rate) == 500 and at_rate.stats.frames_thinned == 0, (hz, jitter_s)
    every = FrameBuffer(keep_s=10.0, stats=Stats())  # frame_rate_hz 0: every frame
    for k in range(60):
        every.add(100.0 + k / 30, k)
    assert len(every) == 60


def test_call_runs_on_the_inference_worker_with_its_thread_settings_and_raises_its_errors(tiny_text_checkpoint):
    rec = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint)
    pipe = EmotionPipeline(rec, lambda r: None, thread_setup={"inference": lambda: torch.set_num_threads(3)})
    pipe.start()
    try:
        name, threads = pipe.call(lambda: (threading.current_thread().name, torch.get_num_threads()), timeout=10)
        assert (name, threads) == ("ddvlm-inference", 3)
        with pytest.raises(ZeroDivisionError):
            pipe.call(lambda: 1 / 0, timeout=10)
        assert pipe.call(lambda: "still running", timeout=10) == "still running"  # the worker survived
    finally:
        pipe.stop()


def test_a_window_without_frames_while_frames_are_buffered_says_whose_clock_is_off(tiny_visual_checkpoint):
    import numpy as np

    rec = EmotionRecognizer.from_checkpoint(tiny_visual_checkpoint)
    results, logs = [], []
    pipe = EmotionPipeline(rec, results.append, captioner=CountingCaptioner(), frame_buffer_s=10.0,
                           log=lambda level, text: logs.append((level, text)))
    pipe.start()
    frame = np.zeros((8, 8, 3), np.uint8)

    def final(uid, start, end):
        n = len(results)
        pipe.submit(UtteranceIn("c", uid, "a", f"line {uid}", start, end, time.monotonic()))
        deadline = time.monotonic() + 20
        while (len(results) == n or not pipe.idle()) and time.monotonic() < deadline:
            time.sleep(0.02)
        return [r.refined for r in results[n:]]

    for k in range(5):  # a bag's frames (an hour before the node's clock) while transcripts come stamped now
        pipe.add_frame(1000.0 + 0.1 * k, frame, now=4600.0 + 0.1 * k)
    assert final("1", 4592.0, 4600.5) == [False]  # the text result only: no frame in its window
    miss = pipe.stats.frame_window_miss
    assert pipe.stats.windows_without_frames == 1 and "3591.6 s before it" in miss
    assert "different clocks" in miss and "-3600.0 s" in miss and "use_sim_time:=true" in miss
    assert final("2", 4593.0, 4601.0) == [False] and pipe.stats.windows_without_frames == 2
    assert [level for level, _ in logs] == ["warn"] and "utterance '1'" in logs[0][1]  # once per streak

    pipe.add_frame(4601.0, frame, now=4601.05)  # the camera on the node's clock: a window with a frame
    assert final("3", 4600.8, 4601.2) == [False, True] and pipe.stats.frame_window_miss == ""
    assert pipe.stats.windows_without_frames == 2

    assert final("4", 4630.0, 4632.0) == [False]  # frames on the node's clock, but none since 4601.0
    assert "29.0 s before it" in pipe.stats.frame_window_miss and "camera stalled" in pipe.stats.frame_window_miss
    assert len(logs) == 2

    for stamp in (4628.0, 4635.0):
        pipe.add_frame(stamp, frame, now=stamp)
    assert final("5", 4631.0, 4633.0) == [False]  # between two buffered frames: a gap in the stream, not a clock
    assert pipe.stats.windows_without_frames == 4 and pipe.stats.frame_window_miss == ""
    assert final("6", 4620.0, 4625.0) == [False]  # a window the 10 s buffer no longer holds
    miss = pipe.stats.frame_window_miss
    assert "3.0 s after it" in miss and "more than frame_buffer_s (10 s)" in miss and "another clock" in miss
    assert len(logs) == 3
    assert not pipe.add_frame(9640.0, frame, now=4640.0)  # a camera clock ahead: its frames are dropped as future
    assert final("7", 4638.0, 4640.0) == [False]
    assert "+5000.0 s from this node's clock and dropped" in pipe.stats.frame_window_miss
    assert "different clocks" in pipe.stats.frame_window_miss
    assert pipe.add_frame(4641.0, frame, now=4641.0) and pipe.frames.future_offset_s is None
    pipe.stop()


def test_the_caption_worker_survives_any_error_and_refines_the_next_utterance(tiny_visual_checkpoint):
    import numpy as np

    from ddvlm_core.captioner import Caption

    class BrokenThenFine:  # returns no Caption once (a broken plug-in), then real ones
        name = "broken-then-fine"
        calls = 0

        def caption(self, frames, window=None):
            self.calls += 1
            return None if self.calls == 1 else Caption("The head is turning to the left.", self.name, len(frames))

    def decode(item):  # cv_bridge raises its own error type, not ValueError
        if item == "cvbridge-unsupported":
            raise RuntimeError("CvBridgeError: encoding not supported")
        return np.zeros((8, 8, 3), np.uint8)

    rec = EmotionRecognizer.from_checkpoint(tiny_visual_checkpoint)
    results = []
    pipe = EmotionPipeline(rec, results.append, captioner=BrokenThenFine(), decode_frame=decode)
    pipe.start()
    for k, item in enumerate(["ok", "cvbridge-unsupported", "ok"]):
        pipe.add_frame(100.0 + 0.1 * k, item, now=100.3)
    for uid in ("1", "2"):
        pipe.submit(UtteranceIn("c", uid, "a", f"line {uid}", 99.9, 100.3, time.monotonic()))
    deadline = time.monotonic() + 20
    while (len(results) < 3 or not pipe.idle()) and time.monotonic() < deadline:
        time.sleep(0.02)
    pipe.stop()
    assert [(r.utterance.utterance_id, r.refined) for r in results] == [("1", False), ("2", False), ("2", True)]
    assert results[-1].prediction.caption and pipe.stats.frame_window_miss == ""


def test_only_the_frames_a_caption_samples_are_decoded(tiny_visual_checkpoint):
    """A 5 Hz camera buffers 25 frames over a 5 s utterance and the caption samples 4: the other 21 are not
    decoded. A frame that cannot be decoded is left out as if it had never arrived."""
    import numpy as np

    from ddvlm_core.captioner import Caption, select_window_frames

    class Recording:
        name = "recording"
        frames_per_window = 4

        def __init__(self):
            self.stamps = []

        def caption(self, frames, window=None):
            picked = select_window_frames(frames, window, self.frames_per_window)
            self.stamps.append([f.stamp for f in picked])
            return Caption("The head is turning to the left.", self.name, len(picked))

    decoded, broken = [], set()

    def decode(item):
        decoded.append(item)
        if item in broken:
            raise ValueError("truncated JPEG")
        return np.zeros((8, 8, 3), np.uint8)

    rec = EmotionRecognizer.from_checkpoint(tiny_visual_checkpoint)
    captioner, results = Recording(), []
    pipe = EmotionPipeline(rec, results.append, captioner=captioner, decode_frame=decode, frame_rate_hz=5.0)
    pipe.start()
    stamps = [200.0 + 0.2 * k for k in range(25)]
    for k, stamp in enumerate(stamps):
        assert pipe.add_frame(stamp, k, now=205.0)

    def caption_of(uid):
        pipe.submit(UtteranceIn("c", uid, "a", f"line {uid}", 200.0, 204.8, time.monotonic()))
        deadline = time.monotonic() + 20
        while (len(captioner.stamps) < int(uid) or not pipe.idle()) and time.monotonic() < deadline:
            time.sleep(0.02)
        return captioner.stamps[-1]

    assert caption_of("1") == [stamps[i] for i in (0, 8, 16, 24)]
    assert sorted(decoded) == [0, 8, 16, 24]
    decoded.clear()
    broken.add(8)  # the caption is made from the 24 good frames, as if frame 8 had not come
    assert caption_of("2") == [stamps[i] for i in (0, 9, 16, 24)]  # items 0, 8, 15, 23 of the 24 good ones
    assert sorted(decoded) == list(range(25)) and pipe.stats.last_error == "frame: truncated JPEG"
    pipe.stop()
    assert [r.refined for r in results] == [False, True, False, True]


def test_a_stop_drops_the_queued_utterances_and_a_restart_answers_what_follows(tiny_text_checkpoint):
    """Deactivate while utterances wait, then activate: the waiting ones are dropped and counted, and the new
    worker must not stop on the old stop's sentinel."""
    rec = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint, load_caption_embedder=False)

    class Slow:
        def predict(self, turns):
            time.sleep(0.2)
            return rec.predict(turns)

    results = []
    pipe = EmotionPipeline(Slow(), results.append, idle_timeout_s=0)
    pipe.start()
    for i in range(5):
        pipe.submit(utt(f"u{i}"))
    time.sleep(0.05)
    pipe.stop()
    answered = [r.utterance.utterance_id for r in results]
    assert answered == [f"u{i}" for i in range(len(answered))]  # the one running at stop finishes
    assert pipe.stats.dropped_at_stop == 5 - len(answered) >= 3 and pipe.idle()
    pipe.start()
    pipe.submit(utt("after"))
    deadline = time.monotonic() + 20
    while not pipe.idle() and time.monotonic() < deadline:
        time.sleep(0.01)
    pipe.stop()
    assert [r.utterance.utterance_id for r in results] == answered + ["after"]
    pipe.start()  # a call waiting behind an utterance when the pipeline stops is told so
    pipe.submit(utt("busy"))
    told = []
    caller = threading.Thread(target=lambda: told.append(pytest.raises(RuntimeError, pipe.call, lambda: 1, 10)))
    caller.start()
    deadline = time.monotonic() + 15
    while pipe._jobs.unfinished_tasks < 2 and time.monotonic() < deadline:  # "busy" and the call behind it
        time.sleep(0.001)
    pipe.stop()
    caller.join(5)
    assert "stopped before the inference worker ran the call" in str(told[0].value)


def test_a_caption_still_running_at_stop_neither_blocks_the_restart_nor_refines_after_it(tiny_visual_checkpoint):
    """A caption longer than stop's timeout (Qwen2.5-VL on a CPU): the restarted pipeline answers at once,
    and the old caption, when it ends, is not turned into a late refined result."""
    import numpy as np

    from ddvlm_core.captioner import Caption

    rec = EmotionRecognizer.from_checkpoint(tiny_visual_checkpoint)
    started, release = threading.Event(), threading.Event()

    class SlowFirstCaption:
        name = "slow-first"

        def caption(self, frames, window=None):
            if not started.is_set():
                started.set()
                release.wait(30)
            return Caption("The head is turning to the left.", self.name, len(frames))

    results = []
    pipe = EmotionPipeline(rec, results.append, captioner=SlowFirstCaption(), idle_timeout_s=0,
                           caption_timeout_s=60)
    for k in range(10):
        pipe.add_frame(100.0 + 0.1 * k, np.zeros((8, 8, 3), "uint8"))
    pipe.start()
    pipe.submit(UtteranceIn("c", "u1", "a", "first", 100.0, 100.9, time.monotonic()))
    assert started.wait(10)  # its caption is running
    pipe.stop(timeout=0.2)
    pipe.start()
    pipe.submit(UtteranceIn("c", "u2", "a", "second", 100.0, 100.9, time.monotonic()))
    deadline = time.monotonic() + 15
    while len(results) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    release.set()  # the old caption ends now
    time.sleep(0.5)
    deadline = time.monotonic() + 20
    while not pipe.idle() and time.monotonic() < deadline:
        time.sleep(0.02)
    pipe.stop()
    assert [(r.utterance.utterance_id, r.refined) for r in results] == [("u1", False), ("u2", False), ("u2", True)]


def test_a_refinement_waiting_for_room_in_a_full_queue_is_dropped_by_a_stop(tiny_visual_checkpoint):
    """Overload: the inference queue is full when a caption is ready. A stop must end that wait (the caption
    worker exits within stop's timeout) and the refinement must not reach the restarted pipeline."""
    import numpy as np

    from ddvlm_core.captioner import Caption

    rec = EmotionRecognizer.from_checkpoint(tiny_visual_checkpoint)
    busy, caption_ready = threading.Event(), threading.Event()

    class SlowOnLine2:
        def predict(self, turns, caption=None):
            if turns[-1].text == "line 2" and caption is None:
                busy.set()
                time.sleep(1.0)  # the worker is busy while line 3 fills the queue and line 1's caption waits
            return rec.predict(turns, caption)

    class CaptionWhenTold:
        name = "when-told"

        def caption(self, frames, window=None):
            caption_ready.wait(10)
            return Caption("The head is turning to the left.", self.name, len(frames))

    results = []
    pipe = EmotionPipeline(SlowOnLine2(), results.append, captioner=CaptionWhenTold(), queue_size=1,
                           idle_timeout_s=0, caption_timeout_s=60)
    for k in range(10):
        pipe.add_frame(100.0 + 0.1 * k, np.zeros((8, 8, 3), "uint8"))
    pipe.start()
    for i in (1, 2, 3):
        while not pipe.submit(UtteranceIn("c", f"u{i}", "a", f"line {i}", 100.0, 100.9, time.monotonic())):
            time.sleep(0.005)  # the queue holds one job
        if i == 2:
            assert busy.wait(10)
    caption_ready.set()
    time.sleep(0.3)  # line 1's refinement now waits for room behind line 3
    started = time.monotonic()
    pipe.stop(timeout=3)
    assert time.monotonic() - started < 2.5  # no worker left busy
    pipe.start()
    deadline = time.monotonic() + 15
    while not pipe.idle() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    pipe.stop()
    assert [(r.utterance.utterance_id, r.refined) for r in results] == [("u1", False), ("u2", False)]
    assert pipe.stats.dropped_at_stop == 1  # line 3


def test_an_asr_that_does_not_punctuate_is_flagged_and_said_once(tiny_text_checkpoint):
    """Transcripts of 3+ words without punctuation are flagged one by one; once half of the latest ones (10 at
    least) have none, the pipeline logs it once and asr_unpunctuated() says so (the node's diagnostic)."""
    rec = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint, load_caption_embedder=False)
    logged = []
    pipe = EmotionPipeline(rec, (results := []).append, log=lambda level, text: logged.append((level, text)))
    punctuated = [utt(f"I have {k} things to say.") for k in range(10)]
    punctuated += [utt(w) for w in ("no", "nope", "nah", "never", "nay")]
    answer(pipe, punctuated + [utt(f"i have {k} things to say") for k in range(9)])
    assert pipe.stats.unpunctuated == 9 and not pipe.asr_unpunctuated() and not logged
    assert [("transcript-unpunctuated" in r.prediction.flags) for r in results] == [False] * 15 + [True] * 9
    assert pipe.punctuation_summary() == "9 of the latest 19 transcripts of 3+ words have no punctuation"
    answer(pipe, [utt(f"and {k} more things") for k in range(3)])
    assert pipe.asr_unpunctuated() and pipe.stats.unpunctuated == 12
    assert logged == [("warn", "10 of the latest 20 transcripts of 3+ words have no punctuation: the transcripts "
                               "come without punctuation, and the model, trained on punctuated subtitles, scores far "
                               "lower on such text (reports/replay_asr_noise.md): use an ASR that punctuates, or "
                               "restore punctuation.")]
    answer(pipe, [utt(f"Now {k} with punctuation, again.") for k in range(12)])
    assert not pipe.asr_unpunctuated() and len(logged) == 1
    assert not rec.end_unpunctuated_turns  # the pipeline's default: never


@pytest.mark.parametrize("mode", ["auto", "always", "never"])
def test_turns_without_punctuation_are_ended_in_the_prompt_once_the_asr_is_found_not_to_punctuate(
        tiny_text_checkpoint, mode):
    """end_unpunctuated_turns: auto ends each turn without punctuation with a full stop in the prompt from the
    answer after the one that showed the ASR does not punctuate (half of the latest 10+), and stops when the ASR
    punctuates again; always from the first answer; never. Each answer is the one a recognizer that ends nothing
    gives the dialogue written with the full stops (or without)."""
    rec = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint, load_caption_embedder=False)
    reference = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint, load_caption_embedder=False)
    logged = []
    pipe = EmotionPipeline(rec, (results := []).append, end_unpunctuated_turns=mode,
                           log=lambda level, text: logged.append((level, text)))
    plain = [f"i have {k} things to say" for k in range(13)]
    answer(pipe, [utt(t) for t in plain])

    def expected(k, ended):
        return reference.predict([("a", t + "." if ended else t) for t in plain[:k + 1]]).probabilities

    ended_from = {"auto": 10, "always": 0, "never": len(plain)}[mode]  # the 10th answer shows it: the 11th is ended
    for k, result in enumerate(results):
        torch.testing.assert_close(torch.tensor(result.prediction.probabilities),
                                   torch.tensor(expected(k, k >= ended_from)), rtol=0, atol=1e-5)
    assert torch.tensor(expected(12, True)).sub(torch.tensor(expected(12, False))).abs().max() > 1e-4  # it shows
    assert rec.end_unpunctuated_turns is (mode != "never")
    assert pipe.punctuation_summary().endswith("have no punctuation" + (
        "; the prompts end their turns with a full stop" if mode != "never" else ""))
    assert logged[0][1].endswith("which wins some of it back (reports/turn_ends.md).") is (mode == "auto")
    answer(pipe, [utt(f"Now {k} with punctuation, again.") for k in range(14)])
    assert rec.end_unpunctuated_turns is (mode == "always")  # auto: the ASR punctuates again
    with pytest.raises(ValueError, match="end_unpunctuated_turns must be one of"):
        pipe.end_unpunctuated_turns = "sometimes"
    from ddvlm_ros.params import PARAMS_BY_NAME
    from ddvlm_ros.pipeline import TURN_ENDS

    assert PARAMS_BY_NAME["end_unpunctuated_turns"].choices == TURN_ENDS  # the node's parameter allows these


def test_speech_in_another_language_is_flagged_and_said_once(tiny_text_checkpoint):
    """Transcripts the ASR tags with another language, or written in another script, are flagged one by one; once
    half of the latest ones (10 at least) are not English, the pipeline logs it once and speech_not_english() says
    so (the node's diagnostic). The turns stay in the dialogue context."""
    rec = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint, load_caption_embedder=False)
    logged = []
    pipe = EmotionPipeline(rec, (results := []).append, log=lambda level, text: logged.append((level, text)))
    english = [utt(f"I have {k} things to say.") for k in range(10)]
    tagged = [UtteranceIn("c", f"de{k}", "a", f"Ich habe {k} Dinge zu sagen.", 0.0, 0.0, time.monotonic(),
                          language="de-DE") for k in range(5)]
    answer(pipe, english + tagged + [utt(f"私は{k}個のことを言いたい。") for k in range(4)])
    assert pipe.stats.not_english == 9 and not pipe.speech_not_english() and not logged
    assert [("transcript-not-english" in r.prediction.flags) for r in results] == [False] * 10 + [True] * 9
    assert pipe.language_summary() == ("9 of the latest 19 transcripts are not English (the latest: Japanese kana "
                                       "script)")
    answer(pipe, [UtteranceIn("c", "ru", "a", "Привет!", 0.0, 0.0, time.monotonic(), language="ru")])
    assert pipe.speech_not_english() and len(pipe.conversations["c"].dialogue) == 20
    assert logged == [("warn", "10 of the latest 20 transcripts are not English (the latest: language tag 'ru'): "
                               "the model learnt English only (MELD), and its answers to other languages say nothing "
                               "of the speaker; they carry the flag transcript-not-english. Set the ASR to English, "
                               "or leave such speech out")]
    answer(pipe, [utt(f"Back to English, {k}.") for k in range(11)])
    assert not pipe.speech_not_english() and len(logged) == 1 and pipe.stats.not_english == 10


def test_transcripts_the_asr_was_unsure_of_are_flagged_below_the_threshold(tiny_text_checkpoint):
    """A classified transcript whose ASR confidence is below asr_min_confidence is flagged transcript-low-confidence;
    one without a confidence (0) never is, nor is the robot's own speech counted; the threshold applies at once and
    the summary gives the share below it and the median of the latest confidences."""
    from dataclasses import replace

    rec = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint, load_caption_embedder=False)
    pipe = EmotionPipeline(rec, (results := []).append, context_only_speakers="robot", asr_min_confidence=0.5)
    assert pipe.confidence_summary() == ""
    sure = [(0.9, "a"), (0.49, "a"), (0.0, "a"), (0.5, "b"), (0.2, "robot"), (1.0, "b")]
    answer(pipe, [replace(utt(f"Turn {k}.", speaker), asr_confidence=c) for k, (c, speaker) in enumerate(sure)])
    flagged = [("transcript-low-confidence" in r.prediction.flags) for r in results]
    assert flagged == [False, True, False, False, False]
    assert pipe.stats.low_confidence == 1
    assert pipe.confidence_summary() == ("1 of the latest 4 transcripts with an ASR confidence below 0.5 (p50 0.90); "
                                         "1 in all")
    pipe.asr_min_confidence = 0.95  # ros2 param set, at once
    answer(pipe, [replace(utt("Again."), asr_confidence=0.9)])
    assert "transcript-low-confidence" in results[-1].prediction.flags and pipe.stats.low_confidence == 2
    pipe.asr_min_confidence = 0.0  # never
    answer(pipe, [replace(utt("And again."), asr_confidence=0.01)])
    assert "transcript-low-confidence" not in results[-1].prediction.flags


def test_an_asr_repetition_loop_is_said_once_and_counted(tiny_text_checkpoint):
    rec = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint, load_caption_embedder=False)
    logged = []
    pipe = EmotionPipeline(rec, (results := []).append, log=lambda level, text: logged.append((level, text)))
    answer(pipe, [utt("I got the job!"), utt("Thank you. " * 40), utt("you " * 100), utt("Go! " * 10)])
    assert [("transcript-repetition-loop" in r.prediction.flags) for r in results] == [False, True, True, False]
    assert pipe.stats.repetition_loops == 2 and [t.text for t in pipe.conversations["c"].dialogue.turns][1:3] == [
        "Thank you. Thank you. Thank you.", "you you you"]
    assert logged == [("warn", "the ASR repeated itself 40 times in one transcript ('Thank you. Thank you. Thank "
                               "you.' ...), as Whisper does in a repetition loop: the repeats past 3 are cut and the "
                               "answer carries the flag transcript-repetition-loop. With Whisper: "
                               "condition_on_previous_text=False and a VAD keep it from looping")]


def test_transcripts_of_what_was_not_speech_are_skipped_and_counted(tiny_text_checkpoint):
    """Whisper writes [BLANK_AUDIO], (upbeat music) or ♪ for silence, music and noise, and on silence also the
    outros and subtitle credits of the videos it learnt from: no answer, no turn of the dialogue (the next
    utterance is predicted as if they had not come), counted as non_speech. A lone "Thank you." is speech."""
    rec = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint, load_caption_embedder=False)
    lines = [("ann", "I got the job!"), ("bob", "[BLANK_AUDIO]"), ("bob", " (upbeat music) ♪"), ("bob", "No way!"),
             ("ann", "*laughs*"), ("ann", "Thanks for watching!"), ("ann", "Way. [laughs]"),
             ("bob", "Subtitles by the Amara.org community"), ("bob", "Thank you.")]
    pipe, results = run_pipeline(rec, [utt(t, s) for s, t in lines])
    assert [r.utterance.text for r in results] == ["I got the job!", "No way!", "Way. [laughs]", "Thank you."]
    assert pipe.stats.non_speech == 5 and pipe.stats.utterances == 4 and pipe.stats.rejected == 0
    spoken = [lines[0], lines[3], lines[6], lines[8]]
    assert len(results) == 4
    for k, r in enumerate(results):
        assert r.prediction.probabilities == alike(rec.predict(spoken[: k + 1]).probabilities)


ROBOT_SAID = ["I'm so sorry to hear that. That sounds terrible!", "Would you like me to call someone for you?",
              "Okay, I will wait here with you until they come."]
HEARD_BACK = ["so sorry to hear that that sounds terrible", "would you like me to call someone for",
              "okay i will wait here with you until the income"]  # the last misheard at the end


def test_transcripts_repeating_what_the_robot_just_said_are_flagged_and_said_once_they_recur(tiny_text_checkpoint):
    """The robot's TTS comes back from an ASR that listens while the robot speaks: those transcripts repeat the
    robot's turn (context_only_speakers) just before them. Each answer says so; the third within the latest 20
    transcripts makes one WARN and hears_robot() (the node's diagnostic) true. A person's own reply is not flagged,
    and with no context_only_speakers nothing is."""
    rec = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint, load_caption_embedder=False)
    logged = []
    pipe = EmotionPipeline(rec, (results := []).append, context_only_speakers="robot",
                           log=lambda level, text: logged.append((level, text)))
    turns = []
    for k, (said, heard) in enumerate(zip(ROBOT_SAID, HEARD_BACK)):  # ann's reply again: a new end, no copy
        turns += [utt(said, "robot"), utt(heard, ""), timed("No, thank you, I am fine now.", 10.0 * (k + 1), "ann")]
    answer(pipe, turns[:5])
    assert not pipe.hears_robot() and not logged and pipe.stats.self_echoes == 2
    assert pipe.self_echo_summary() == ("2 of the latest 3 transcripts repeated what the robot had just said (the "
                                        "latest: 'would you like me to call someone for' after the robot's 'Would you "
                                        "like me to call someone for you?')")
    answer(pipe, turns[5:])
    assert [("transcript-echoes-robot" in r.prediction.flags, r.utterance.speaker_id) for r in results] == [
        (True, ""), (False, "ann")] * 3
    assert pipe.hears_robot() and pipe.stats.self_echoes == 3 and len(pipe.conversations["c"].dialogue) == 9
    assert logged == [("warn", "3 of the latest 5 transcripts repeated what the robot had just said (the latest: "
                               "'okay i will wait here with you until the income' after the robot's 'Okay, I will wait "
                               "here with you until they come.'): the ASR hears the robot's own speech, and the node "
                               "would answer how a person feels from the robot's words; those answers carry the flag "
                               "transcript-echoes-robot. Mute the ASR while the robot speaks, or cancel the echo "
                               "(AEC)")]
    answer(pipe, [utt(f"Something else, number {k}.", "ann") for k in range(19)])
    assert not pipe.hears_robot() and len(logged) == 1 and pipe.self_echo_summary() == ""
    _, plain = run_pipeline(rec, turns)  # no robot named: nothing to compare with
    assert len(plain) == 9 and not any("transcript-echoes-robot" in r.prediction.flags for r in plain)


def test_the_fused_answer_to_an_echo_carries_the_flag_too(tiny_visual_checkpoint):
    rec = EmotionRecognizer.from_checkpoint(tiny_visual_checkpoint)
    results = []
    pipe = EmotionPipeline(rec, results.append, captioner=CountingCaptioner(), context_only_speakers="robot")
    pipe.start()
    for k in range(10):
        pipe.add_frame(100.0 + 0.1 * k, __import__("numpy").zeros((8, 8, 3), "uint8"))
    pipe.submit(UtteranceIn("c", "r1", "robot", ROBOT_SAID[0], 98.0, 100.0, time.monotonic()))
    finish_streamed_utterance(pipe, results, HEARD_BACK[0])
    flagged = [(r.refined, "transcript-echoes-robot" in r.prediction.flags) for r in results]
    assert flagged == [(False, True), (True, True)]


class FailsOnMarker:
    """The real recognizer, except that a context holding the marker text fails, as a model fails on an input it
    cannot read (a tokenizer error): a failure that follows the turn while it stays in the context."""

    def __init__(self, recognizer, marker: str):
        self.recognizer, self.marker = recognizer, marker

    def predict(self, turns, caption=None):
        if any(self.marker in t.text for t in turns):
            raise RuntimeError("cannot read this input")
        return self.recognizer.predict(turns, caption)


def test_an_utterance_whose_inference_fails_is_left_out_of_the_context_so_later_ones_are_answered(
        tiny_text_checkpoint):
    rec = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint, load_caption_embedder=False)
    logged = []
    pipe = EmotionPipeline(FailsOnMarker(rec, "#unreadable#"), (results := []).append,
                           log=lambda level, text: logged.append((level, text)))
    answer(pipe, [utt("Hi there."), utt("Look at #unreadable# this."), utt("Are you okay?"), utt("Yes, thanks.")])
    assert [r.utterance.utterance_id for r in results] == ["Hi there.", "Are you okay?", "Yes, thanks."]
    assert [t.text for t in pipe.conversations["c"].dialogue.turns] == ["Hi there.", "Are you okay?", "Yes, thanks."]
    assert logged == [("error", "utterance 'Look at #unreadable# this.': inference failed (RuntimeError: cannot read "
                                "this input); left out of the dialogue context")]
    assert pipe.stats.last_error == "RuntimeError: cannot read this input"


def test_the_robots_turns_join_the_context_without_their_tts_markup(tiny_text_checkpoint):
    """The robot's speech published from its TTS input: its turn reads as people heard it (SSML, NAOqi tags gone),
    so the echo of it is told as well; a person's text keeps its '<'; markup alone is no turn."""
    rec = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint, load_caption_embedder=False)
    logged = []
    pipe = EmotionPipeline(rec, (results := []).append, context_only_speakers="robot",
                           log=lambda level, text: logged.append((level, text)))
    ssml = '<speak>I am <emphasis>so</emphasis> sorry <break time="300ms"/> to hear that.</speak>'
    naoqi = "\\rspd=90\\Shall we go? ^start(animations/Stand/Gestures/Yes_1)"
    answer(pipe, [utt(ssml, "robot"), utt("i am so sorry to hear that", ""),
                  utt("I <3 robots, no <speak> here.", "ann"), utt("\\pau=800\\", "robot"), utt(naoqi, "robot")])
    assert [t.text for t in pipe.conversations["c"].dialogue.turns] == [
        "I am so sorry to hear that.", "i am so sorry to hear that", "I <3 robots, no <speak> here.", "Shall we go?"]
    assert [("transcript-echoes-robot" in r.prediction.flags) for r in results] == [True, False]
    assert pipe.stats.context_only == 2 and pipe.stats.non_speech == 1 and pipe.stats.rejected == 0 and not logged


def test_with_drop_self_echoes_the_robots_words_heard_back_get_no_answer_and_leave_the_context(tiny_text_checkpoint):
    rec = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint, load_caption_embedder=False)
    logged = []
    pipe = EmotionPipeline(rec, (results := []).append, context_only_speakers="robot", drop_self_echoes=True,
                           log=lambda level, text: logged.append((level, text)))
    turns = []
    for k, (said, heard) in enumerate(zip(ROBOT_SAID, HEARD_BACK)):  # ann's reply again: a new end, no copy
        turns += [utt(said, "robot"), utt(heard, ""), timed("No, thank you, I am fine now.", 10.0 * (k + 1), "ann")]
    answer(pipe, turns)
    assert [r.utterance.speaker_id for r in results] == ["ann"] * 3
    assert [t.speaker for t in pipe.conversations["c"].dialogue.turns] == ["robot", "ann"] * 3
    assert pipe.stats.self_echoes == pipe.stats.self_echoes_dropped == 3 and pipe.hears_robot()
    assert [level for level, _ in logged] == ["warn"] and "they are dropped (drop_self_echoes)" in logged[0][1]


def timed(text, end, speaker="ann"):
    """A plain-text transcript that ended at ``end`` (ROS time), as the node stamps it on arrival."""
    return UtteranceIn("c", text, speaker, text, end - 4.0, end, time.monotonic())


def test_transcripts_that_are_an_asrs_partial_results_fold_into_one_turn_and_are_said_once_they_recur(
        tiny_text_checkpoint):
    """A streaming ASR's partial results on the transcript topic (Vosk's partial_result remapped onto it): each
    next version of the utterance carries transcript-extends-previous and replaces the one before in the context, so
    the dialogue holds the utterance once; the third such transcript makes one WARN and asr_partials() true. The
    next utterance, said after it, is a turn of its own."""
    rec = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint, load_caption_embedder=False)
    logged = []
    pipe = EmotionPipeline(rec, (results := []).append, log=lambda level, text: logged.append((level, text)))
    stream = [timed("Hello.", 5.0, "bob"), timed("i", 10.0), timed("i can", 10.5), timed("i can't believe", 11.0),
              timed("I can't believe it!", 11.6)]
    answer(pipe, stream[:4])
    assert pipe.stats.partial_results == 2 and not pipe.asr_partials() and not logged
    answer(pipe, stream[4:] + [timed("Where are my keys?", 16.0)])
    flagged = [("transcript-extends-previous" in r.prediction.flags) for r in results]
    assert flagged == [False, False, True, True, True, False]
    turns = [t.text for t in pipe.conversations["c"].dialogue.turns]
    assert turns == ["Hello.", "I can't believe it!", "Where are my keys?"]
    assert pipe.asr_partials() and pipe.stats.partial_results == 3
    assert logged == [("warn", "3 of the latest 5 transcripts repeated and extended the one before them (the latest: "
                               "\"I can't believe it!\" 0.6 s after \"i can't believe\"): the transcripts are an ASR's "
                               "partial results, and the node answers each from part of the words. Remap transcript to "
                               "the ASR's final results (ros-vosk: speech_recognition/final_result, not "
                               "partial_result), or send ddvlm_msgs/Utterance with is_final false on partial results; "
                               "such answers carry the flag transcript-extends-previous, and the context keeps the "
                               "latest version")]
    answer(pipe, [timed(f"Something else, number {k}.", 20.0 + 5 * k) for k in range(19)])
    assert not pipe.asr_partials() and pipe.partial_summary() == "" and len(logged) == 1


@pytest.mark.parametrize("earlier, later", [
    (timed("no", 10.0), timed("no i won't", 12.5)),  # said again, but more than 2 s later
    (timed("No!", 10.0), timed("No, I won't.", 10.5)),  # the turn before ends a sentence: a final result
    (timed("i can't", 10.0, "bob"), timed("I can't believe it!", 10.5)),  # another speaker
    (timed("where is my", 10.0), timed("Where are my keys?", 10.5)),  # not its words
    (timed("i can't", 10.0), timed("I can't believe it!", 9.5)),  # ended before it (stamps out of order)
])
def test_a_transcript_that_does_not_extend_the_turn_before_stays_its_own_turn(tiny_text_checkpoint, earlier, later):
    rec = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint, load_caption_embedder=False)
    pipe, results = run_pipeline(rec, [earlier, later])
    assert len(pipe.conversations["c"].dialogue) == 2 and pipe.stats.partial_results == 0
    assert not any("transcript-extends-previous" in r.prediction.flags for r in results)


def test_the_robots_turn_between_two_transcripts_keeps_them_apart(tiny_text_checkpoint):
    """The turn before must be the transcript's own: the robot speaking in between (robot_speech) breaks a stream."""
    rec = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint, load_caption_embedder=False)
    pipe, results = run_pipeline(rec, [timed("no", 10.0), timed("Really?", 10.5, "robot"),
                                       timed("no i won't", 11.0)], context_only_speakers="robot")
    assert [t.text for t in pipe.conversations["c"].dialogue.turns] == ["no", "Really?", "no i won't"]
    assert pipe.stats.partial_results == 0 and len(results) == 2


def test_with_quote_speech_off_no_word_a_person_said_reaches_the_log_or_the_diagnostics(tiny_text_checkpoint):
    """quote_speech: false (a study whose participants' speech must stay off the disk): the reports of an ASR
    repetition loop, an echo of the robot and a partial result give how many words were said, not the words; the
    robot's own words are still quoted. Switched back on, the same reports quote again."""
    rec = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint, load_caption_embedder=False)
    logged = []
    pipe = EmotionPipeline(rec, [].append, context_only_speakers="robot", quote_speech=False,
                           log=lambda level, text: logged.append(text))
    said = [[timed("Shall I bring you the blue cup?", 1.0 + k, "robot"),
             timed("shall i bring you the blue cup", 1.5 + k, "")] for k in range(3)]  # each heard back anew
    stream = [timed("i", 10.0), timed("i want", 10.5), timed("i want my", 11.0), timed("I want my mother!", 11.5)]
    loop = timed("Goodbye now. " * 12, 20.0, "bob")
    answer(pipe, said[0] + said[1] + said[2] + stream + [loop])
    assert pipe.stats.self_echoes == 3 and pipe.stats.partial_results == 3 and pipe.stats.repetition_loops == 1
    shown = logged + [pipe.self_echo_summary(), pipe.partial_summary()]
    assert len(logged) == 3 and not any(word in text.lower() for text in shown for word in ("mother", "goodbye"))
    assert "(the latest: <7 words> after the robot's 'Shall I bring you the blue cup?')" in pipe.self_echo_summary()
    assert pipe.partial_summary().endswith("(the latest: <4 words> 0.5 s after <3 words>)")
    assert "in one transcript (<6 words> ...)" in logged[-1]  # the loop, cut to 3 repeats
    pipe.quote_speech = True  # the node's parameter applies at once
    assert pipe.partial_summary().endswith("(the latest: 'I want my mother!' 0.5 s after 'i want my')")


def stamped(text, end, speaker):
    """An Utterance whose end stamp is the message's (an ASR's), not when it arrived."""
    return UtteranceIn("c", text, speaker, text, end - 1.0, end, time.monotonic(), end_stamped=True)


def test_a_transcript_that_arrives_after_a_later_one_is_placed_by_its_end_stamp_and_flagged(tiny_text_checkpoint):
    """Two voices, an ASR each: Bob's short reply is transcribed before Ann's long turn that it answers. Ann's turn
    goes before it in the context; its answer is read from the turns up to it, as an offline predict in the order
    said, and carries transcript-arrived-late; Bob's reply, answered before Ann's turn was known, is answered again
    from the order said (answer-revised, the same utterance); the next turn sees the order said. Said once, at
    INFO; the revision adds no latency sample (its latency counts from its transcript's arrival)."""
    rec = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint, load_caption_embedder=False)
    logged = []
    pipe = EmotionPipeline(rec, (results := []).append, log=lambda level, text: logged.append((level, text)))
    said = [("bob", "Hi."), ("ann", "I waited all night and you never even called me!"), ("bob", "Really?"),
            ("ann", "Yes, really.")]
    answer(pipe, [stamped("Hi.", 2.0, "bob"), stamped("Really?", 11.0, "bob"), stamped(said[1][1], 10.0, "ann"),
                  stamped("Yes, really.", 14.0, "ann")])
    assert [t.text for t in pipe.conversations["c"].dialogue.turns] == [text for _, text in said]
    assert [r.utterance.text for r in results] == ["Hi.", "Really?", said[1][1], "Really?", "Yes, really."]
    assert [r.prediction.flags for r in results] == [(), (), ("transcript-arrived-late",), ("answer-revised",), ()]
    assert results[1].prediction.probabilities == alike(rec.predict(said[:1] + said[2:3]).probabilities)  # before Ann's
    assert results[2].prediction.probabilities == alike(rec.predict(said[:2]).probabilities)
    assert results[3].prediction.probabilities == rec.predict(said[:3]).probabilities
    assert results[3].prediction.probabilities != results[1].prediction.probabilities
    assert results[3].utterance.utterance_id == results[1].utterance.utterance_id and not results[3].refined
    assert results[4].prediction.probabilities == rec.predict(said).probabilities
    assert pipe.stats.late_transcripts == 1 and pipe.stats.revised == 1 and len(pipe.stats.latencies_ms) == 4
    assert len(logged) == 1 and logged[0][0] == "info"
    assert "arrived after 1 turn(s) that ended after it (1.0 s later)" in logged[0][1]
    assert pipe.late_summary() == ("1 transcripts placed before turns that ended after them (the latest: before 1 "
                                   "turn(s), the latest of which ended 1.0 s after it); 1 answers to those turns "
                                   "revised")


def test_with_revise_answers_false_the_turns_a_late_transcript_goes_before_keep_their_first_answers(
        tiny_text_checkpoint):
    rec = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint, load_caption_embedder=False)
    pipe, results = run_pipeline(rec, [stamped("Really?", 11.0, "bob"), stamped("I waited all night!", 10.0, "ann")],
                                 revise_answers=False)
    assert [(r.utterance.text, r.prediction.flags) for r in results] == [
        ("Really?", ()), ("I waited all night!", ("transcript-arrived-late",))]
    assert pipe.stats.revised == 0 and pipe.late_summary().endswith("; 0 answers to those turns revised")


def test_the_robots_turn_a_late_transcript_goes_before_gets_no_answer(tiny_text_checkpoint):
    """Only the people's answered turns are answered again: the robot's turn (context only, stamped like an
    Utterance here) stays unanswered, the person's turn after it is answered again."""
    rec = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint, load_caption_embedder=False)
    robot = UtteranceIn("c", "r1", "robot", "Shall I call someone?", 10.0, 11.0, time.monotonic(), end_stamped=True)
    pipe, results = run_pipeline(rec, [robot, stamped("No.", 12.0, "bob"), stamped("Please do.", 10.5, "ann")],
                                 context_only_speakers="robot")
    assert [t.text for t in pipe.conversations["c"].dialogue.turns] == ["Please do.", "Shall I call someone?", "No."]
    assert [(r.utterance.text, r.prediction.flags) for r in results] == [
        ("No.", ()), ("Please do.", ("transcript-arrived-late",)), ("No.", ("answer-revised",))]


def test_a_fused_answer_reads_the_context_as_it_is_when_its_caption_comes_and_revisions_keep_the_caption(
        tiny_visual_checkpoint):
    """Bob's reply is captioned slowly; meanwhile Ann's late turn goes before it: Bob's revision is text only (no
    caption yet), and his fused answer, when the caption comes, reads Ann's turn too. When Carl's even later
    transcript goes before both, their revisions are fused again with their captions."""
    import numpy as np

    from ddvlm_core.captioner import Caption

    rec = EmotionRecognizer.from_checkpoint(tiny_visual_checkpoint)
    results, captioner = [], RecordingCaptioner()
    pipe = EmotionPipeline(rec, results.append, captioner=captioner, caption_timeout_s=60)
    for k in range(40):
        pipe.add_frame(97.0 + 0.1 * k, np.zeros((8, 8, 3), "uint8"))
    pipe.start()
    pipe.submit(stamped("Really?", 101.0, "bob"))
    pipe.submit(stamped("I waited all night for your call!", 100.4, "ann"))
    deadline = time.monotonic() + 20
    while len(results) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    captioner.release.set()
    while not pipe.idle() and time.monotonic() < deadline:
        time.sleep(0.01)
    pipe.submit(stamped("Hm.", 100.1, "carl"))
    while not pipe.idle() and time.monotonic() < deadline:
        time.sleep(0.01)
    pipe.stop()
    caption = Caption("The head is turning to the left.", "counting", 4)
    carl, ann, bob = turns = pipe.conversations["c"].dialogue.turns  # in the order said; tokens by arrival
    assert [t.speaker_token for t in turns] == ["<s3>", "<s2>", "<s1>"]
    got = [(r.utterance.text, r.refined, "answer-revised" in r.prediction.flags, r.prediction.probabilities)
           for r in results]
    expected = [(bob.text, False, False, rec.predict([bob]).probabilities),
                (ann.text, False, False, rec.predict([ann]).probabilities),
                (bob.text, False, True, rec.predict([ann, bob]).probabilities),
                (bob.text, True, False, rec.predict([ann, bob], caption).probabilities),
                (ann.text, True, False, rec.predict([ann], caption).probabilities),
                (carl.text, False, False, rec.predict([carl]).probabilities),
                (ann.text, True, True, rec.predict([carl, ann], caption).probabilities),
                (bob.text, True, True, rec.predict([carl, ann, bob], caption).probabilities),
                (carl.text, True, False, rec.predict([carl], caption).probabilities)]

    def without_probabilities(answer):
        return answer[:-1]

    # the two captions come in either order
    assert same_answers(sorted(got[3:5], key=without_probabilities), sorted(expected[3:5], key=without_probabilities))
    assert same_answers(got[:3] + got[5:], expected[:3] + expected[5:])


def alike(probabilities, atol: float = 1e-6):
    """``probabilities`` to ``atol``, for comparing the pipeline's answers with a predict on this thread: the same
    sums on another thread, or on buffers aligned otherwise (MKL), may differ in their last bits (3e-8 seen)."""
    return pytest.approx(probabilities, rel=0, abs=atol)


def same_answers(got: list[tuple], expected: list[tuple]) -> bool:
    """Answers (..., probabilities) equal in all but their probabilities, and those ``alike``."""
    return len(got) == len(expected) and all(g[:-1] == e[:-1] and g[-1] == alike(e[-1]) for g, e in zip(got, expected))


@pytest.mark.parametrize("first, second", [
    (timed("Hello.", 11.0, "bob"), stamped("Late but after a plain transcript.", 10.0, "ann")),  # no stamp to pass
    (stamped("Hello.", 11.0, "bob"), timed("A plain transcript.", 10.0, "ann")),  # its end is when it arrived
    (stamped("Hello.", 11.0 + 31.0, "bob"), stamped("Another clock.", 11.0, "ann")),  # over LATE_MAX_S before
])
def test_a_transcript_is_placed_only_among_stamped_turns_on_one_clock(tiny_text_checkpoint, first, second):
    rec = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint, load_caption_embedder=False)
    pipe, results = run_pipeline(rec, [first, second])
    assert [t.text for t in pipe.conversations["c"].dialogue.turns] == [first.text, second.text]
    assert pipe.stats.late_transcripts == 0 and not any(r.prediction.flags for r in results)


def delivered(text, end, speaker, source, stamped=True, received=None):
    """A transcript as it came on input ``source``."""
    return UtteranceIn("c", text, speaker, text, end - 1.0, end, time.monotonic() if received is None else received,
                       end_stamped=stamped, source=source)


def test_a_transcript_delivered_twice_is_answered_once_and_said_at_once(tiny_text_checkpoint):
    """Two publishers of one ASR's Utterances (a relay forwarding its topic while it publishes there too): each copy
    is dropped (no answer, no second turn), with one WARN naming the causes; the same words said again later, with
    their own end, are answered. A copy on another input (the ASR's text on transcript too) is dropped as well."""
    rec = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint, load_caption_embedder=False)
    logged = []
    pipe = EmotionPipeline(rec, (results := []).append, log=lambda level, text: logged.append((level, text)))
    hello, job = delivered("Hello.", 10.0, "ann", "utterance"), delivered("I got the job!", 14.0, "ann", "utterance")
    answer(pipe, [hello, hello, job, delivered("I got the job!", 14.0, "Ann", "transcript", stamped=False),
                  delivered("Hello.", 16.0, "ann", "utterance")])
    assert [r.utterance.text for r in results] == ["Hello.", "I got the job!", "Hello."]
    assert [t.text for t in pipe.conversations["c"].dialogue.turns] == ["Hello.", "I got the job!", "Hello."]
    assert pipe.stats.copies_dropped == 2 and pipe.stats.utterances == 3 and pipe.transcripts_copied() is False
    assert logged == [("warn", "1 transcripts came a second time and were dropped (the latest: 'Hello.' on utterance "
                               "again): two publishers send the transcripts (`ros2 topic info -v`: the ASR's node "
                               "started twice, or a relay or bridge forwarding its topic while it publishes there "
                               "too), or one ASR reaches two inputs (its text on transcript and its Utterance on "
                               "utterance: set the unused one's topic to ''); each copy is dropped")]
    assert pipe.copy_summary() == ("2 transcripts came a second time and were dropped (the latest: 'I got the job!' "
                                   "on transcript, first on utterance)")
    answer(pipe, [delivered("Bye now.", 20.0, "ann", "utterance")] * 2)
    assert pipe.transcripts_copied() and len(logged) == 1  # 3 of the latest 20: copies keep coming


def test_the_robots_words_are_not_compared_for_copies(tiny_text_checkpoint):
    """The robot saying what a person just said (or a person repeating the robot at once) is no copy: the robot's
    turns are context, watched for echoes instead."""
    rec = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint, load_caption_embedder=False)
    pipe, results = run_pipeline(rec, [delivered("Okay.", 10.0, "ann", "transcript", stamped=False),
                                       delivered("Okay.", 10.0, "robot", "robot_speech", stamped=False)],
                                 context_only_speakers="robot")
    assert [t.text for t in pipe.conversations["c"].dialogue.turns] == ["Okay.", "Okay."]
    assert pipe.stats.copies_dropped == 0 and len(results) == 1


def test_two_people_saying_the_same_words_at_once_are_both_answered(tiny_text_checkpoint):
    """Two ROS4HRI voices (one input, two speakers) and two inputs answering "Yes!" at once: no copy among them."""
    rec = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint, load_caption_embedder=False)
    said = [delivered("Yes!", 10.0, "anna", "voices"), delivered("Yes!", 10.0, "bob", "voices"),
            delivered("Yes!", 10.1, "carl", "utterance"), delivered("Yes!", 10.2, "", "transcript", stamped=False)]
    pipe, results = run_pipeline(rec, said)
    assert len(results) == 4 and pipe.stats.copies_dropped == 0


def test_a_pipeline_of_max_turns_k_reads_the_contexts_the_context_turns_bench_scores(tiny_text_checkpoint):
    """bench/context_turns.py scores the node's max_context_turns: each answer of a pipeline of max_turns 2 to MELD
    dev's first 12 utterances equals the recognizer's to the bench's context of that utterance, its latest 2 turns
    with the speaker tokens of the whole dialogue."""
    from ddvlm_core.meld import dialogues
    from bench_modules import load_bench

    bench = load_bench("context_turns")
    contexts, _, dialogue_ids = bench.contexts_of("dev", 2, limit=12)
    rows = [r for _, rs in sorted(dialogues("dev").items()) for r in rs][:12]
    rec = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint, load_caption_embedder=False)
    said = [UtteranceIn(f"dialogue {d}", str(k), r.speaker, r.text, 0.0, 0.0, time.monotonic())
            for k, (d, r) in enumerate(zip(dialogue_ids, rows))]
    _, results = run_pipeline(rec, said, max_turns=2)
    assert [r.utterance.utterance_id for r in results] == [u.utterance_id for u in said]
    assert [len(c) for c in contexts] == [1, 2, 1] + [2] * 9  # dev's dialogue 0 has 2 utterances
    everything = bench.contexts_of("dev", 32, limit=12)[0]
    assert [c[-1].speaker_token for c in contexts] == [c[-1].speaker_token for c in everything]
    assert [c[-2:] for c in everything] == [tuple(c) for c in contexts]
    for r, context in zip(results, contexts):
        assert r.prediction.probabilities == alike(rec.predict(context).probabilities)
