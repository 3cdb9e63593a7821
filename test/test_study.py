"""python -m ddvlm_ros.study: the replays' answers files of a study's sessions pooled (known answers, and two real
replays of MELD bags)."""
import json

import numpy as np
import pytest

from ddvlm_core.calibration import coverage_of
from ddvlm_core.labels import LABELS, label_id
from ddvlm_core.metrics import bootstrap_wa_f1, metrics
from ddvlm_ros.study import main, read_session, score_study


def confidence_of(k: int) -> float:
    """The confidence the answer to the k-th utterance of a session is given: 0.35 ... 0.9."""
    return 0.35 + 0.05 * (k % 12)


def write_session(path, pairs, old_format=False):
    """An answers file of (gold, predicted) pairs (the k-th answer of confidence ``confidence_of(k)``, every third
    one flagged transcript-low-confidence); None for an unlabelled or unanswered utterance."""
    lines = []
    for k, (gold, predicted) in enumerate(pairs):
        answer = None if predicted is None else {"top_label": predicted, "confidence": confidence_of(k),
                                                 "flags": ["transcript-low-confidence"] * (k % 3 == 0)}
        record = {"key": f"default/{k + 1}", "speaker_id": "p", "gold": gold, "text": answer, "refined": None,
                  "revised": None}
        if not old_format:
            record["prediction"] = predicted
            record["confidence"] = None if predicted is None else confidence_of(k)
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def random_sessions(tmp_path, n_sessions, seed=0):
    rng = np.random.default_rng(seed)
    files, pairs = [], []
    for s in range(n_sessions):
        gold = rng.integers(0, 7, 15)
        predicted = np.where(rng.random(15) < 0.6, gold, rng.integers(0, 7, 15))
        session = [(LABELS[g], LABELS[p]) for g, p in zip(gold, predicted)]
        files.append(write_session(tmp_path / f"P{s:02d}.jsonl", session))
        pairs.append(session)
    return files, pairs


def test_twelve_sessions_pool_their_utterances_and_the_interval_draws_whole_sessions(tmp_path, capsys):
    files, pairs = random_sessions(tmp_path, 12)
    assert main([str(f) for f in files] + ["--report", str(tmp_path / "study.md")]) == 0
    score = json.loads((tmp_path / "study.json").read_text())["score"]
    gold = [label_id(g) for session in pairs for g, _ in session]
    predicted = [label_id(p) for session in pairs for _, p in session]
    assert {k: score[k] for k in ("n", "wa_f1", "macro_f1", "accuracy", "confusion")} == {
        k: metrics(gold, predicted)[k] for k in ("n", "wa_f1", "macro_f1", "accuracy", "confusion")}
    groups = [f"P{s:02d}" for s in range(12) for _ in range(15)]
    assert score["wa_f1_interval"] == bootstrap_wa_f1(gold, predicted, groups) | {"groups": "sessions"}
    assert score["wa_f1_interval"]["unit"] == "group" and score["sessions"] == 12
    first = metrics([label_id(g) for g, _ in pairs[0]], [label_id(p) for _, p in pairs[0]])
    assert score["per_session"]["P00"] == {"n": 15, "wa_f1": first["wa_f1"], "accuracy": first["accuracy"],
                                           "unlabelled": 0, "unanswered": 0}
    confident = [(confidence_of(k), g == p) for session in pairs for k, (g, p) in enumerate(session)]
    assert score["coverage"] == coverage_of(*zip(*confident))  # every answer's confidence, pooled
    seven = [ok for c, ok in confident if c >= 0.7]
    markdown = (tmp_path / "study.md").read_text()
    row = f"| 0.7 | {100 * len(seven) / len(confident):.1f} % ({len(seven)}) | {100 * sum(seven) / len(seven):.1f} % |"
    assert row in markdown
    assert "bootstrap over its 12 sessions)" in markdown and f"| P00 | 15 | {first['wa_f1']:.2f} |" in markdown
    flagged = [g == p for session in pairs for k, (g, p) in enumerate(session) if k % 3 == 0]
    others = [g == p for session in pairs for k, (g, p) in enumerate(session) if k % 3]
    assert score["per_flag"] == {"transcript-low-confidence": {"n": 60, "accuracy": pytest.approx(
        100 * sum(flagged) / 60), "accuracy_others": pytest.approx(100 * sum(others) / 120)}}
    assert f"| `transcript-low-confidence` | 60 | {100 * sum(flagged) / 60:.1f} | {100 * sum(others) / 120:.1f} |" \
        in markdown
    assert (tmp_path / "study.confusion.png").stat().st_size > 0 and markdown in capsys.readouterr().out


