"""rosbag2 bags of MELD dialogues, written and read with rosbags, replayed through the real node."""
import json
import math
import time

import pytest

from ddvlm_core.asr_noise import unpunctuate
from ddvlm_core.inference import EmotionRecognizer
from ddvlm_core.meld import dialogues
from ddvlm_ros.bag import MAX_PAUSE_S, BagError, load_labels, read_bag, timeline, write_meld_bag
from ddvlm_ros.replay import offline_predictions, replay


@pytest.mark.parametrize("storage, suffix", [("mcap", ".mcap"), ("sqlite3", ".db3")])
def test_write_read_round_trip(tmp_path, storage, suffix):
    bag = write_meld_bag(tmp_path / "b", "test", [0, 3], storage=storage, frames="synthetic", fps=4)
    assert any(p.suffix == suffix for p in bag.iterdir())
    msgs = list(read_bag(bag))
    utts = [m for m in msgs if m.topic == "/utterance"]
    rows = dialogues("test")[0] + dialogues("test")[3]
    assert [(u.msg.speaker_id, u.msg.text) for u in utts] == [(r.speaker, r.text) for r in rows]
    assert all(u.msg.is_final for u in utts)
    assert [u.msg.conversation_id for u in utts[:1]] == ["test/dia0"]
    assert any(m.topic == "/image/compressed" for m in msgs)
    stamps = [m.timestamp for m in msgs]
    assert stamps == sorted(stamps)  # one time line
    labels = load_labels(bag)
    assert labels["test/dia0/utt0"] == rows[0].emotion and len(labels) == len(rows)


def test_frames_from_meld_raw_clips_fill_each_utterance_window_and_problem_clips_are_listed(tmp_path, capsys):
    from ddvlm_core.meld import parse_time
    from ddvlm_ros.bag import main
    from test_captions import write_clip
    from training.video import SPLIT_DIRS

    root = tmp_path / "MELD.Raw"
    (root / SPLIT_DIRS["test"]).mkdir(parents=True)
    problems = {"test/dia0_utt0": "missing", "test/dia0_utt1": "unreadable", "test/dia0_utt2": "duration_mismatch"}
    rows = dialogues("test")[0] + dialogues("test")[1]
    for r in rows:
        path = root / SPLIT_DIRS["test"] / f"dia{r.dialogue_id}_utt{r.utterance_id}.mp4"
        if problems.get(r.key) == "unreadable":
            path.write_bytes(b"not an mp4" * 50)
        elif problems.get(r.key) != "missing":
            long = 60 if problems.get(r.key) == "duration_mismatch" else 0  # MELD's test clips cut minutes too long
            write_clip(path, parse_time(r.end) - parse_time(r.start) + long)
    bag = write_meld_bag(tmp_path / "clips", "test", [0, 1], frames="clips", fps=2, clips_dir=root)
    msgs = list(read_bag(bag))

    def seconds(stamp):
        return stamp.sec + stamp.nanosec * 1e-9

    windows = {f"{m.msg.conversation_id}/{m.msg.utterance_id}": (seconds(m.msg.start), seconds(m.msg.end))
               for m in msgs if m.topic == "/utterance"}
    frames = [seconds(m.msg.header.stamp) for m in msgs if m.topic == "/image/compressed"]
    listed = {key.replace("_", "/"): status for key, status in problems.items()}
    with_frames = {key for key, (start, end) in windows.items() if any(start <= t <= end for t in frames)}
    assert with_frames == set(windows) - set(listed)  # every other utterance has frames inside its window
    assert json.loads((tmp_path / "clips.labels.json").read_text())["clip_problems"] == listed
    assert main([str(tmp_path / "again"), "--dialogues", "0,1", "--frames", "clips", "--clips-dir", str(root)]) == 0
    assert "3 utterances without camera frames" in capsys.readouterr().out
    bad_arguments = ({"frames": "clips"}, {"frames": "clips", "clips_dir": tmp_path / "none"},
                     {"frames": "synthetic", "fps": 0})
    for bad in bad_arguments:
        with pytest.raises(ValueError, match="clips_dir|fps must be > 0"):
            write_meld_bag(tmp_path / "bad", "test", [0], **bad)


def test_timeline_is_ordered_and_dialogues_do_not_overlap_or_pause_longer_than_10_s():
    t = timeline(dialogues("test"), "test")
    latest_end = {}
    for a, b in zip(t, t[1:]):
        assert b.start >= a.start and a.end > a.start
        latest_end[a.conversation_id] = max(latest_end.get(a.conversation_id, 0.0), a.end)
        if a.conversation_id != b.conversation_id:
            assert b.start > latest_end[a.conversation_id]
        else:
            assert b.start - latest_end[a.conversation_id] <= MAX_PAUSE_S + 1e-9


def test_corrupt_or_missing_bag_is_a_clear_error(tmp_path):
    bag = write_meld_bag(tmp_path / "b", "test", [0])
    mcap = next(bag.glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[:100])
    with pytest.raises(BagError, match="cannot read bag"):
        list(read_bag(bag))
    with pytest.raises(BagError, match="cannot read bag"):
        list(read_bag(tmp_path / "nothing"))


def test_a_refused_or_failed_bag_write_leaves_no_bag_folder_behind(tmp_path, monkeypatch):
    """A rerun with the value fixed must not meet 'exists': nothing is created before every message is made, and a
    write that fails halfway (here the disk fills up at the 3rd message) removes the folder it made."""
    from rosbags.rosbag2 import Writer

    for kwargs, why in [({"asr_wer": 1.5}, "WER must be in"), ({"frames": "video"}, "frames must be"),
                        ({"dialogue_ids": [99999]}, "no dialogues")]:
        with pytest.raises(ValueError, match=why):
            write_meld_bag(tmp_path / "refused", "test", **{"dialogue_ids": [0], **kwargs})
        assert not (tmp_path / "refused").exists()
    (tmp_path / "taken").mkdir()
    with pytest.raises(ValueError, match="exists"):
        write_meld_bag(tmp_path / "taken", "test", [0])
    written = []

    def write(self, connection, timestamp, data):
        if len(written) == 2:
            raise OSError(28, "No space left on device")
        written.append(timestamp)

    monkeypatch.setattr(Writer, "write", write)
    with pytest.raises(OSError, match="No space"):
        write_meld_bag(tmp_path / "full_disk", "test", [0])
    assert len(written) == 2 and not (tmp_path / "full_disk").exists()
    monkeypatch.undo()
    assert len(list(read_bag(write_meld_bag(tmp_path / "full_disk", "test", [0])))) == len(dialogues("test")[0])


def test_asr_noise_changes_the_transcripts_but_not_the_labels(tmp_path):
    bag = write_meld_bag(tmp_path / "noisy", "test", [0, 1, 2], asr_wer=0.3, seed=1)
    side = json.loads((tmp_path / "noisy.labels.json").read_text())
    changed = [v for v in side["utterances"].values() if v["asr_text"] != v["text"]]
    assert changed and side["asr_wer"] == 0.3
    texts = [m.msg.text for m in read_bag(bag) if m.topic == "/utterance"]
    assert texts == [v["asr_text"] for v in side["utterances"].values()]


def test_a_bag_of_an_asr_without_punctuation_has_lower_case_unpunctuated_transcripts(tmp_path):
    bag = write_meld_bag(tmp_path / "plain", "test", [0, 1], asr_wer=0.0, asr_punctuation=False)
    side = json.loads((tmp_path / "plain.labels.json").read_text())
    texts = [m.msg.text for m in read_bag(bag) if m.topic == "/utterance"]
    assert side["asr_punctuation"] is False and texts == [v["asr_text"] for v in side["utterances"].values()]
    assert texts == [unpunctuate(v["text"]) for v in side["utterances"].values()] != [
        v["text"] for v in side["utterances"].values()]
    assert not any(c in t for t in texts for c in ".,!?") and all(t == t.lower() for t in texts)


def test_replay_answers_each_final_utterance_once_and_matches_the_offline_evaluator(tmp_path, tiny_text_checkpoint):
    """Dialogue 218's MELD times put 20 minutes between its first two turns and 2 between the next two: the bag
    shortens those silences, so that the node (idle_timeout_s 120 s, on the bag's clock) keeps one context and
    gives its three speakers <s1>, <s2>, <s3>, as training and the offline evaluator do."""
    bag = write_meld_bag(tmp_path / "r", "test", [0, 1, 2, 218], frames="synthetic", fps=3)
    result = replay(bag, {"model_dir": tiny_text_checkpoint, "input_timeout_s": 0.0}, speed=40.0)
    labels = load_labels(bag)
    score = result.score(labels)
    assert score["utterances"] == len(labels) == score["answered"] and score["unanswered"] == 0
    assert score["duplicates"] == 0
    assert [result.prediction(f"test/dia218/utt{u}").speaker_token for u in range(3)] == ["<s1>", "<s2>", "<s3>"]
    assert result.node_status["conversations_reset"] == "0"
    recognizer = EmotionRecognizer.from_checkpoint(tiny_text_checkpoint, load_caption_embedder=False)
    offline = offline_predictions(bag, recognizer)
    assert {k: result.prediction(k).top_label for k in result.finals} == offline
    from ddvlm_core.labels import LABELS, label_id
    from ddvlm_core.metrics import metrics

    keys = list(offline)
    gold, pred = [label_id(labels[k]) for k in keys], [LABELS.index(offline[k]) for k in keys]
    expected = metrics(gold, pred)
    assert {k: score[k] for k in expected} == expected
    from ddvlm_core.metrics import bootstrap_wa_f1

    assert score["wa_f1_interval"] == bootstrap_wa_f1(gold, pred)  # 4 conversations: too few, utterances resampled
    assert score["wa_f1_interval"]["unit"] == "utterance" and score["wa_f1_interval"]["units"] == len(keys)


def test_the_reports_wa_f1_interval_resamples_whole_conversations(tmp_path, tiny_text_checkpoint):
    """Eleven MELD dialogues (ten of one utterance, dialogue 0 of several): the bootstrap draws whole conversations,
    the report says over how many."""
    from ddvlm_core.labels import label_id
    from ddvlm_core.metrics import bootstrap_wa_f1
    from ddvlm_ros.replay import main

    bag = write_meld_bag(tmp_path / "eleven", "test", [0, 19, 26, 31, 82, 91, 136, 148, 235, 236, 248])
    assert main([str(bag), "--model-dir", tiny_text_checkpoint, "--speed", "40", "--param", "input_timeout_s:=0.0",
                 "--answers", str(tmp_path / "a.jsonl"), "--report", str(tmp_path / "r.md")]) == 0
    records = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    gold = [label_id(r["gold"]) for r in records]
    pred = [label_id(r["text"]["top_label"]) for r in records]
    interval = json.loads((tmp_path / "r.json").read_text())["score"]["wa_f1_interval"]
    assert interval == bootstrap_wa_f1(gold, pred, [r["key"].rpartition("/")[0] for r in records])
    assert interval["unit"] == "group" and interval["units"] == 11 and len(records) > 11
    assert (f"(95 % interval {interval['low']:.2f} to {interval['high']:.2f}, bootstrap over its 11 conversations)"
            in (tmp_path / "r.md").read_text())
    # acting only on confident answers: how many each threshold keeps, and how often those are right
    rows = json.loads((tmp_path / "r.json").read_text())["score"]["calibration"]["coverage"]
    for row in rows:
        kept = [r for r in records if max(r["text"]["probabilities"].values()) >= row["threshold"]]
        assert row["n"] == len(kept) and row["share"] == pytest.approx(100 * len(kept) / len(records))
        right = [r["gold"] == r["text"]["top_label"] for r in kept]
        assert row["accuracy"] == (pytest.approx(100 * sum(right) / len(right)) if kept else None)
    first = f"| {rows[0]['threshold']:.1f} | {rows[0]['share']:.1f} % ({rows[0]['n']}) |"
    assert first in (tmp_path / "r.md").read_text()


