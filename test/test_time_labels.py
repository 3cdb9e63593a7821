"""Gold labels as an annotator's time intervals (ddvlm_ros/time_labels.py): times, files, matching, and a replay
scored by them."""
import json
import re

import pytest

from ddvlm_ros.time_labels import Interval, TimeLabelsError, label_for, load_intervals, parse_time, unmatched


@pytest.mark.parametrize("text, seconds", [("12.5", 12.5), ("1:02.5", 62.5), ("0:01:02,500", 62.5), ("1:00:00", 3600),
                                           (" 7 ", 7.0), ("00:00:01.", 1.0), ("-2.25", -2.25)])
def test_times_known_answers(text, seconds):
    assert parse_time(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["12s", "", "1:2:3:4", "--1", "1.2.3", "+1"])
def test_what_is_not_a_time_is_refused(text):
    with pytest.raises(ValueError, match="is not a time"):
        parse_time(text)


def test_a_csv_or_tab_separated_file_with_a_header_gives_the_intervals(tmp_path):
    csv_file = tmp_path / "a.csv"
    csv_file.write_text("Start,End,Label,Speaker\n1.0,2.5,Joy,ann\n0:03,0:04.5,neutral,\n", encoding="utf-8")
    assert load_intervals(csv_file) == [Interval(1.0, 2.5, "joy", "ann"), Interval(3.0, 4.5, "neutral", "")]
    tsv = tmp_path / "a.tsv"
    tsv.write_text("start\tend\tlabel\n00:00:01,0\t00:00:02,0\tanger\n", encoding="utf-8")
    assert load_intervals(tsv) == [Interval(1.0, 2.0, "anger")]


@pytest.mark.parametrize("text, message", [
    ("begin,end,label\n1,2,joy\n", "no column start in its header (start, end, label[, speaker]; found begin, end, "
                                   "label)"),
    ("start,end,label\n1,2,joy\n3,4,happy\n", "line 3: unknown emotion label 'happy'"),
    ("start,end,label\n1,x,joy\n", "line 2: 'x' is not a time"),
    ("start,end,label\n5,4,joy\n", "line 2: ends (4 s) before it starts (5 s)"),
    ("", "no column start, end, label in its header"),
])
def test_a_bad_labels_file_is_refused_with_its_line(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TimeLabelsError) as e:
        load_intervals(path)
    assert message in str(e.value) and str(path) in str(e.value)


def test_an_utterance_takes_the_label_it_overlaps_most_among_its_speakers_intervals():
    intervals = [Interval(0.0, 2.0, "joy", "Ross"), Interval(2.0, 2.4, "surprise", "rachel"),
                 Interval(1.0, 3.0, "anger")]
    assert label_for((0.0, 1.2), "ross", intervals) == "joy"  # 1.2 s against 0.2 s
    assert label_for((1.5, 3.0), "Rachel", intervals) == "anger"  # anyone's 1.5 s against Rachel's 0.4 s
    assert label_for((1.5, 3.0), "", intervals) == "anger"  # no speaker: every interval
    assert label_for((2.0, 2.4), "rachel", intervals[:2]) == "surprise"  # Ross's interval only touches it
    assert label_for((5.0, 6.0), "ross", intervals) is None
    assert unmatched([(0.0, 1.0), (2.5, 6.0)], intervals) == 1  # Rachel's