def test_unlabelled_and_unanswered_utterances_are_counted_not_scored_and_old_files_read_their_latest_answer(
        tmp_path):
    old = read_session(write_session(tmp_path / "S1.jsonl", [("joy", "joy"), (None, "anger"), ("fear", None)],
                                     old_format=True))
    assert (old.gold, old.predicted, old.unlabelled, old.unanswered) == ([label_id("joy")], [label_id("joy")], 1, 1)
    revised = {"key": "default/1", "gold": "sadness", "text": {"top_label": "joy"},
               "refined": {"top_label": "neutral"}, "revised": {"top_label": "sadness"}}
    (tmp_path / "S2.jsonl").write_text(json.dumps(revised) + "\n\n", encoding="utf-8")
    assert read_session(tmp_path / "S2.jsonl").predicted == [label_id("sadness")]
    assert old.confidence == {"default/1": confidence_of(0)}  # an old file: its latest answer's confidence
    score = score_study([old, read_session(tmp_path / "S2.jsonl")])
    assert score["n"] == 2 and score["accuracy"] == 100.0 and (score["unlabelled"], score["unanswered"]) == (1, 1)
    assert score["wa_f1_interval"]["unit"] == "utterance"  # two sessions: too few to resample


@pytest.mark.parametrize("content, why", [("{not json\n", "line 1: not a replay answer record (JSONDecodeError"),
                                          ('{"key": "a/1"}\n', "line 1: not a replay answer record (KeyError"),
                                          ('{"key": "a/1", "gold": "joy", "prediction": "glad"}\n',
                                           "line 1: not a replay answer record (ValueError"),
                                          ('{"key": "a/1", "gold": null, "prediction": "joy"}\n',
                                           "no session has an utterance both labelled and answered")])