def test_committed_sample_bag_replays_through_the_default_checkpoint():
    """What `make demo` runs, in the suite, under simulated time at 50x."""
    from pathlib import Path

    from ddvlm_core.cli import DEFAULT_CHECKPOINT

    bag = Path(__file__).resolve().parents[1] / "data" / "sample_bag"
    assert sum(p.stat().st_size for p in bag.iterdir()) < 5 * 2**20
    result = replay(bag, {"model_dir": str(DEFAULT_CHECKPOINT), "input_timeout_s": 0.0}, speed=50.0)
    score = result.score(load_labels(bag))
    assert score["utterances"] == 38 and score["unanswered"] == 0 and score["duplicates"] == 0
    assert 0 <= score["wa_f1"] <= 100 and score["latency_ms"]["p50"] > 0
    # recorded before Utterance had confidence: read by the bag's own definition (make demo says so)
    assert "/utterance (ddvlm_msgs/msg/Utterance: no confidence)" in result.recorded_types


def write_robot_bag(path, lines, fps=4.0, camera_clock_offset_s=0.0, said=None, times=None, vad=False,
                    robot_speaking=False):
    """A bag as `ros2 bag record` leaves it on a robot: ASR text on /asr/text, JPEG frames on
    /camera/color/image_raw/compressed and a topic the node has no use for; no labels side file.
    ``camera_clock_offset_s``: the camera stamps its frames with a clock that far from the robot's. ``said``:
    line index -> what the robot said 1 s before that line, on /speech (naoqi_driver's TTS input). ``times``: each
    line's time (default: every 2 s from 102 s). ``vad``: respeaker_ros' VAD on /is_speeching (std_msgs/Bool), on
    from 1.8 s to 0.6 s before each line. ``robot_speaking``: its TTS says it speaks on /tts/speaking (std_msgs/Bool)
    from 0.8 s to 0.1 s before each line it said something before."""
    import cv2
    import numpy as np
    from rosbags.rosbag2 import Writer

    from ddvlm_ros.bag import _stamp, synthetic_frame, typestore

    store = typestore()
    String, Header = store.types["std_msgs/msg/String"], store.types["std_msgs/msg/Header"]
    Compressed = store.types["sensor_msgs/msg/CompressedImage"]
    with Writer(path, version=9) as writer:
        asr = writer.add_connection("/asr/text", "std_msgs/msg/String", typestore=store)
        cam = writer.add_connection("/camera/color/image_raw/compressed", "sensor_msgs/msg/CompressedImage",
                                    typestore=store)
        status = writer.add_connection("/robot/status", "std_msgs/msg/String", typestore=store)
        speech = writer.add_connection("/speech", "std_msgs/msg/String", typestore=store) if said else None
        heard = writer.add_connection("/is_speeching", "std_msgs/msg/Bool", typestore=store) if vad else None
        tts = writer.add_connection("/tts/speaking", "std_msgs/msg/Bool", typestore=store) if robot_speaking else None
        events = []
        for k, line in enumerate(lines):
            t = times[k] if times else 100.0 + 2.0 * (k + 1)
            events.append((t, asr, store.serialize_cdr(String(data=line), "std_msgs/msg/String")))
            if k in (said or {}):
                events.append((t - 1.0, speech, store.serialize_cdr(String(data=said[k]), "std_msgs/msg/String")))
                for when, on in ((t - 0.8, True), (t - 0.1, False)) if robot_speaking else ():
                    events.append((when, tts, store.serialize_cdr(store.types["std_msgs/msg/Bool"](data=on),
                                                                  "std_msgs/msg/Bool")))
            events.append((t - 0.5, status, store.serialize_cdr(String(data="ok"), "std_msgs/msg/String")))
            for when, on in ((t - 1.8, True), (t - 0.6, False)) if vad else ():
                events.append((when, heard, store.serialize_cdr(store.types["std_msgs/msg/Bool"](data=on),
                                                                "std_msgs/msg/Bool")))
            for j in range(int(2 * fps)):
                ts = t - 2.0 + j / fps
                jpg = cv2.imencode(".jpg", synthetic_frame(j))[1]
                frame = Compressed(header=Header(stamp=_stamp(store, ts + camera_clock_offset_s), frame_id="camera"),
                                   format="jpeg",
                                   data=np.frombuffer(jpg.tobytes(), np.uint8))
                events.append((ts, cam, store.serialize_cdr(frame, "sensor_msgs/msg/CompressedImage")))
        for t, connection, data in sorted(events, key=lambda e: e[0]):
            writer.write(connection, int(t * 1e9), data)
    return path


ROBOT_LINES = ["Ross: I got the job!", "Rachel: No way!", "Ross: They called this morning.", "Rachel: Oh my God."]


def test_robot_bag_replays_through_remaps_without_labels_and_writes_answers(tmp_path, tiny_text_checkpoint, capsys):
    from ddvlm_ros.replay import main

    bag = write_robot_bag(tmp_path / "robot", ROBOT_LINES)
    remaps = ["--remap", "/asr/text:=transcript", "--remap", "/camera/color/image_raw/compressed:=image/compressed"]
    out = tmp_path / "out"
    assert main([str(bag), "--model-dir", tiny_text_checkpoint, "--speed", "20", *remaps,
                 "--answers", str(out / "answers.jsonl"), "--report", str(out / "replay.md")]) == 0
    # a progress bar over the 4 transcripts: the 32 camera frames are not played to a node without a captioner
    assert "replay:   0%|          | 0/4 " in capsys.readouterr().err
    records = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert [r["key"] for r in records] == ["default/1", "default/2", "default/3", "default/4"]
    assert [r["speaker_id"] for r in records] == ["Ross", "Rachel", "Ross", "Rachel"]
    assert [r["speaker_token"] for r in records] == ["<s1>", "<s2>", "<s1>", "<s2>"]
    assert all(r["gold"] is None and abs(sum(r["text"]["probabilities"].values()) - 1) < 1e-4 for r in records)
    report = (out / "replay.md").read_text()
    assert "answered 4, unanswered 0" in report and "no labels for these utterances" in report
    assert "- camera: the bag's 32 frames were not played: without a captioner the node answers from text" in report
    assert json.loads((out / "replay.json").read_text())["remaps"]["/asr/text"] == "transcript"
    assert main([str(bag), "--model-dir", tiny_text_checkpoint, "--speed", "20", *remaps,
                 "--record", str(out / "with_answers")]) == 0
    recorded = list(read_bag(out / "with_answers"))
    answers = [m for m in recorded if m.topic == "/emotion"]
    assert [m.msg.speaker_id for m in answers] == ["Ross", "Rachel", "Ross", "Rachel"]
    assert all(abs(sum(m.msg.probabilities) - 1) < 1e-4 for m in answers)
    asr = [m for m in recorded if m.topic == "/asr/text"]
    assert [m.msg.data for m in asr] == ROBOT_LINES and {m.topic for m in recorded} >= {
        "/robot/status", "/camera/color/image_raw/compressed"}
    assert all(a.timestamp >= t.timestamp for a, t in zip(answers, asr))  # each answer after its transcript
    gold = tmp_path / "gold.json"  # labels added afterwards, e.g. by annotating answers.jsonl
    gold.write_text(json.dumps({r["key"]: label for r, label in zip(records, ["joy", "surprise", "neutral", "joy"])}))
    assert main([str(bag), "--model-dir", tiny_text_checkpoint, "--speed", "20", *remaps, "--labels", str(gold),
                 "--report", str(out / "scored.md")]) == 0
    scored = json.loads((out / "scored.json").read_text())["score"]
    assert scored["n"] == 4 and scored["answered"] == 4 and "wa_f1" in scored
    # the deployed configuration on the same bag: node parameters as ros2 run -p gives them
    assert main([str(bag), "--model-dir", tiny_text_checkpoint, "--speed", "20", *remaps, "--labels", str(gold),
                 "--param", "quantized:=true", "--param", "woq_kernel:=dequant", "--param", "frame_buffer_s:=5",
                 "--report", str(out / "quantized.md")]) == 0
    quantized = json.loads((out / "quantized.json").read_text())
    assert quantized["params"]["quantized"] is True and quantized["params"]["frame_buffer_s"] == 5.0
    assert quantized["score"]["answered"] == 4
    # Rachel as the robot (context_only_speakers): her lines are context, not utterances to answer or wait for
    assert main([str(bag), "--model-dir", tiny_text_checkpoint, "--speed", "20", *remaps, "--param",
                 "context_only_speakers:=Rachel", "--answers", str(out / "robot.jsonl"),
                 "--report", str(out / "robot.md")]) == 0
    records = [json.loads(line) for line in (out / "robot.jsonl").read_text().splitlines()]
    assert [(r["key"], r["speaker_id"], r.get("context_only", False), r["transcript"]) for r in records] == [
        ("default/1", "Ross", False, "I got the job!"), ("default/2", "Rachel", True, "No way!"),  # her turns are in
        ("default/3", "Ross", False, "They called this morning."), ("default/4", "Rachel", True, "Oh my God.")]  # the
    assert [r["gold"] for r in records] == [None] * 4 and records[1]["prediction"] is None  # file: context, no answer
    assert "answered 2, unanswered 0" in (out / "robot.md").read_text()
    for refused, message in (
            (["--record", str(out / "with_answers")], "exists already"),  # before the replay, not after
            (["--speed", "0"], "--speed must be > 0"), (["--speed", "-4"], "--speed must be > 0"),
            (["--max-in-flight", "-1"], "--max-in-flight must be >= 0"),
            (["--model-dir", str(tmp_path / "none")], "the emotion node did not configure: FileNotFoundError"),
            (["--model-dir", tiny_text_checkpoint, "--captioner", "bogus"], "parameter 'captioner' must be one of")):
        with pytest.raises(SystemExit) as stop:
            main([str(bag), *remaps, *refused])
        assert stop.value.code == 2 and message in capsys.readouterr().err  # one line, no traceback


def test_the_replay_report_counts_transcripts_without_punctuation(tmp_path, tiny_text_checkpoint, capsys):
    """An ASR that does not punctuate: each such answer carries the flag transcript-unpunctuated, and the report
    says how many there were and what it costs."""
    from ddvlm_ros.replay import main

    lines = [f"{speaker}: {unpunctuate(text)}" for speaker, _, text in (line.partition(": ") for line in ROBOT_LINES)]
    bag = write_robot_bag(tmp_path / "plain", lines, fps=0.0)
    out = tmp_path / "out"
    assert main([str(bag), "--model-dir", tiny_text_checkpoint, "--speed", "20", "--remap", "/asr/text:=transcript",
                 "--answers", str(out / "answers.jsonl"), "--report", str(out / "replay.md")]) == 0
    records = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert [("transcript-unpunctuated" in r["text"]["flags"]) for r in records] == [True, False, True, True]
    note = "transcripts: 3 of the 3 answered ones of 3+ words have no punctuation (an ASR that does not punctuate?"
    assert note in (out / "replay.md").read_text() and note in capsys.readouterr().out
    assert "transcripts:" not in report_of_robot_bag(tmp_path, tiny_text_checkpoint)