def test_a_meld_bag_scored_by_its_time_intervals_scores_as_by_its_keys(tmp_path, tiny_text_checkpoint, capsys):
    """The labels side file of a MELD bag written as an annotator's intervals (seconds from the bag's start, some as
    mm:ss.s): every utterance gets its own label back, and the scores are the ones by key."""
    from ddvlm_ros.bag import labels_path, write_meld_bag
    from ddvlm_ros.replay import main

    bag = write_meld_bag(tmp_path / "b", "test", [0, 3])
    side = json.loads(labels_path(bag).read_text())["utterances"]
    t_first = min(u["end"] for u in side.values())  # the first message: the first Utterance, at its end
    rows = ["start,end,label"]
    for k, u in enumerate(side.values()):
        start, end = u["start"] - t_first, u["end"] - t_first
        rows.append(f"{int(start // 60)}:{start % 60:06.3f},{end:.3f},{u['label'].upper()}" if k % 2 and start >= 0 else
                    f"{start:.3f},{end:.3f},{u['label']}")
    (tmp_path / "gold.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    by = {}
    for name, extra in (("key", []), ("time", ["--labels", str(tmp_path / "gold.csv")])):
        assert main([str(bag), "--model-dir", tiny_text_checkpoint, "--speed", "20", *extra,
                     "--answers", str(tmp_path / f"{name}.jsonl"), "--report", str(tmp_path / f"{name}.md")]) == 0
        by[name] = json.loads((tmp_path / f"{name}.json").read_text())["score"]
        records = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        assert [r["gold"] for r in records] == [u["label"] for u in side.values()]
    assert by["time"]["n"] == by["key"]["n"] == len(side) and by["time"]["wa_f1"] == by["key"]["wa_f1"]
    assert by["time"]["confusion"] == by["key"]["confusion"]
    import cv2  # the report draws its confusion matrix next to it, and shows it

    assert cv2.imread(str(tmp_path / "key.confusion.png")).shape == (570, 600, 3)
    assert "![confusion matrix, rows normalised](key.confusion.png)" in (tmp_path / "key.md").read_text()
    line = (f"labels by time: {len(side)} of the {len(side)} utterances overlap an interval of {tmp_path / 'gold.csv'}"
            " (the others are not scored); 0 of its")
    assert line in capsys.readouterr().out and line in (tmp_path / "time.md").read_text()
    assert [r["span_s"] for r in records][:1] == [[pytest.approx(side["test/dia0/utt0"]["start"] - t_first),
                                                   pytest.approx(side["test/dia0/utt0"]["end"] - t_first)]]


def test_a_robot_bag_of_plain_transcripts_is_scored_by_an_annotators_intervals(tmp_path, tiny_text_checkpoint, capsys):
    """ASR text without stamps: each transcript's span is when its words were said, as the node's camera window
    (ddvlm_core.speech_timing: as long as its words take to say, ended the ASR's 0.5 s + 0.3 x that before it came).
    Each takes the label of its own speaker's interval (or anyone's) it overlaps most; a line no such interval
    overlaps is not scored, and an interval no utterance overlaps is counted. The 4 s before each line came would
    give Rachel's last line the label of Ross's speech before it."""
    from test_bag_replay import ROBOT_LINES, write_robot_bag

    from ddvlm_ros.replay import main

    bag = write_robot_bag(tmp_path / "robot", ROBOT_LINES, fps=0.0)  # lines at 102, 104, 106, 108 s; first message
    gold = tmp_path / "study.tsv"  # at 101.5 s: the spans are [-2.691, -0.621], [0.011, 1.541], [1.309, 3.379] and
    gold.write_text("start\tend\tlabel\tspeaker\n-2.7\t-0.6\tjoy\tross\n0\t1.5\tsurprise\trachel\n"  # [3.66, 5.46]
                    "1.3\t3.4\tsadness\t\n3.4\t3.6\tanger\tross\n", encoding="utf-8")
    assert main([str(bag), "--model-dir", tiny_text_checkpoint, "--speed", "20", "--remap", "/asr/text:=transcript",
                 "--labels", str(gold), "--answers", str(tmp_path / "a.jsonl")]) == 0
    records = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [(r["speaker_id"], r["gold"]) for r in records] == [("Ross", "joy"), ("Rachel", "surprise"),
                                                               ("Ross", "sadness"), ("Rachel", None)]
    assert records[1]["span_s"] == [pytest.approx(0.011), pytest.approx(1.541)]
    out = capsys.readouterr().out
    assert (f"labels by time: 3 of the 4 utterances overlap an interval of {gold} (the others are not scored); 1 of "
            "its 4 intervals overlap no utterance") in out


def test_the_replay_refuses_a_bad_labels_file_before_it_starts(tmp_path, tiny_text_checkpoint, capsys):
    from ddvlm_ros.bag import write_meld_bag
    from ddvlm_ros.replay import main

    bag = write_meld_bag(tmp_path / "b", "test", [0])
    bad = tmp_path / "bad.csv"
    bad.write_text("start,end,label\n1,2,joyful\n", encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        main([str(bag), "--model-dir", tiny_text_checkpoint, "--labels", str(bad)])
    assert e.value.code == 2 and f"{bad}, line 2: unknown emotion label 'joyful'" in capsys.readouterr().err


def elan_file(path, tiers, linked=None):
    """An ELAN annotation file written with pympi (a library that writes ELAN's format): ``tiers`` maps a tier id to
    (participant, parent tier or None, [(start s, end s, value)]); a tier with a parent is a symbolic association of
    it (one value per parent annotation, at its start). ``linked``: (media file, time origin ms) of the video."""
    from pympi.Elan import Eaf

    eaf = Eaf(author="study")
    eaf.add_linguistic_type("emotion-of", constraints="Symbolic_Association", timealignable=False)
    for tier, (participant, parent, rows) in tiers.items():
        eaf.add_tier(tier, ling="emotion-of" if parent else "default-lt", parent=parent, part=participant)
        for start, end, value in rows:
            if parent:
                eaf.add_ref_annotation(tier, parent, round(start * 1000), value)
            else:
                eaf.add_annotation(tier, round(start * 1000), round(end * 1000), value)
    if linked:
        eaf.add_linked_file(linked[0], mimetype="video/mp4", time_origin=linked[1])
    eaf.to_file(str(path))
    return path


def test_an_elan_files_tiers_of_labels_give_the_intervals_with_their_participants_as_speakers(tmp_path):
    """Ann's emotion tier depends on her transcription tier (each label on one of her utterances, at its times); Bob's
    labels are a tier of their own; a gesture tier and the transcription are no labels and are left out."""
    path = elan_file(tmp_path / "S01.eaf", {
        "transcript-ann": ("Ann", None, [(1.0, 2.5, "I got the job!"), (6.2, 7.0, "Since Monday.")]),
        "emotion-ann": ("Ann", "transcript-ann", [(1.0, None, "Joy"), (6.2, None, "neutral")]),
        "emotion-bob": ("Bob", None, [(3.0, 4.25, "surprise")]),
        "gesture": ("Bob", None, [(3.1, 3.5, "nod")])})
    assert load_intervals(path) == [Interval(1.0, 2.5, "joy", "Ann"), Interval(3.0, 4.25, "surprise", "Bob"),
                                    Interval(6.2, 7.0, "neutral", "Ann")]
    assert load_intervals(path, ["emotion-bob"]) == [Interval(3.0, 4.25, "surprise", "Bob")]


@pytest.mark.parametrize("tiers, named, linked, message", [
    ({"emotion": ("Ann", None, [(1, 2, "joy"), (3, 4, "happy"), (5, 6, "sadness")])}, [], None,
     "tier 'emotion' has labels and 'happy', which is none"),
    ({"emotion": ("Ann", None, [(1, 2, "joy")])}, ["emotions"], None,
     "no tier 'emotions'; its tiers: default (0 annotations); emotion (1 annotations, e.g. 'joy')"),
    ({"emotion": ("Ann", None, [(1, 2, "joy"), (3, 4, "happy")])}, ["emotion"], None,
     "tier 'emotion' at 3 s: unknown emotion label 'happy'"),
    ({"words": ("Ann", None, [(1, 2, "Hello")])}, [], None, "no tier whose annotations are all labels"),
    ({"emotion-A1": ("Ann", None, [(1, 2, "joy"), (5, 6, "fear")]), "emotion-A2": ("Ann", None, [(5.5, 7, "anger")])},
     [], None, "tiers 'emotion-A1' and 'emotion-A2' both label Ann's speech at 5.5 s (two annotators?)"),
    ({"emotion": ("Ann", None, [(1, 2, "joy")])}, [], ("file:///study/S01.mp4", 1500),
     "file:///study/S01.mp4 is linked with an offset (TIME_ORIGIN)"),
])
def test_an_elan_file_that_cannot_give_labels_is_refused_with_the_reason(tmp_path, tiers, named, linked, message):
    path = elan_file(tmp_path / "S01.eaf", tiers, linked)
    with pytest.raises(TimeLabelsError) as e:
        load_intervals(path, named)
    assert message in str(e.value) and str(path) in str(e.value)


def test_what_is_no_elan_file_or_names_tiers_of_a_csv_is_refused(tmp_path):
    (tmp_path / "a.eaf").write_text("<TEI><text/></TEI>", encoding="utf-8")
    (tmp_path / "b.eaf").write_text("start,end,label\n", encoding="utf-8")
    (tmp_path / "c.csv").write_text("start,end,label\n1,2,joy\n", encoding="utf-8")
    (tmp_path / "d.eaf").write_text(  # a time subdivision's slot that ELAN has not aligned
        '<ANNOTATION_DOCUMENT><HEADER TIME_UNITS="milliseconds"/><TIME_ORDER><TIME_SLOT TIME_SLOT_ID="ts1" '
        'TIME_VALUE="1000"/><TIME_SLOT TIME_SLOT_ID="ts2"/></TIME_ORDER><TIER TIER_ID="emotion"><ANNOTATION>'
        '<ALIGNABLE_ANNOTATION ANNOTATION_ID="a1" TIME_SLOT_REF1="ts1" TIME_SLOT_REF2="ts2"><ANNOTATION_VALUE>joy'
        '</ANNOTATION_VALUE></ALIGNABLE_ANNOTATION></ANNOTATION></TIER></ANNOTATION_DOCUMENT>', encoding="utf-8")
    for path, tiers, message in ((tmp_path / "a.eaf", [], "not an ELAN annotation file (its root is <TEI>)"),
                                 (tmp_path / "b.eaf", [], "cannot read (ParseError"),
                                 (tmp_path / "d.eaf", [], "tier 'emotion': annotation a1 is not aligned to times"),
                                 (tmp_path / "c.csv", ["emotion"], "tiers (emotion) are an ELAN .eaf file's")):
        with pytest.raises(TimeLabelsError, match=re.escape(message)):
            load_intervals(path, tiers)


def test_a_robot_bag_is_scored_by_an_elan_file_as_by_the_same_intervals_in_a_csv(tmp_path, tiny_text_checkpoint):
    """The robot bag of the test above, its annotator's intervals (those at or after the bag's start, where ELAN's time
    line begins) in an ELAN file, a tier per participant and one for anyone: the same golds as from a CSV."""
    from test_bag_replay import ROBOT_LINES, write_robot_bag

    from ddvlm_ros.replay import main

    bag = write_robot_bag(tmp_path / "robot", ROBOT_LINES, fps=0.0)
    (tmp_path / "study.csv").write_text("start,end,label,speaker\n0,1.5,surprise,rachel\n1.3,3.4,sadness,\n"
                                        "3.4,3.6,anger,ross\n", encoding="utf-8")
    elan_file(tmp_path / "study.eaf", {"emotion-rachel": ("rachel", None, [(0.0, 1.5, "surprise")]),
                                       "emotion": ("", None, [(1.3, 3.4, "sadness")]),
                                       "emotion-ross": ("ross", None, [(3.4, 3.6, "anger")]),
                                       "transcript": ("", None, [(0.0, 1.5, "No way!")])})
    golds = {}
    for name in ("study.csv", "study.eaf"):
        assert main([str(bag), "--model-dir", tiny_text_checkpoint, "--speed", "20", "--remap",
                     "/asr/text:=transcript", "--labels", str(tmp_path / name), "--answers",
                     str(tmp_path / f"{name}.jsonl")]) == 0
        golds[name] = [json.loads(line)["gold"] for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
    assert golds["study.eaf"] == golds["study.csv"] == [None, "surprise", "sadness", None]


def test_labels_tier_names_tiers_of_an_elan_file_only(tmp_path, tiny_text_checkpoint, capsys):
    from ddvlm_ros.bag import write_meld_bag
    from ddvlm_ros.replay import main

    bag = write_meld_bag(tmp_path / "b", "test", [0])
    with pytest.raises(SystemExit) as e:
        main([str(bag), "--model-dir", tiny_text_checkpoint, "--labels-tier", "emotion"])
    assert e.value.code == 2 and "--labels-tier names tiers of an ELAN .eaf file" in capsys.readouterr().err


def test_the_answers_go_into_a_copy_of_the_annotators_elan_file_as_tiers_elan_reads(
        tmp_path, tiny_text_checkpoint, capsys):
    """--elan: per speaker, the utterances at their spans with the words the node read, their emotion and confidence
    in dependent tiers, added to a copy of the annotators' file (theirs unchanged; read back with pympi and with
    --labels-tier); as --labels again, the node's tiers are not taken for an annotator's, and a second replay
    replaces them."""
    from pympi.Elan import Eaf
    from test_bag_replay import ROBOT_LINES, write_robot_bag

    from ddvlm_ros.replay import main

    bag = write_robot_bag(tmp_path / "robot", ROBOT_LINES, fps=0.0)
    study = elan_file(tmp_path / "study.eaf", {"emotion-rachel": ("rachel", None, [(0.0, 1.5, "surprise")]),
                                               "emotion": ("", None, [(1.3, 3.4, "sadness")]),
                                               "words": ("", None, [(0.0, 1.5, "No way!")])})
    before = study.read_bytes()
    args = [str(bag), "--model-dir", tiny_text_checkpoint, "--speed", "20", "--remap", "/asr/text:=transcript"]
    assert main([*args, "--labels", str(study), "--answers", str(tmp_path / "a.jsonl"),
                 "--elan", str(tmp_path / "S01_ddvlm.eaf")]) == 0
    assert study.read_bytes() == before
    records = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    shown = [r for r in records if r["span_s"][1] > 0]  # Ross's first line ended before the bag began
    assert len(shown) == 3
    assert f"ELAN tiers: {tmp_path / 'S01_ddvlm.eaf'} (3 utterances of 2 speakers, into a copy of {study})" in (
        capsys.readouterr().out)
    eaf, theirs = Eaf(str(tmp_path / "S01_ddvlm.eaf")), Eaf(str(study))
    for tier in theirs.get_tier_names():
        assert eaf.get_annotation_data_for_tier(tier) == theirs.get_annotation_data_for_tier(tier)
    for speaker in ("Ross", "Rachel"):
        mine = [r for r in shown if r["speaker_id"] == speaker]
        spans = [(max(0, round(1000 * r["span_s"][0])), round(1000 * r["span_s"][1])) for r in mine]
        assert sorted(eaf.get_annotation_data_for_tier(f"ddvlm-transcript:{speaker}")) == [
            (a, b, r["transcript"]) for (a, b), r in zip(spans, mine)]
        assert [(a, b, value) for a, b, value, _ in eaf.get_ref_annotation_data_for_tier(f"ddvlm-emotion:{speaker}")] \
            == [(a, b, r["prediction"]) for (a, b), r in zip(spans, mine)]
        assert [float(v[2]) for v in eaf.get_ref_annotation_data_for_tier(f"ddvlm-confidence:{speaker}")] == [
            pytest.approx(r["confidence"], abs=5e-4) for r in mine]
        assert load_intervals(tmp_path / "S01_ddvlm.eaf", [f"ddvlm-emotion:{speaker}"]) == [
            Interval(a / 1000, b / 1000, r["prediction"], speaker) for (a, b), r in zip(spans, mine)]
    assert load_intervals(tmp_path / "S01_ddvlm.eaf") == load_intervals(study)  # the annotators' labels only
    assert main([*args, "--labels", str(tmp_path / "S01_ddvlm.eaf"), "--answers", str(tmp_path / "b.jsonl"),
                 "--elan", str(tmp_path / "again.eaf")]) == 0
    assert [json.loads(line)["gold"] for line in (tmp_path / "b.jsonl").read_text().splitlines()] == [
        r["gold"] for r in records]
    assert sorted(Eaf(str(tmp_path / "again.eaf")).get_tier_names()) == sorted(eaf.get_tier_names())
    assert len(Eaf(str(tmp_path / "again.eaf")).get_annotation_data_for_tier("ddvlm-transcript:Rachel")) == 2
    assert main([*args, "--elan", str(tmp_path / "alone.eaf")]) == 0  # no annotators' file: a new one
    alone = Eaf(str(tmp_path / "alone.eaf"))
    assert sorted(alone.get_tier_names()) == sorted(f"ddvlm-{what}:{speaker}" for speaker in ("Ross", "Rachel")
                                                    for what in ("transcript", "emotion", "confidence"))
    assert alone.get_annotation_data_for_tier("ddvlm-transcript:Rachel") == eaf.get_annotation_data_for_tier(
        "ddvlm-transcript:Rachel")
    with pytest.raises(SystemExit):
        main([*args, "--labels", str(study), "--elan", str(study)])
    assert "the annotators' --labels file; the answers go into a copy, not into it" in capsys.readouterr().err
    assert study.read_bytes() == before


def test_the_robots_turns_go_into_the_elan_file_as_a_transcript_tier_alone(tmp_path, tiny_text_checkpoint, capsys):
    """--elan with the robot's words (/speech) and its TTS's robot_speaking (/tts/speaking): its turn at the span its
    TTS spoke it (105.2 s to 105.9 s of a bag begun at 100.2 s, its VAD's first message), in a transcript tier with
    no emotion or confidence tier; the persons' tiers as before."""
    from pympi.Elan import Eaf
    from test_bag_replay import write_robot_bag

    from ddvlm_ros.replay import main

    said = "Shall I bring some cake?"
    bag = write_robot_bag(tmp_path / "robot", ["Ann: I got the job!", "Ben: No way, really?"], fps=0.0,
                          said={1: said}, times=[102.0, 106.0], robot_speaking=True, vad=True)
    assert main([str(bag), "--model-dir", tiny_text_checkpoint, "--speed", "20", "--remap", "/asr/text:=transcript",
                 "--remap", "/speech:=robot_speech", "--remap", "/tts/speaking:=robot_speaking",
                 "--remap", "/is_speeching:=voice_activity", "--elan", str(tmp_path / "S01.eaf")]) == 0
    assert f"ELAN tiers: {tmp_path / 'S01.eaf'} (2 utterances of 2 speakers, 1 turn of robot (transcript only))" in (
        capsys.readouterr().out)
    eaf = Eaf(str(tmp_path / "S01.eaf"))
    assert sorted(eaf.get_tier_names()) == sorted(["ddvlm-transcript:robot"] + [
        f"ddvlm-{what}:{speaker}" for speaker in ("Ann", "Ben") for what in ("transcript", "emotion", "confidence")])
    assert eaf.get_annotation_data_for_tier("ddvlm-transcript:robot") == [(5000, 5700, said)]
    assert eaf.get_parameters_for_tier("ddvlm-transcript:robot")["PARTICIPANT"] == "robot"
    assert len(eaf.get_ref_annotation_data_for_tier("ddvlm-emotion:Ben")) == 1


def test_a_speaker_whose_speech_all_came_before_the_bag_gets_no_elan_tiers(tmp_path):
    from pympi.Elan import Eaf

    from ddvlm_ros.elan import write_answers

    records = [{"speaker_id": "Zoe", "span_s": [-3.0, -1.0], "prediction": "joy", "confidence": 0.5,
                "transcript": "Hi"},
               {"speaker_id": "Max", "span_s": [-1.0, 2.0], "prediction": "anger", "confidence": 0.25,
                "transcript": "No!"}]
    assert write_answers(records, tmp_path / "a.eaf") == {"Max": 1}
    eaf = Eaf(str(tmp_path / "a.eaf"))
    assert sorted(eaf.get_tier_names()) == [f"ddvlm-{what}:Max" for what in ("confidence", "emotion", "transcript")]
    assert eaf.get_annotation_data_for_tier("ddvlm-transcript:Max") == [(0, 2000, "No!")]