def test_a_file_that_cannot_be_scored_is_refused_with_its_line(tmp_path, capsys, content, why):
    bad = tmp_path / "S1.jsonl"
    bad.write_text(content, encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        main([str(bad)])
    assert e.value.code == 2 and why in capsys.readouterr().err


def test_two_files_of_one_session_name_are_refused(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    files = [write_session(tmp_path / "S1.jsonl", [("joy", "joy")]),
             write_session(tmp_path / "a" / "S1.jsonl", [("joy", "joy")])]
    with pytest.raises(SystemExit) as e:
        main([str(f) for f in files])
    assert e.value.code == 2 and "two answers files name the same session: ['S1']" in capsys.readouterr().err


def test_two_replayed_bags_pool_to_the_metrics_of_both_replays_answers(tmp_path, tiny_text_checkpoint):
    from ddvlm_ros.bag import write_meld_bag
    from ddvlm_ros.replay import main as replay

    for name, dialogues in (("S1", [0, 19]), ("S2", [1, 26])):
        bag = write_meld_bag(tmp_path / name, "test", dialogues)
        assert replay([str(bag), "--model-dir", tiny_text_checkpoint, "--speed", "40", "--param",
                       "input_timeout_s:=0.0", "--answers", str(tmp_path / f"{name}.jsonl"),
                       "--report", str(tmp_path / f"{name}.md")]) == 0
    assert main([str(tmp_path / "S1.jsonl"), str(tmp_path / "S2.jsonl"), "--report", str(tmp_path / "study.md")]) == 0
    score = json.loads((tmp_path / "study.json").read_text())["score"]
    records = [json.loads(line) for name in ("S1", "S2")
               for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
    assert score["n"] == len(records) and all(r["prediction"] == r["text"]["top_label"] for r in records)
    assert all(r["confidence"] == pytest.approx(r["text"]["confidence"]) for r in records)
    assert score["coverage"] == coverage_of([r["confidence"] for r in records],
                                            [r["prediction"] == r["gold"] for r in records])
    assert score["wa_f1"] == metrics([label_id(r["gold"]) for r in records],
                                     [label_id(r["prediction"]) for r in records])["wa_f1"]
    for name in ("S1", "S2"):
        replayed = json.loads((tmp_path / f"{name}.json").read_text())["score"]
        assert score["per_session"][name]["wa_f1"] == replayed["wa_f1"]
        assert score["per_session"][name]["n"] == replayed["n"]


def test_one_condition_against_another_pairs_sessions_and_utterances(tmp_path, capsys):
    """Twelve sessions replayed twice: the second condition answers some utterances right that the first got wrong.
    Only utterances scored in both are compared; the difference is the second's WA-F1 minus the first's."""
    from ddvlm_core.metrics import bootstrap_wa_f1_difference

    files, pairs = random_sessions(tmp_path, 12)
    (tmp_path / "b").mkdir()
    better, compared = [], []
    for s, session in enumerate(pairs):
        fixed = [(g, g if k < 5 else p) for k, (g, p) in enumerate(session)]
        fixed[-1] = (fixed[-1][0], None)  # unanswered in b: left out of the comparison
        better.append(write_session(tmp_path / "b" / f"P{s:02d}.jsonl", fixed))
        compared += [(f"P{s:02d}", g, p, q) for (g, p), (_, q) in zip(session, fixed) if q is not None]
    assert main([str(f) for f in better] + ["--versus"] + [str(f) for f in files]
                + ["--report", str(tmp_path / "ab.md")]) == 0
    versus = json.loads((tmp_path / "ab.json").read_text())["score"]["versus"]
    gold = [label_id(g) for _, g, _, _ in compared]
    a, b = [label_id(p) for _, _, p, _ in compared], [label_id(q) for _, _, _, q in compared]
    assert versus["n"] == len(compared) == 12 * 14
    assert versus["wa_f1"] == metrics(gold, b)["wa_f1"] and versus["versus_wa_f1"] == metrics(gold, a)["wa_f1"]
    expected = bootstrap_wa_f1_difference(gold, a, b, [s for s, _, _, _ in compared])
    assert versus["difference_interval"] == expected | {"groups": "sessions"} and expected["low"] > 0
    assert (f"a difference of **{expected['difference']:+.2f}** (paired 95 % interval {expected['low']:.2f} to "
            f"{expected['high']:.2f}, bootstrap over its 12 sessions;") in capsys.readouterr().out


def test_versus_must_name_the_same_sessions(tmp_path, capsys):
    files, _ = random_sessions(tmp_path, 2)
    other = write_session(tmp_path / "P09.jsonl", [("joy", "joy")])
    with pytest.raises(SystemExit) as e:
        main([str(files[0]), str(files[1]), "--versus", str(files[0]), str(other)])
    assert e.value.code == 2 and "--versus must name the same sessions: ['P01', 'P09'] not in both" in \
        capsys.readouterr().err


def test_fewer_than_ten_sessions_resample_their_conversations(tmp_path, capsys):
    """Two sessions of six conversations each (keys conversation/utterance): twelve conversations are drawn whole."""
    rng = np.random.default_rng(7)
    files = []
    for name in ("A", "B"):
        records = []
        for k in range(36):
            gold = LABELS[rng.integers(0, 7)]
            said = gold if rng.random() < 0.6 else LABELS[rng.integers(0, 7)]
            records.append(json.dumps({"key": f"c{k % 6}/{k}", "gold": gold, "prediction": said}))
        files.append(tmp_path / f"{name}.jsonl")
        files[-1].write_text("\n".join(records) + "\n", encoding="utf-8")
    assert main([str(f) for f in files]) == 0
    assert "bootstrap over its 12 conversations)" in capsys.readouterr().out
    score = score_study([read_session(f) for f in files])
    keys = [f"{name}/c{k % 6}" for name in ("A", "B") for k in range(36)]
    assert score["wa_f1_interval"] == bootstrap_wa_f1(
        [g for f in files for g in read_session(f).gold], [p for f in files for p in read_session(f).predicted],
        keys) | {"groups": "conversations"}


def test_the_readme_quotes_the_committed_woq_against_fp32_comparison():
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    versus = json.loads((repo / "reports" / "study_woq_vs_fp32.json").read_text())["score"]["versus"]
    d = versus["difference_interval"]
    assert versus["n"] == 2610 and d["unit"] == "group" and d["units"] == 280 and d["groups"] == "conversations"
    readme = " ".join((repo / "README.md").read_text().split())
    assert (f"WOQ {versus['wa_f1']:.2f}, FP32 {versus['versus_wa_f1']:.2f}, a paired difference of "
            f"{d['difference']:+.2f} whose 95 % interval over the 280 dialogues is {d['low']:.2f} to {d['high']:.2f}"
            ) in readme