def test_the_replay_report_counts_transcripts_in_another_language_and_repetition_loops(tmp_path, tiny_text_checkpoint,
                                                                                       capsys):
    """Whisper, left to detect the language, transcribes a short English clip in another one now and then, and on
    noise it loops: the answers carry the flags transcript-not-english and transcript-repetition-loop, and the
    report counts them."""
    from ddvlm_ros.replay import main

    lines = ROBOT_LINES[:2] + ["Ross: Они позвонили сегодня утром.", "Rachel: " + "Oh my God. " * 20]
    bag = write_robot_bag(tmp_path / "whisper", lines, fps=0.0)
    out = tmp_path / "out"
    assert main([str(bag), "--model-dir", tiny_text_checkpoint, "--speed", "20", "--remap", "/asr/text:=transcript",
                 "--answers", str(out / "answers.jsonl"), "--report", str(out / "replay.md")]) == 0
    records = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert [r["text"]["flags"] for r in records] == [[], [], ["transcript-not-english"],
                                                     ["transcript-repetition-loop"]]
    notes = ["transcripts: 1 of the 4 answered ones are not English; the model reads English only, and those answers "
             "say nothing of the speaker (flag transcript-not-english)",
             "transcripts: 1 of the 4 answered ones were ASR repetition loops, cut to 3 repeats (flag "
             "transcript-repetition-loop)"]
    report, printed = (out / "replay.md").read_text(), capsys.readouterr().out
    assert all(note in report and note in printed for note in notes)
    english = report_of_robot_bag(tmp_path, tiny_text_checkpoint)
    assert "not English" not in english and "repetition" not in english


@pytest.mark.parametrize("robot_on", ["transcript", "robot_speech", "dropped"])
def test_the_replay_report_counts_transcripts_repeating_the_robot(tmp_path, tiny_text_checkpoint, capsys, robot_on):
    """A robot bag whose ASR heard the robot's TTS: what the robot said is on the ASR's topic as speaker robot (a
    context-only speaker) or on naoqi_driver's /speech (the robot_speech input). The answer to the echo carries
    transcript-echoes-robot, the report counts such answers, and the keys are the node's numbering."""
    from ddvlm_ros.replay import main

    said = "\\rspd=90\\ Shall I bring you the blue cup?"
    lines = ["shall i bring you the blue cup", "Ann: Yes, please."]
    if robot_on == "transcript":
        bag = write_robot_bag(tmp_path / "echo", [f"robot: {said}"] + lines, fps=0.0)
        extra = ["--remap", "/asr/text:=transcript", "--param", "context_only_speakers:=robot"]
    else:
        bag = write_robot_bag(tmp_path / "echo", lines, fps=0.0, said={0: said})
        extra = ["--remap", "/asr/text:=transcript", "--remap", "/speech:=robot_speech"]
    out = tmp_path / "out"
    if robot_on == "dropped":  # the node withholds the echo: one utterance unanswered, and the report says why
        assert main([str(bag), "--model-dir", tiny_text_checkpoint, "--speed", "20", *extra, "--param",
                     "drop_self_echoes:=true", "--report", str(out / "replay.md")]) == 0
        report = (out / "replay.md").read_text()
        note = "transcripts: 1 repeated what the robot had just said and were dropped (drop_self_echoes; counted"
        assert "answered 1, unanswered 1" in report and f"{note} unanswered)" in report
        return
    assert main([str(bag), "--model-dir", tiny_text_checkpoint, "--speed", "20", *extra,
                 "--answers", str(out / "answers.jsonl"), "--report", str(out / "replay.md")]) == 0
    robot_turn, *records = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert (robot_turn["key"], robot_turn["speaker_id"], robot_turn["context_only"], robot_turn["transcript"]) == (
        "default/1", "robot", True, "Shall I bring you the blue cup?")  # as the node read it: its TTS markup out
    assert [r["key"] for r in records] == ["default/2", "default/3"]
    assert [("transcript-echoes-robot" in r["text"]["flags"]) for r in records] == [True, False]
    note = ("transcripts: 1 of the 2 answered ones repeated what the robot had just said: its own speech heard back? "
            "(flag transcript-echoes-robot)")
    assert note in (out / "replay.md").read_text() and note in capsys.readouterr().out
    assert "echoes-robot" not in report_of_robot_bag(tmp_path, tiny_text_checkpoint)


def test_the_robots_own_turns_keep_a_conversations_context_in_the_answers_as_in_the_node(tmp_path,
                                                                                         tiny_text_checkpoint):
    """With idle_timeout_s 3.5: Ann speaks at 102 s, the robot at 105 s, Ben at 106 s, Ann again at 112 s. The node
    begins a new context only at 112 s: the robot's turn kept the conversation going, though 4 s passed between Ann's
    and Ben's words. The answers file's contexts, which a corpus cuts its dialogues by, are the node's."""
    from ddvlm_core.meld import read_split
    from ddvlm_ros.corpus import main as corpus
    from ddvlm_ros.replay import answer_records, replay

    lines = ["Ann: I got the job!", "Ben: No way, really?", "Ann: Yes, since Monday.", "Ben: Wow."]
    bag = write_robot_bag(tmp_path / "robot", lines, fps=0.0, said={1: "Shall I bring some cake?"},
                          times=[102.0, 106.0, 112.0, 113.0])
    result = replay(bag, {"model_dir": tiny_text_checkpoint, "input_timeout_s": 0.0, "idle_timeout_s": 3.5},
                    speed=20.0, remaps={"/asr/text": "transcript", "/speech": "robot_speech"})
    assert result.node_status["conversations_reset"] == "1"  # the node: one new context, at 112 s
    records = answer_records(result, dict(zip(result.finals, ["joy", "surprise", "joy", "surprise"])))
    assert [(r["speaker_id"], r["context"]) for r in records] == [
        ("Ann", "default#0"), ("robot", "default#0"), ("Ben", "default#0"), ("Ann", "default#1"), ("Ben", "default#1")]
    # what the node read: Ben's answer at 106 s saw Ann's and the robot's turns (his token is the third speaker's)
    assert [r["speaker_token"] for r in records if not r.get("context_only")] == ["<s1>", "<s3>", "<s1>", "<s2>"]
    answers = tmp_path / "S01.jsonl"
    answers.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    for name in ("S02", "S03"):
        (tmp_path / f"{name}.jsonl").write_text(answers.read_text(encoding="utf-8"), encoding="utf-8")
    assert corpus([str(tmp_path / f"S0{k}.jsonl") for k in (1, 2, 3)] + [
        "--out", str(tmp_path / "corpus"), "--dev", "S02", "--test", "S03"]) == 0
    assert [(r.dialogue_id, r.speaker) for r in read_split("test", tmp_path / "corpus")] == [
        (0, "Ann"), (0, "robot"), (0, "Ben"), (1, "Ann"), (1, "Ben")]
    from ddvlm_core.speech_timing import spoken_s
    from ddvlm_ros.corpus import clock

    robot = [(r.start, r.end) for r in read_split("test", tmp_path / "corpus") if r.speaker == "robot"]
    assert robot == [(clock(3.5), clock(3.5 + spoken_s("Shall I bring some cake?")))]  # at 105 s of a bag from 101.5 s
    from ddvlm_core.labels import LABELS
    from training.evaluate import evaluate_checkpoint

    scored = evaluate_checkpoint(tiny_text_checkpoint, ("test",), corpus=tmp_path / "corpus", log=lambda *_: None)
    answered = [LABELS.index(r["prediction"]) for r in records if not r.get("context_only")]
    assert scored["splits"]["test"]["predictions"] == answered  # the node's prompts


def test_a_robot_turns_span_is_when_its_robot_speaking_says_it_spoke_else_estimated_from_its_words():
    """Known answers of robot_span: the first robot_speaking interval begun within ROBOT_LEAD_S before to
    ROBOT_DELAY_S after the TTS got the text, joined to the next across a pause under ROBOT_PAUSE_S; none: from
    when the TTS got it, for as long as its words take."""
    from ddvlm_core.speech_timing import spoken_s
    from ddvlm_core.voice_activity import longest_s
    from ddvlm_ros.replay import robot_span, robot_spans

    said, speaking = "Shall I bring some cake?", [[10.2, 11.0], [11.5, 12.0], [13.5, 14.0]]
    assert robot_span(10.0, said, speaking) == (10.2, 12.0)  # 0.5 s pause: one turn; 1.5 s: not
    assert robot_span(10.0, said, speaking, until=11.4) == (10.2, 11.0)  # its next turn came meanwhile
    assert robot_span(10.6, said, speaking) == (10.2, 12.0)  # its TTS said so 0.4 s before the text was recorded
    assert robot_span(10.0, said, speaking, after=11.0) == (11.5, 12.0)  # the turn before spoke until 11 s
    assert robot_span(20.0, said, speaking) == (20.0, 20.0 + spoken_s(said))  # nothing begun by 23 s
    assert robot_span(6.0, said, speaking) == (6.0, 6.0 + spoken_s(said))  # 10.2 s: more than 3 s later
    assert robot_span(10.0, said, [[10.2, None]]) == (10.2, 10.2 + longest_s(said))  # still speaking at the end
    assert robot_spans([("d/1", 10.0, said), ("d/3", 11.2, "Cake!")], speaking, 10.0) == {
        "d/1": (pytest.approx(0.2), pytest.approx(1.0)), "d/3": (pytest.approx(1.5), pytest.approx(2.0))}


def test_the_robots_turns_in_the_answers_have_the_span_its_robot_speaking_gave(tmp_path, tiny_text_checkpoint):
    """The robot says "Shall I bring some cake?" at 105 s (the bag begins at 101.5 s) and its TTS says it speaks from
    105.2 s to 105.9 s: that is its turn's span in the answers, read though a node without a captioner does not read
    robot_speaking; without it, the span is estimated from its words from 105 s."""
    from ddvlm_core.speech_timing import spoken_s
    from ddvlm_ros.replay import answer_records, replay

    said = "Shall I bring some cake?"
    lines = ["Ann: I got the job!", "Ben: No way, really?"]
    bag = write_robot_bag(tmp_path / "robot", lines, fps=0.0, said={1: said}, times=[102.0, 106.0],
                          robot_speaking=True)
    spans = {}
    for name, remaps in (("speaking", {"/tts/speaking": "robot_speaking"}), ("words", {})):
        result = replay(bag, {"model_dir": tiny_text_checkpoint, "input_timeout_s": 0.0}, speed=20.0,
                        remaps={"/asr/text": "transcript", "/speech": "robot_speech", **remaps})
        records = answer_records(result, {})
        assert [(r["speaker_id"], r.get("context_only", False)) for r in records] == [
            ("Ann", False), ("robot", True), ("Ben", False)]
        spans[name] = records[1]["span_s"]
        assert records[2]["span_s"] == list(result.spans[result.finals[1]])  # Ben's, as before
    assert spans["speaking"] == [pytest.approx(105.2 - 101.5), pytest.approx(105.9 - 101.5)]
    assert spans["words"] == [pytest.approx(105.0 - 101.5), pytest.approx(105.0 - 101.5 + spoken_s(said))]


def test_the_replay_report_counts_transcripts_that_are_partial_results(tmp_path, tiny_text_checkpoint, capsys):
    """A bag whose ASR topic carries its partial results (ros-vosk's partial_result recorded as the transcript): the
    next versions of one utterance carry transcript-extends-previous, and the report says what to remap."""
    from ddvlm_ros.replay import main

    lines = ["Ann: i", "Ann: i can't", "Ann: I can't believe it!", "Bob: What happened?"]
    bag = write_robot_bag(tmp_path / "partials", lines, fps=0.0, times=[102.0, 102.5, 103.0, 106.0])
    out = tmp_path / "out"
    assert main([str(bag), "--model-dir", tiny_text_checkpoint, "--speed", "20", "--remap", "/asr/text:=transcript",
                 "--answers", str(out / "answers.jsonl"), "--report", str(out / "replay.md")]) == 0
    records = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert [("transcript-extends-previous" in r["text"]["flags"]) for r in records] == [False, True, True, False]
    note = ("transcripts: 2 of the 4 answered ones repeated and extended the one before them, as an ASR's partial "
            "results do (remap the topic of its final results) (flag transcript-extends-previous)")
    assert note in (out / "replay.md").read_text() and note in capsys.readouterr().out
    assert "extends-previous" not in report_of_robot_bag(tmp_path, tiny_text_checkpoint)


def test_the_replay_report_counts_transcripts_that_arrived_after_later_ones(tmp_path, tiny_text_checkpoint, capsys):
    """A bag recorded from two ASRs, one per voice: the bag's times are when each Utterance arrived, their stamps
    when it was said, and Bob's short reply was recorded before Ann's long turn that it answers. That turn's answer
    carries transcript-arrived-late, Bob's reply is answered again (answer-revised), and the report says so."""
    from rosbags.rosbag2 import Writer

    from ddvlm_ros.bag import UTTERANCE_TOPIC, UTTERANCE_TYPE, _stamp, typestore
    from ddvlm_ros.replay import main

    store = typestore()
    Utterance, Header = store.types[UTTERANCE_TYPE], store.types["std_msgs/msg/Header"]
    said = [("ann", "Hi Bob.", 100.0, 101.0, 101.8), ("ann", "I waited all night for your call!", 102.0, 106.0, 108.0),
            ("bob", "Really?", 106.3, 107.0, 107.6), ("ann", "Yes, really.", 108.3, 109.5, 110.2)]
    bag = tmp_path / "two_asrs"
    with Writer(bag, version=9) as writer:
        connection = writer.add_connection(UTTERANCE_TOPIC, UTTERANCE_TYPE, typestore=store)
        for k, (speaker, text, start, end, arrived) in sorted(enumerate(said), key=lambda e: e[1][4]):
            msg = Utterance(header=Header(stamp=_stamp(store, end), frame_id="mic"), start=_stamp(store, start),
                            end=_stamp(store, end), conversation_id="lab", utterance_id=f"u{k}", speaker_id=speaker,
                            text=text, is_final=True, confidence=0.0)
            writer.write(connection, round(arrived * 1e9), store.serialize_cdr(msg, UTTERANCE_TYPE))
    out = tmp_path / "out"
    assert main([str(bag), "--model-dir", tiny_text_checkpoint, "--speed", "20",
                 "--answers", str(out / "answers.jsonl"), "--report", str(out / "replay.md")]) == 0
    records = {(r := json.loads(line))["key"]: r for line in (out / "answers.jsonl").read_text().splitlines()}
    assert {k: "transcript-arrived-late" in r["text"]["flags"] for k, r in records.items()} == {
        "lab/u0": False, "lab/u1": True, "lab/u2": False, "lab/u3": False}
    assert {k: r["revised"] and r["revised"]["flags"] for k, r in records.items()} == {
        "lab/u0": None, "lab/u1": None, "lab/u2": ["answer-revised"], "lab/u3": None}  # Bob's, answered before Ann's
    assert records["lab/u2"]["revised"]["probabilities"] != records["lab/u2"]["text"]["probabilities"]
    note = ("transcripts: 1 of the 4 answered ones arrived after turns that ended after them (an ASR per voice?) and "
            "were placed before them by their end stamps (flag transcript-arrived-late); 1 utterances answered again "
            "with them in their context, scored by their latest answer (flag answer-revised)")
    assert note in (out / "replay.md").read_text() and note in capsys.readouterr().out
    assert "arrived-late" not in report_of_robot_bag(tmp_path, tiny_text_checkpoint)
    assert not (tmp_path / "english.confusion.png").exists()  # no labels, no scores: no confusion matrix


def test_a_bag_with_every_transcript_twice_is_answered_once_per_utterance(tmp_path, tiny_text_checkpoint, capsys):
    """A robot bag recorded while two publishers sent the ASR's text (its node and a relay): each line is in it twice,
    at one time. Each utterance is answered once, and the report says the copies were dropped."""
    from ddvlm_ros.replay import main

    lines = ["Ann: I got the job!", "Bob: No way!", "Ann: They called this morning."]
    bag = write_robot_bag(tmp_path / "twice", [line for line in lines for _ in range(2)], fps=0.0,
                          times=[t for t in (102.0, 104.0, 106.0) for _ in range(2)])
    out = tmp_path / "out"
    assert main([str(bag), "--model-dir", tiny_text_checkpoint, "--speed", "20", "--remap", "/asr/text:=transcript",
                 "--answers", str(out / "answers.jsonl"), "--report", str(out / "replay.md")]) == 0
    records = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert [r["key"] for r in records if r["text"]] == ["default/1", "default/3", "default/5"]
    note = ("transcripts: 3 transcripts came a second time and were dropped (the latest: 'They called this morning.' "
            "on transcript again); a copy of a text transcript (numbered by the node) counts as unanswered")
    assert note in (out / "replay.md").read_text() and note in capsys.readouterr().out
    assert "second time" not in report_of_robot_bag(tmp_path, tiny_text_checkpoint)


def test_a_bag_of_an_asrs_json_results_replays_its_final_results_only(tmp_path, tiny_text_checkpoint):
    """A robot bag whose ASR topic carries Vosk's JSON (partial results, a final one, silence): the replay numbers
    only what the node answers, so every final result has its answer and none is counted unanswered."""
    from ddvlm_ros.replay import main

    lines = ['{\n  "partial" : "i can"\n}', '{\n  "text" : "i can\'t believe it"\n}', '{"text" : ""}',
             "Bob: What happened?"]
    bag = write_robot_bag(tmp_path / "vosk", lines, fps=0.0, times=[102.0, 102.5, 103.0, 106.0])
    out = tmp_path / "out"
    assert main([str(bag), "--model-dir", tiny_text_checkpoint, "--speed", "20", "--remap", "/asr/text:=transcript",
                 "--answers", str(out / "answers.jsonl"), "--report", str(out / "replay.md")]) == 0
    records = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert [(r["key"], r["speaker_id"]) for r in records] == [("default/1", ""), ("default/2", "Bob")]
    assert "answered 2, unanswered 0" in (out / "replay.md").read_text()


def report_of_robot_bag(tmp_path, checkpoint) -> str:
    """The replay report of ROBOT_LINES (English, punctuated) as text."""
    from ddvlm_ros.replay import main

    bag = write_robot_bag(tmp_path / "english", ROBOT_LINES, fps=0.0)
    assert main([str(bag), "--model-dir", checkpoint, "--speed", "20", "--remap", "/asr/text:=transcript",
                 "--report", str(tmp_path / "english.md")]) == 0
    return (tmp_path / "english.md").read_text()


def test_a_whisper_bag_with_blank_audio_between_its_lines_gets_answers_for_speech_only(tmp_path, tiny_text_checkpoint):
    """Whisper writes [BLANK_AUDIO] for silence: the node answers only what was said, and the replay neither waits
    for an answer to the annotations nor counts them unanswered; the keys stay the node's numbering."""
    from ddvlm_ros.replay import main

    lines = [ROBOT_LINES[0], "[BLANK_AUDIO]", ROBOT_LINES[1], " (upbeat music) ", ROBOT_LINES[2]]
    bag = write_robot_bag(tmp_path / "whisper", lines, fps=0.0)
    out = tmp_path / "out"
    started = time.monotonic()
    assert main([str(bag), "--model-dir", tiny_text_checkpoint, "--speed", "20", "--remap", "/asr/text:=transcript",
                 "--answers", str(out / "answers.jsonl"), "--report", str(out / "replay.md")]) == 0
    assert time.monotonic() - started < 50  # not the 60 s an answer that never comes is waited for
    records = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert [(r["key"], r["speaker_token"]) for r in records] == [("default/1", "<s1>"), ("default/3", "<s2>"),
                                                                 ("default/5", "<s1>")]
    assert "answered 3, unanswered 0" in (out / "replay.md").read_text()
    assert json.loads((out / "replay.json").read_text())["node"]["non_speech_transcripts"] == "2"


def test_a_whisper_ros_robots_bag_replays_its_transcriptions_at_the_times_their_audio_says(
        tmp_path, tiny_text_checkpoint):
    """whisper_ros publishes whisper_msgs/Transcription on /whisper/transcription (played there by default): each is
    numbered as the node numbers it and answered as default_speaker's (a blank one is numbered, not answered), and
    its span for --labels intervals is when its audio says its words were said, as the node places its camera
    window: turn k said over [100 + 3k, 102 + 3k], its audio sent after 0.5 s of silence and transcribed in 0.4 s."""
    from rosbags.rosbag2 import Writer

    from ddvlm_ros.bag import typestore

    store, msgtype = typestore(), "whisper_msgs/msg/Transcription"
    lines = [ROBOT_LINES[0], "[BLANK_AUDIO]", ROBOT_LINES[1]]
    with Writer(tmp_path / "whisper_ros", version=9) as writer:
        connection = writer.add_connection("/whisper/transcription", msgtype, typestore=store)
        for k, text in enumerate(lines):
            said = store.types[msgtype](text=text, audio_time=2.5, transcription_time=0.4)
            writer.write(connection, int(round((102.9 + 3 * k) * 1e9)), store.serialize_cdr(said, msgtype))
    result = replay(tmp_path / "whisper_ros", {"model_dir": tiny_text_checkpoint, "input_timeout_s": 0.0}, speed=100.0)
    assert result.finals == ["default/1", "default/3"] and all("text" in result.answers[k] for k in result.finals)
    assert {result.prediction(k).speaker_id for k in result.finals} == {""}  # default_speaker
    for k, key in ((0, "default/1"), (2, "default/3")):  # the bag starts at 102.9
        assert result.spans[key] == (pytest.approx(100 + 3 * k - 102.9, abs=1e-6),
                                     pytest.approx(102 + 3 * k - 102.9, abs=1e-6))


def test_the_replay_report_says_what_the_node_made_of_the_camera(tmp_path, tiny_visual_checkpoint):
    from ddvlm_ros.replay import main

    remaps = ["--remap", "/asr/text:=transcript", "--remap", "/camera/color/image_raw/compressed:=image/compressed"]
    reports = {}
    for name, offset in (("robot", 0.0), ("camera_clock", -3600.0)):
        bag = write_robot_bag(tmp_path / name, ROBOT_LINES, camera_clock_offset_s=offset)
        assert main([str(bag), "--model-dir", tiny_visual_checkpoint, "--captioner", "cue", "--speed", "4", *remaps,
                     "--report", str(tmp_path / f"{name}.md")]) == 0
        reports[name] = ((tmp_path / f"{name}.md").read_text(), json.loads((tmp_path / f"{name}.json").read_text()))
    text, data = reports["robot"]
    assert data["score"]["refined"] == 4 and data["node"]["windows_without_frames"] == "0"
    assert "- camera: " in text and "0 undecodable, 0 utterance windows without a frame to caption" in text
    text, data = reports["camera_clock"]
    assert data["score"]["refined"] == 0 and data["node"]["windows_without_frames"] == "4"
    assert "4 utterance windows without a frame to caption (the last: the buffered frames are stamped" in text
    assert "different clocks" in text


def test_a_robots_vad_recorded_in_its_bag_places_the_replayed_transcripts_camera_windows(
        tmp_path, tiny_visual_checkpoint):
    """respeaker_ros' /is_speeching recorded beside the ASR's text and the camera, remapped onto voice_activity: with a
    captioner every transcript is placed on the speech the VAD heard, as live; without one the VAD is not played."""
    from ddvlm_ros.replay import main

    bag = write_robot_bag(tmp_path / "robot", ROBOT_LINES, vad=True)
    remaps = ["--remap", "/asr/text:=transcript", "--remap", "/camera/color/image_raw/compressed:=image/compressed",
              "--remap", "/is_speeching:=voice_activity"]
    assert main([str(bag), "--model-dir", tiny_visual_checkpoint, "--captioner", "cue", "--speed", "4", *remaps,
                 "--report", str(tmp_path / "vad.md")]) == 0
    data = json.loads((tmp_path / "vad.json").read_text())
    assert data["score"]["refined"] == 4
    assert data["node"]["voice_activity"] == ("/voice_activity: 4 transcript windows placed on the speech heard, 0 "
                                              "estimated from their words (no fresh speech heard)")
    assert main([str(bag), "--model-dir", tiny_visual_checkpoint, "--speed", "4", *remaps,
                 "--report", str(tmp_path / "text.md")]) == 0
    data = json.loads((tmp_path / "text.json").read_text())
    assert data["node"]["voice_activity"] == "not read: no captioner" and data["score"]["refined"] == 0


def test_a_vad_recorded_in_the_bag_places_the_answers_spans_as_the_nodes_camera_windows_also_without_a_captioner(
        tmp_path, tiny_text_checkpoint):
    """The spans that time labels are matched by and a corpus records: with respeaker_ros' /is_speeching remapped
    onto voice_activity, each transcript's span is the speech the VAD heard (on 1.8 s to 0.6 s before it came), as
    the node places its camera window, though a text-only node reads no VAD; without the VAD, the estimate from its
    words. The same for a ROS4HRI voice's is_speaking, which ends each turn 0.1 s after its end stamp."""
    from ddvlm_ros.replay import bag_topics, replay

    bag = write_robot_bag(tmp_path / "robot", ROBOT_LINES, fps=0.0, vad=True)
    t_first = bag_topics(bag).start_s
    params = {"model_dir": tiny_text_checkpoint, "input_timeout_s": 0.0}
    heard = replay(bag, params, speed=20.0, remaps={"/asr/text": "transcript", "/is_speeching": "voice_activity"})
    assert heard.node_status["voice_activity"] == "not read: no captioner"
    said = [(100.0 + 2 * (k + 1) - 1.8 - t_first, 100.0 + 2 * (k + 1) - 0.6 - t_first) for k in range(4)]
    assert [heard.spans[key] for key in heard.finals] == [(pytest.approx(a), pytest.approx(b)) for a, b in said]
    estimated = replay(bag, params, speed=20.0, remaps={"/asr/text": "transcript"})
    assert all(abs(estimated.spans[key][0] - start) > 0.1 for key, (start, _) in zip(estimated.finals, said))
    voices = replay(write_ros4hri_bag(tmp_path / "voices", ROS4HRI_TURNS, is_speaking=True), params | {"ros4hri": True},
                    speed=1000.0)
    t_first = bag_topics(tmp_path / "voices").start_s
    assert [voices.spans[key] for key in voices.finals] == [(pytest.approx(100.0 + 3 * k - t_first),
                                                             pytest.approx(102.1 + 3 * k - t_first)) for k in range(5)]


@pytest.mark.parametrize("form", ["robot", "ros4hri"])
def test_with_a_captioner_the_replays_spans_are_the_camera_windows_the_node_placed(tmp_path, tiny_visual_checkpoint,
                                                                                   monkeypatch, form):
    """What the node read: each final utterance's camera window, as the node handed it to its pipeline, equals the
    span the replay gives it (a robot's transcripts on /is_speeching's speech; ROS4HRI voices on their is_speaking)."""
    from ddvlm_ros.pipeline import EmotionPipeline
    from ddvlm_ros.replay import bag_topics, replay

    windows = {}
    submit = EmotionPipeline.submit

    def submitted(self, utterance):
        windows[f"{utterance.conversation_id}/{utterance.utterance_id}"] = utterance.window
        return submit(self, utterance)

    monkeypatch.setattr(EmotionPipeline, "submit", submitted)
    params = {"model_dir": tiny_visual_checkpoint, "captioner": "cue", "input_timeout_s": 0.0}
    if form == "robot":
        bag = write_robot_bag(tmp_path / "robot", ROBOT_LINES, vad=True)
        remaps = {"/asr/text": "transcript", "/is_speeching": "voice_activity",
                  "/camera/color/image_raw/compressed": "image/compressed"}
        result = replay(bag, params, speed=4.0, remaps=remaps)
    else:
        bag = write_ros4hri_bag(tmp_path / "voices", ROS4HRI_TURNS, crops=True, is_speaking=True)
        result = replay(bag, params | {"ros4hri": True}, speed=4.0)
    assert f" {len(result.finals)} transcript windows placed on the speech heard, 0 estimated" in (
        result.node_status["voice_activity"])
    t_first = bag_topics(bag).start_s
    assert len(result.finals) == (4 if form == "robot" else 5)
    for key in result.finals:
        assert result.spans[key] == pytest.approx((windows[key][0] - t_first, windows[key][1] - t_first), abs=1e-6)


def test_a_bag_of_raw_camera_images_is_read_one_message_at_a_time(tmp_path):
    """A robot's bag of raw 720p images is about 2.7 MB a frame, tens of GB an hour: the replay and its recording
    read it message by message (the whole bag used to be read into memory first)."""
    import tracemalloc

    import numpy as np
    from rosbags.rosbag2 import Writer

    from ddvlm_ros.bag import _stamp, typestore
    from ddvlm_ros.replay import ReplayResult, bag_messages, bag_topics, write_recording

    store = typestore()
    Image, Header = store.types["sensor_msgs/msg/Image"], store.types["std_msgs/msg/Header"]
    String = store.types["std_msgs/msg/String"]
    frame_bytes, n_frames = 1280 * 720 * 3, 24
    with Writer(tmp_path / "raw", version=9) as writer:
        cam = writer.add_connection("/camera/image_raw", "sensor_msgs/msg/Image", typestore=store)
        asr = writer.add_connection("/asr/text", "std_msgs/msg/String", typestore=store)
        for k in range(n_frames):
            pixels = np.full(frame_bytes, k, np.uint8)
            image = Image(header=Header(stamp=_stamp(store, 10 + k / 4), frame_id="camera"), height=720, width=1280,
                          encoding="rgb8", is_bigendian=0, step=1280 * 3, data=pixels)
            writer.write(cam, int((10 + k / 4) * 1e9), store.serialize_cdr(image, "sensor_msgs/msg/Image"))
        writer.write(asr, int(12e9), store.serialize_cdr(String(data="Ross: Hi."), "std_msgs/msg/String"))
    assert bag_topics(tmp_path / "raw") == ({"/camera/image_raw": "sensor_msgs/msg/Image",
                                             "/asr/text": "std_msgs/msg/String"},
                                            {"/camera/image_raw": n_frames, "/asr/text": 1}, 10.0)
    bag_size = n_frames * frame_bytes  # 66 MB
    tracemalloc.start()
    try:
        seen = [(t, topic) for t, topic, _, _ in bag_messages(tmp_path / "raw")]
        read_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        assert [topic for _, topic, _, _ in bag_messages(tmp_path / "raw", ["/asr/text"])] == ["/asr/text"]
        recording, left_out = write_recording(tmp_path / "recorded", ReplayResult(bag=str(tmp_path / "raw")))
        record_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(seen) == n_frames + 1 and [t for t, _ in seen] == sorted(t for t, _ in seen) and left_out == 0
    assert read_peak < bag_size / 4 and record_peak < bag_size / 4, (read_peak, record_peak, bag_size)
    assert [t for t, _, _, _ in bag_messages(recording)] == [t for t, _ in seen]


def test_replay_refuses_unmapped_mistyped_or_missing_topics_with_the_bags_topics(tmp_path):
    from ddvlm_ros.replay import bag_topics, input_topics, parse_remaps

    in_bag = bag_topics(write_robot_bag(tmp_path / "robot", ROBOT_LINES[:1])).types
    with pytest.raises(BagError, match=r"nothing to transcribe.*/asr/text \(std_msgs/msg/String\).*--remap"):
        input_topics(in_bag)
    with pytest.raises(BagError, match="takes sensor_msgs/msg/CompressedImage"):
        input_topics(in_bag, {"/asr/text": "image/compressed"})
    with pytest.raises(BagError, match="has no topic /mic"):
        input_topics(in_bag, {"/mic": "transcript"})
    with pytest.raises(BagError, match="the node's inputs are utterance, transcript"):
        input_topics(in_bag, {"/asr/text": "speech"})
    assert input_topics(in_bag, parse_remaps(["asr/text:=transcript"])) == {"/asr/text": "transcript"}
    with pytest.raises(BagError, match="expected TOPIC:=INPUT"):
        parse_remaps(["/asr/text=transcript"])
    from ddvlm_ros.replay import parse_params

    assert parse_params(["quantized:=true", "cpu_threads:=2", "device:=cuda:0"]) == {
        "quantized": True, "cpu_threads": 2, "device": "cuda:0"}
    with pytest.raises(ValueError, match=r"unknown parameters \['quantised'\]"):
        parse_params(["quantised:=true"])
    with pytest.raises(ValueError, match="'quantized' must be a bool.*'frames_per_window'"):
        parse_params(["quantized:=maybe", "frames_per_window:=0"])
    with pytest.raises(ValueError, match="expected NAME:=VALUE"):
        parse_params(["quantized=true"])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"default/1": "happy"}))
    with pytest.raises(BagError, match=r"\['happy'\] are not among"):
        load_labels(bad, side_file=False)


def test_utterances_without_ids_are_keyed_as_the_node_numbers_them_and_answers_carry_the_transcript(
        tmp_path, tiny_text_checkpoint):
    """An ASR bridge may leave conversation_id and utterance_id empty: the node then files the utterance under its
    conversation_id and numbers it. The replayer must key it the same way, or every answer counts as missing."""
    from rosbags.rosbag2 import Writer

    from ddvlm_ros.bag import _stamp, typestore
    from ddvlm_ros.replay import main

    store = typestore()
    Utterance = store.types["ddvlm_msgs/msg/Utterance"]
    Header = store.types["std_msgs/msg/Header"]
    bag = tmp_path / "asr_bridge"
    with Writer(bag, version=9) as writer:
        topic = writer.add_connection("/asr/utterance", "ddvlm_msgs/msg/Utterance", typestore=store)
        for k, line in enumerate(ROBOT_LINES):
            speaker, text = line.split(": ", 1)
            end = 100.0 + 2.0 * (k + 1)
            for final, words in ((False, text.split()[0]), (True, text)):  # a partial result, then the final one
                msg = Utterance(header=Header(stamp=_stamp(store, end), frame_id="mic"), start=_stamp(store, end - 1.5),
                                end=_stamp(store, end), conversation_id="", utterance_id="" if final else "p",
                                speaker_id=speaker, text=words, is_final=final, confidence=0.0)
                writer.write(topic, int(end * 1e9), store.serialize_cdr(msg, "ddvlm_msgs/msg/Utterance"))
    out = tmp_path / "answers.jsonl"
    assert main([str(bag), "--model-dir", tiny_text_checkpoint, "--speed", "20", "--remap", "/asr/utterance:=utterance",
                 "--param", "conversation_id:=lab", "--answers", str(out), "--report", str(tmp_path / "r.md")]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["key"] for r in records] == ["lab/1", "lab/2", "lab/3", "lab/4"]
    assert all(r["text"] is not None for r in records)  # every final utterance answered, under the node's key
    assert [r["transcript"] for r in records] == [line.split(": ", 1)[1] for line in ROBOT_LINES]
    assert "answered 4, unanswered 0" in (tmp_path / "r.md").read_text()


def test_stamps_whose_fraction_rounds_up_to_a_second_are_not_a_second_early(tmp_path):
    """MELD test dialogue 134, utterance 2 starts at 7656.999999999995 s on the bag's time line: its stamp is
    7657 s, not 7656 s (a nanosecond fraction that rounds to 1e9 carries into sec)."""
    rows = dialogues("test")
    ids = sorted(rows)[:135]
    expected = {f"{u.conversation_id}/{u.utterance_id}": u for u in timeline(rows, "test")}
    utterances = [m.msg for m in read_bag(write_meld_bag(tmp_path / "b", "test", ids)) if m.topic == "/utterance"]
    assert len(utterances) == sum(len(rows[d]) for d in ids)
    for msg in utterances:
        u = expected[f"{msg.conversation_id}/{msg.utterance_id}"]
        assert msg.start.sec + msg.start.nanosec * 1e-9 == pytest.approx(u.start, abs=1e-6), msg.utterance_id
        assert msg.end.sec + msg.end.nanosec * 1e-9 == pytest.approx(u.end, abs=1e-6), msg.utterance_id
    assert "test/dia134" in {m.conversation_id for m in utterances}


def test_a_blank_transcript_is_no_utterance_and_does_not_hold_up_the_replay(tmp_path, tiny_text_checkpoint):
    """An ASR that publishes a blank hypothesis: nothing was said, so the node skips it and the replay does not count
    it as an utterance to answer; it neither waits for its answer (with --max-in-flight it used to wait forever;
    without, the whole answer timeout) nor loses the others."""
    from ddvlm_ros.replay import replay

    bag = write_robot_bag(tmp_path / "robot", [ROBOT_LINES[0], "   ", *ROBOT_LINES[1:3]], fps=0)
    started = time.monotonic()
    result = replay(bag, {"model_dir": tiny_text_checkpoint}, speed=20, answer_timeout_s=30, max_in_flight=1,
                    remaps={"/asr/text": "transcript"})
    assert time.monotonic() - started < 20
    scores = result.score({})
    assert (scores["utterances"], scores["answered"], scores["unanswered"]) == (3, 3, 0)
    assert result.prediction("default/2") is None and result.prediction("default/4").speaker_id == "Ross"


def test_the_replay_scores_how_far_the_published_confidence_can_be_trusted():
    """Known answer on real EmotionDistribution messages: two answers of confidence 0.9, one right, one wrong,
    and two of 0.6, both right: ECE (15 bins) = 2/4 |0.5 - 0.9| + 2/4 |1 - 0.6| = 0.4; NLL = mean -log p(gold)."""
    import math

    from ddvlm_msgs.msg import EmotionDistribution

    from ddvlm_core.labels import LABELS
    from ddvlm_ros.replay import ReplayResult, report_markdown

    def answer(top: int, confidence: float):
        rest = (1 - confidence) / (len(LABELS) - 1)
        probs = [confidence if i == top else rest for i in range(len(LABELS))]
        return EmotionDistribution(labels=list(LABELS), probabilities=probs, top_label=LABELS[top],
                                   confidence=confidence, latency_ms=5.0)

    given = {"a": (answer(0, 0.9), "neutral"), "b": (answer(0, 0.9), "joy"), "c": (answer(4, 0.6), "joy"),
             "d": (answer(6, 0.6), "anger")}
    result = ReplayResult(answers={k: {"text": msg} for k, (msg, _) in given.items()}, finals=list(given))
    score = result.score({k: gold for k, (_, gold) in given.items()})
    calibration = score["calibration"]
    assert calibration["ece"] == pytest.approx(40.0, abs=1e-4)
    rest = 0.1 / 6
    assert calibration["nll"] == pytest.approx(-(math.log(0.9) + math.log(rest) + 2 * math.log(0.6)) / 4, abs=1e-6)
    assert calibration["mean_confidence"] == pytest.approx(75.0, abs=1e-4) and score["accuracy"] == 75.0
    md = report_markdown("t", score, "bag", {}, 1.0)
    assert ("- confidence as published: mean 75.0 % against accuracy 75.0 %, expected calibration error 40.00 %, "
            f"NLL {calibration['nll']:.3f}") in md
    assert "calibration" not in result.score({})  # no labels: nothing to compare the confidence with


def test_the_replay_scores_each_speaker_of_a_study(tmp_path):
    """Known answer on real EmotionDistribution messages: on whom the model is wrong, and how; speakers with the
    most utterances first, a tie between labels broken by MELD's order."""
    from ddvlm_msgs.msg import EmotionDistribution

    from ddvlm_core.labels import LABELS
    from ddvlm_ros.replay import ReplayResult, report_markdown

    def answer(speaker: str, top: str):
        probs = [0.4 if name == top else 0.1 for name in LABELS]
        return EmotionDistribution(labels=list(LABELS), probabilities=probs, top_label=top, confidence=0.4,
                                   speaker_id=speaker, latency_ms=5.0)

    given = {"a": ("ann", "joy", "joy"), "b": ("ann", "neutral", "joy"), "c": ("ann", "anger", "anger"),
             "d": ("", "neutral", "sadness")}
    result = ReplayResult(answers={k: {"text": answer(s, top)} for k, (s, top, _) in given.items()},
                          finals=list(given))
    score = result.score({k: gold for k, (_, _, gold) in given.items()})
    assert score["per_speaker"] == {
        "ann": {"n": 3, "accuracy": pytest.approx(200 / 3), "labelled_most": "joy", "answered_most": "neutral"},
        "": {"n": 1, "accuracy": 0.0, "labelled_most": "sadness", "answered_most": "neutral"}}
    md = report_markdown("t", score, "bag", {}, 1.0)
    assert "| ann | 3 | 66.7 | joy | neutral |\n| (unknown) | 1 | 0.0 | sadness | neutral |" in md


ROS4HRI_TURNS = [("anna", "I got the job!", "joy"), ("bob", "No way!", "surprise"),
                 ("anna", "They called this morning.", "neutral"), ("bob", "Oh my God, that is great.", "joy"),
                 ("anna", "I start on Monday.", "neutral")]


def older_typestore():
    """The types of a robot that ran hri_msgs before LiveSpeech had ``language`` (2023; ``locale`` since) and
    ddvlm_msgs before Utterance had ``confidence``."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    from ddvlm_ros.bag import MSG_DIR, msgs_dir

    store = get_typestore(Stores.ROS2_HUMBLE)
    older = {"hri_msgs/msg/LiveSpeech": "std_msgs/Header header\nstring incremental\nstring final\n"
                                        "float64 confidence\n",
             "hri_msgs/msg/IdsList": (msgs_dir("hri_msgs") / "IdsList.msg").read_text(encoding="utf-8"),
             "ddvlm_msgs/msg/Utterance": (MSG_DIR / "Utterance.msg").read_text(encoding="utf-8").split(
                 "float32 confidence")[0]}
    for name, definition in older.items():
        store.register(get_types_from_msg(definition, name))
    return store


def write_ros4hri_bag(path, turns, form="ros4hri", crops=False, untracked="", incremental=True, older=False,
                      leaves=None, is_speaking=False):
    """A bag of ``turns`` (voice, text, label), turn k said from 100 + 3k s to 2 s later, as a ROS4HRI robot records
    it (REP-155, ``form`` ros4hri): ``/humans/voices/tracked`` at 2 Hz naming the voices that spoke so far, naming each
    one first 20 ms before its first words; per turn an incremental result at its start (``incremental``) and the final
    one 0.3 s after its end, stamped with its end; ``untracked``: a voice that speaks once (at 99 s) but no list names.
    ``crops``: the person manager links person p_<voice> to voice <voice> and body b_<voice> (latched, published before
    the person is tracked), /humans/bodies/tracked names the bodies, and each turn has 24x16 crops of its voice's body
    and 64x64 camera frames on /image, at 5 Hz. ``form`` utterance: the same turns as final ddvlm_msgs/Utterance
    messages (conversation default, ids 1, 2 ...), stamped as the voices' results. ``older``: recorded with the types
    of ``older_typestore``. ``leaves``: voice -> from when (bag time, s) no list names it any more. ``is_speaking``:
    each voice's VAD (as asr_vosk relays it), on at its turn's start and off 0.1 s after its end."""
    import numpy as np
    from rosbags.rosbag2 import Writer

    from ddvlm_ros.bag import _stamp, typestore

    store = older_typestore() if older else typestore()
    Header = store.types["std_msgs/msg/Header"]
    types = {"tracked": "hri_msgs/msg/IdsList", "speech": "hri_msgs/msg/LiveSpeech", "link": "std_msgs/msg/String",
             "image": "sensor_msgs/msg/Image", "utterance": "ddvlm_msgs/msg/Utterance", "vad": "std_msgs/msg/Bool"}
    events = []  # (time s, topic, type key, message)

    def add(t, topic, kind, msg):
        events.append((t, topic, kind, msg))

    def header(t, frame_id=""):
        return Header(stamp=_stamp(store, t), frame_id=frame_id)

    def image(t, height, width, value):
        return store.types[types["image"]](header=header(t, "camera"), height=height, width=width, encoding="rgb8",
                                           is_bigendian=0, step=3 * width,
                                           data=np.full(height * width * 3, value, np.uint8))

    def speech(stamp, incremental="", final=""):
        return store.types[types["speech"]](header=header(stamp, "mic"), incremental=incremental, final=final,
                                            confidence=0.9, **({} if older else {"locale": "en_US"}))

    first = {}
    for k, (voice, text, _) in enumerate(turns):
        start, end = 100.0 + 3 * k, 102.0 + 3 * k
        first.setdefault(voice, start - 0.02)
        if form == "utterance":
            add(end + 0.3, "/utterance", "utterance", store.types[types["utterance"]](
                header=header(end, "mic"), start=_stamp(store, start), end=_stamp(store, end),
                conversation_id="default", utterance_id=str(k + 1), speaker_id=voice, text=text, is_final=True,
                **({} if older else {"confidence": 0.0})))
            continue
        if incremental:
            add(start, f"/humans/voices/{voice}/speech", "speech", speech(0.0, incremental=text.split()[0]))
        add(end + 0.3, f"/humans/voices/{voice}/speech", "speech", speech(end, final=text))
        for t, on in ((start, True), (end + 0.1, False)) if is_speaking else ():
            add(t, f"/humans/voices/{voice}/is_speaking", "vad", store.types[types["vad"]](data=on))
        for j in range(10) if crops else ():
            add(start + 0.2 * j, "/image", "image", image(start + 0.2 * j, 64, 64, 40))
            add(start + 0.2 * j, f"/humans/bodies/b_{voice}/cropped", "image", image(start + 0.2 * j, 24, 16, 200))
    if form == "ros4hri":
        times = sorted({*first.values(), *np.arange(99.0, 101.0 + 3 * len(turns), 0.5)})
        for t in times:
            ids = [v for v, t0 in first.items() if t0 <= t < (leaves or {}).get(v, math.inf)]
            add(t, "/humans/voices/tracked", "tracked", store.types[types["tracked"]](header=header(t), ids=ids))
            for space, prefix in (("persons", "p_"), ("bodies", "b_")) if crops else ():
                add(t, f"/humans/{space}/tracked", "tracked", store.types[types["tracked"]](
                    header=header(t), ids=[prefix + v for v in ids]))
        for voice, t0 in first.items() if crops else ():
            for link, value in (("voice_id", voice), ("body_id", f"b_{voice}")):
                add(t0 - 0.5, f"/humans/persons/p_{voice}/{link}", "link", store.types[types["link"]](data=value))
        if untracked:
            add(99.0, f"/humans/voices/{untracked}/speech", "speech", speech(98.5, final="Hello there."))
    with Writer(path, version=9) as writer:
        connections = {}
        for t, topic, kind, msg in sorted(events, key=lambda e: e[0]):
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, types[kind], typestore=store)
            writer.write(connections[topic], int(round(t * 1e9)), store.serialize_cdr(msg, types[kind]))
    return path


def test_a_ros4hri_robots_bag_is_replayed_through_its_voices_and_answers_as_the_same_turns_as_utterances(
        tmp_path, tiny_text_checkpoint):
    """A ROS4HRI robot has no transcript topic: its ASR publishes each voice's speech. Each voice is named by the
    tracked list just 20 ms before it first speaks, and the node subscribes its speech only then. Replayed 1000x
    faster than the bag: every final result is answered (none lost before the node's new subscription is matched)
    and keyed as the node numbers them (the voices' topics deliver in no order among them), with the voice as speaker
    and the span from its first incremental result to its stamp. The answers are those to the same turns as
    Utterances (same contexts, same speaker tokens). A voice no list names is not heard, nor waited for."""
    params = {"model_dir": tiny_text_checkpoint, "input_timeout_s": 0.0}
    voices = replay(write_ros4hri_bag(tmp_path / "voices", ROS4HRI_TURNS, untracked="carl"), params | {"ros4hri": True},
                    speed=1000.0)  # 20 us from the list naming a voice to its first words: the node subscribes them
    keys = [f"default/{k + 1}" for k in range(len(ROS4HRI_TURNS))]
    assert voices.finals == keys and all("text" in voices.answers[k] for k in keys)
    assert [voices.prediction(k).speaker_id for k in keys] == [voice for voice, _, _ in ROS4HRI_TURNS]
    assert [voices.prediction(k).speaker_token for k in keys] == ["<s1>", "<s2>", "<s1>", "<s2>", "<s1>"]
    assert voices.spans["default/2"] == (pytest.approx(4.0), pytest.approx(6.0))  # 103 s to 105 s; the bag starts at 99
    utterances = replay(write_ros4hri_bag(tmp_path / "utterances", ROS4HRI_TURNS, form="utterance"), params,
                        speed=10.0)
    assert utterances.finals == keys
    for k in keys:
        assert voices.prediction(k).top_label == utterances.prediction(k).top_label
        assert list(voices.prediction(k).probabilities) == pytest.approx(list(utterances.prediction(k).probabilities),
                                                                         abs=1e-6)
    with pytest.raises(BagError, match=r"nothing to transcribe .*or play its ROS4HRI voices \(ros4hri: true\)"):
        replay(tmp_path / "voices", params, speed=10.0)


def test_a_ros4hri_voices_last_words_after_the_list_dropped_it_are_answered_until_its_linger_ran_out(
        tmp_path, tiny_text_checkpoint):
    """An ASR's final result may come after the tracked list that drops its voice: anna leaves the list at 101 s,
    while saying her first turn (its final result at 102.3 s) and the node still hears her for VOICE_LINGER_S (bag
    time: the replay's /clock). Her turn at 106 s is heard too; the one at 118 s, 17 s after she left, is not."""
    from ddvlm_ros.ros4hri import VOICE_LINGER_S

    turns = [*ROS4HRI_TURNS[:4], ("bob", "And then?", "neutral"), ("bob", "Tell me more.", "neutral"),
             ("anna", "Not now.", "anger")]
    assert 108.3 - 101.0 < VOICE_LINGER_S < 118.0 - 101.0
    bag = write_ros4hri_bag(tmp_path / "voices", turns, leaves={"anna": 101.0})
    result = replay(bag, {"model_dir": tiny_text_checkpoint, "input_timeout_s": 0.0, "ros4hri": True}, speed=1000.0)
    heard = [voice for k, (voice, _, _) in enumerate(turns) if k != 6]
    assert result.finals == [f"default/{k + 1}" for k in range(6)] and all("text" in result.answers[k]
                                                                           for k in result.finals)
    assert [result.prediction(k).speaker_id for k in result.finals] == heard
    assert result.spans["default/1"] == (pytest.approx(1.0), pytest.approx(3.0))  # from her incremental result


def test_the_replay_report_says_an_answer_was_mirrored_only_when_its_own_expression_was_published():
    """The report's ROS4HRI line matches each answer to a voice with an Expression on that voice's topic, of its stamp,
    top label and confidence; as many Expressions as answers is not enough (one sent on another voice's topic, one
    with another label, one twice)."""
    import hri_msgs.msg as hri
    from rclpy.serialization import serialize_message

    from ddvlm_msgs.msg import EmotionDistribution
    from ddvlm_ros.replay import ReplayResult, mirrored_as
    from ddvlm_ros.ros4hri import EXPRESSION_NAME

    def answer(voice, sec, label, confidence):
        msg = EmotionDistribution(speaker_id=voice, top_label=label, confidence=confidence)
        msg.header.stamp.sec = sec
        return msg

    def published(voice, sec, label, confidence):
        e = hri.Expression(expression=getattr(hri.Expression, EXPRESSION_NAME[label]), confidence=confidence)
        e.header.stamp.sec = sec
        return (sec * 10**9, f"/humans/voices/{voice}/expression", bytes(serialize_message(e)))

    answers = [answer("anna", 1, "joy", 0.6), answer("bob", 2, "anger", 0.7), answer("anna", 3, "fear", 0.4)]
    right = [published(a.speaker_id, a.header.stamp.sec, a.top_label, a.confidence) for a in answers]
    result = ReplayResult(voice_answers=[mirrored_as(a) for a in answers], expression_log=right)
    assert result.expression_line() == "ROS4HRI: each of the 3 answers to voices was mirrored as hri_msgs/Expression"
    for wrong in (published("anna", 2, "anger", 0.7),  # bob's, on anna's topic
                  published("bob", 2, "sadness", 0.7),  # bob's, another label
                  right[0]):  # anna's first twice, bob's not at all
        result.expression_log = [right[0], wrong, right[2]]
        assert result.expression_line() == (
            "ROS4HRI: 1 of the 3 answers to voices were not mirrored as hri_msgs/Expression (on its voice's topic, "
            "with its stamp, top label and confidence); 1 Expression published matched no answer")
    result.expression_log = right[:2]
    assert result.expression_line().startswith("ROS4HRI: 1 of the 3 answers to voices were not mirrored")
    assert result.expression_line().endswith("confidence)")
    assert ReplayResult().expression_line() == ""  # no voice answered: no line


def test_a_ros4hri_bag_is_scored_by_intervals_of_its_voices_and_captioned_from_their_bodies(
        tmp_path, tiny_visual_checkpoint, capsys):
    """`python -m ddvlm_ros.replay` on a ROS4HRI bag turns ros4hri on by itself; an annotator's intervals name the
    voices as speakers. With a captioner, each turn is captioned from its voice's body crops: the person manager's
    links were recorded before the person was tracked and reach the node because the replay publishes them latched,
    as hri_person_manager does; and the first crops of each body reach it. Each voice's is_speaking, recorded too,
    places its turns' windows. (Without incremental results: those caption the frames so far while a voice speaks,
    and the crops might not have come yet.)"""
    import hri_msgs.msg as hri

    from ddvlm_ros.replay import main
    from ddvlm_ros.ros4hri import EXPRESSION_NAME

    bag = write_ros4hri_bag(tmp_path / "robot", ROS4HRI_TURNS, crops=True, incremental=False, is_speaking=True)
    rows = ["start,end,label,speaker"] + [f"{1.02 + 3 * k:.2f},{3.02 + 3 * k:.2f},{label},{voice}"
                                          for k, (voice, _, label) in enumerate(ROS4HRI_TURNS)]
    (tmp_path / "gold.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert main([str(bag), "--model-dir", tiny_visual_checkpoint, "--captioner", "cue", "--speed", "10", "--labels",
                 str(tmp_path / "gold.csv"), "--answers", str(tmp_path / "a.jsonl"),
                 "--report", str(tmp_path / "r.md"), "--record", str(tmp_path / "recorded")]) == 0
    out = capsys.readouterr().out
    assert "the bag has ROS4HRI voices (/humans/voices/tracked): replayed with ros4hri: true" in out
    assert "messages of unknown types left out" not in out  # the ROS4HRI topics are recorded with the answers
    recorded = {m.topic for m in read_bag(tmp_path / "recorded")}
    assert [p.suffix for p in (tmp_path / "recorded").iterdir() if p.suffix != ".yaml"] == [".mcap"]
    assert recorded >= {"/emotion", "/humans/voices/tracked", "/humans/voices/anna/speech",
                        "/humans/persons/p_bob/body_id", "/humans/bodies/b_anna/cropped",
                        "/humans/voices/anna/expression", "/humans/voices/bob/expression"}
    # each answer (text, then fused) mirrored as the voice's Expression, recorded beside it
    answers = [m.msg for m in read_bag(tmp_path / "recorded") if m.topic == "/emotion"]
    for voice in ("anna", "bob"):
        mirrored = [m.msg for m in read_bag(tmp_path / "recorded") if m.topic == f"/humans/voices/{voice}/expression"]
        theirs = [a for a in answers if a.speaker_id == voice]
        assert len(theirs) == 2 * sum(v == voice for v, _, _ in ROS4HRI_TURNS) == len(mirrored)
        assert sorted((e.header.stamp.sec, e.expression, round(e.confidence, 5)) for e in mirrored) == sorted(
            (a.header.stamp.sec, getattr(hri.Expression, EXPRESSION_NAME[a.top_label]), round(a.confidence, 5))
            for a in theirs)
    assert f"ROS4HRI: each of the {len(answers)} answers to voices was mirrored as hri_msgs/Expression" in out
    records = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [(r["speaker_id"], r["gold"]) for r in records] == [(v, label) for v, _, label in ROS4HRI_TURNS]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["params"]["ros4hri"] is True and report["score"]["n"] == len(ROS4HRI_TURNS)
    assert report["node"]["captions_made_from"] == f"body {len(ROS4HRI_TURNS)}"
    assert report["node"]["voice_activity"].startswith(  # each voice's recorded is_speaking placed its windows
        f"/voice_activity and /humans/voices/<id>/is_speaking: {len(ROS4HRI_TURNS)} transcript windows placed on the "
        "speech heard, 0 estimated")
    assert all(r["refined"] is not None for r in records)


def test_bags_are_read_and_written_with_the_installed_hri_msgs_and_one_message_rosbags_cannot_parse_is_left_out(
        tmp_path, monkeypatch):
    """A robot's hri_msgs (apt's, in $AMENT_PREFIX_PATH) has more messages than the subset `make` builds: its bags'
    other ROS4HRI topics (engagement, gaze ...) are then of known types too. A message file rosbags cannot parse
    leaves out that type only."""
    from ddvlm_ros.bag import typestore

    folder = tmp_path / "share" / "hri_msgs" / "msg"
    folder.mkdir(parents=True)
    (folder / "IdsList.msg").write_text("std_msgs/Header header\nstring[] ids\n", encoding="utf-8")
    (folder / "EngagementLevel.msg").write_text("std_msgs/Header header\nuint8 UNKNOWN=0\nuint8 level\n",
                                                encoding="utf-8")
    (folder / "Broken.msg").write_text("uint8 = = ]\n", encoding="utf-8")
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path))
    types = typestore().types
    assert {t for t in types if t.startswith("hri_msgs/")} == {"hri_msgs/msg/IdsList", "hri_msgs/msg/EngagementLevel"}
    assert "ddvlm_msgs/msg/Utterance" in types


def test_meld_written_as_ros4hri_voices_replays_to_the_answers_and_scores_of_its_utterance_bag(
        tmp_path, tiny_text_checkpoint):
    """`python -m ddvlm_ros.bag --form ros4hri`: each speaker of each dialogue a voice (ids valid as topic names), the
    dialogues further apart than the node's idle_timeout_s, so that each starts a new context as its own conversation
    does on /utterance. Replayed 1000x faster than the bag, every turn gets the answer it gets from the Utterance
    bag (dialogue 218 has three speakers), and the labels side file, keyed as the node keys the voices' answers, gives
    the same scores. (A dialogue's voices leave the tracked list 1 s after its last words, a millisecond here: the
    replay publishes that list once what they said was answered, as on the robot.)"""
    from ddvlm_ros.bag import ROS4HRI_GAP_S, labels_path
    from ddvlm_ros.ros4hri import valid_id

    params = {"model_dir": tiny_text_checkpoint, "input_timeout_s": 0.0}
    by_form = {}
    for form in ("utterance", "ros4hri"):
        bag = write_meld_bag(tmp_path / form, "test", [0, 218, 2, 3], form=form)
        result = replay(bag, params | {"ros4hri": form == "ros4hri"}, speed=1000.0)
        by_form[form] = (result, json.loads(labels_path(bag).read_text())["utterances"])
    (voices, side), (utterances, meld_side) = by_form["ros4hri"], by_form["utterance"]
    assert list(side) == voices.finals == [f"default/{k + 1}" for k in range(len(meld_side))]
    assert [side[k]["meld"] for k in voices.finals] == utterances.finals == list(meld_side)
    for key, meld in zip(voices.finals, utterances.finals):
        answer, expected = voices.prediction(key), utterances.prediction(meld)
        assert valid_id(answer.speaker_id) and answer.speaker_id.startswith(meld.split("/")[1] + "_")
        assert answer.speaker_token == expected.speaker_token
        assert list(answer.probabilities) == pytest.approx(list(expected.probabilities), abs=1e-6)
    assert voices.node_status["conversations_reset"] == "3" and ROS4HRI_GAP_S > 120
    # the report's interval resamples the node's contexts: here a dialogue each, as the Utterance bag's conversations
    in_dialogues = set(zip(voices.contexts(voices.finals), [side[k]["meld"].rpartition("/")[0] for k in voices.finals]))
    assert len(in_dialogues) == len({c for c, _ in in_dialogues}) == len({d for _, d in in_dialogues}) == 4
    assert voices.score(load_labels(tmp_path / "ros4hri"))["wa_f1"] == utterances.score(
        load_labels(tmp_path / "utterance"))["wa_f1"]
    with pytest.raises(ValueError, match="form must be one of utterance, ros4hri"):
        write_meld_bag(tmp_path / "x", "test", [0], form="voices")


def test_bags_recorded_with_older_message_definitions_replay_as_bags_of_todays(tmp_path, tiny_text_checkpoint,
                                                                               capsys):
    """hri_msgs' LiveSpeech had no ``language`` (now ``locale``) before 2023, and ddvlm_msgs' Utterance no
    ``confidence`` before now: a bag of those versions does not decode as today's types (Fast CDR runs out of bytes).
    It is decoded by the definitions it recorded, the fields it lacks taking their defaults: its turns get the answers
    of the same bag recorded with today's types, the report names the topics so read, and --record keeps the recorded
    definitions. A bag that recorded no definition (sqlite3 before Iron) is refused with the reason."""
    import sqlite3

    from hri_msgs.msg import LiveSpeech

    from ddvlm_ros.recorded import RecordedTypes
    from ddvlm_ros.replay import main

    params = {"model_dir": tiny_text_checkpoint, "input_timeout_s": 0.0}
    speech = "/humans/voices/anna/speech"
    for form, topic, lacks in (("ros4hri", speech, "hri_msgs/msg/LiveSpeech: no locale"),
                               ("utterance", "/utterance", "ddvlm_msgs/msg/Utterance: no confidence")):
        played = {}
        for older in (False, True):
            bag = write_ros4hri_bag(tmp_path / f"{form}_{older}", ROS4HRI_TURNS, form=form, older=older)
            played[older] = replay(bag, params | {"ros4hri": form == "ros4hri"}, speed=100.0)
        today, older = played[False], played[True]
        assert older.finals == today.finals and len(older.finals) == len(ROS4HRI_TURNS)
        for key in today.finals:
            assert list(older.prediction(key).probabilities) == pytest.approx(
                list(today.prediction(key).probabilities), abs=1e-6)
        assert today.recorded_types == "" and f"{topic} ({lacks})" in older.recorded_types
    old_bag = tmp_path / "ros4hri_True"
    assert main([str(old_bag), "--model-dir", tiny_text_checkpoint, "--speed", "100", "--record",
                 str(tmp_path / "recorded")]) == 0
    out = capsys.readouterr().out
    assert f"read by the bag's own definition (missing fields keep their defaults): {speech} (hri_msgs" in out
    recorded = RecordedTypes(tmp_path / "recorded")
    assert "locale" not in recorded.definitions[speech][1].data and "/emotion" in recorded.definitions
    said = [recorded.decode(speech, raw, LiveSpeech) for raw in read_raw(tmp_path / "recorded", speech)]
    finals = [m.final for m in said if m.final]
    assert finals == [text for voice, text, _ in ROS4HRI_TURNS if voice == "anna"]
    (db,) = old_bag.glob("*.db3")
    with sqlite3.connect(db) as connection:  # as Humble's rosbag2 records: no definitions
        connection.execute("DELETE FROM message_definitions")
    with pytest.raises(BagError, match=f"{speech}: a message does not decode as the installed hri_msgs/msg/LiveSpeech"
                                       r" .*the bag stores no definition of it"):
        replay(old_bag, params | {"ros4hri": True}, speed=100.0)


def read_raw(bag, topic):
    """The raw CDR of every message on ``topic``."""
    from ddvlm_ros.replay import bag_messages

    return [raw for _, _, _, raw in bag_messages(bag, [topic])]


def test_the_replay_reports_how_right_the_answers_each_flag_marks_are(tmp_path, tiny_text_checkpoint):
    """Utterances whose ASR confidence is below asr_min_confidence are flagged; the report counts them and gives, per
    flag, the accuracy of its answers and of the others, computed from the answers it scored."""
    from rosbags.rosbag2 import Writer

    from ddvlm_ros.bag import _stamp, typestore
    from ddvlm_ros.replay import main

    store = typestore()
    Utterance, Header = store.types["ddvlm_msgs/msg/Utterance"], store.types["std_msgs/msg/Header"]
    said = [(text, 0.3 if k % 2 else 0.9, label) for k, (_, text, label) in enumerate(ROS4HRI_TURNS * 2)]
    with Writer(tmp_path / "asr", version=9) as writer:
        connection = writer.add_connection("/utterance", "ddvlm_msgs/msg/Utterance", typestore=store)
        for k, (text, confidence, _) in enumerate(said):
            end = 100.0 + 2 * k
            msg = Utterance(header=Header(stamp=_stamp(store, end), frame_id="mic"), start=_stamp(store, end - 1),
                            end=_stamp(store, end), conversation_id="lab", utterance_id=f"u{k}", speaker_id="ann",
                            text=text, is_final=True, confidence=confidence)
            writer.write(connection, int(end * 1e9), store.serialize_cdr(msg, "ddvlm_msgs/msg/Utterance"))
    labels = {f"lab/u{k}": label for k, (_, _, label) in enumerate(said)}
    (tmp_path / "gold.json").write_text(json.dumps(labels), encoding="utf-8")
    assert main([str(tmp_path / "asr"), "--model-dir", tiny_text_checkpoint, "--speed", "50", "--labels",
                 str(tmp_path / "gold.json"), "--answers", str(tmp_path / "a.jsonl"), "--report",
                 str(tmp_path / "r.md")]) == 0
    records = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [r["text"]["transcript_confidence"] for r in records] == [pytest.approx(c) for _, c, _ in said]
    low = [("transcript-low-confidence" in r["text"]["flags"]) for r in records]
    assert low == [c < 0.5 for _, c, _ in said]
    right = [r["prediction"] == r["gold"] for r in records]
    flagged = json.loads((tmp_path / "r.json").read_text())["score"]["per_flag"]["transcript-low-confidence"]
    expected = [100 * sum(ok for ok, f in zip(right, low) if f == side) / low.count(side) for side in (True, False)]
    assert (flagged["n"], flagged["accuracy"], flagged["accuracy_others"]) == (5, *map(pytest.approx, expected))
    report = (tmp_path / "r.md").read_text()
    assert "transcripts: 5 of the 10 answered ones had an ASR confidence below 0.5 (flag transcript-low-confidence)" \
        in report
    assert f"| `transcript-low-confidence` | 5 | {expected[0]:.1f} | {expected[1]:.1f} |" in report
