"""Transcripts that arrive after later ones (ddvlm_core.arrival_order): the rule, known answers, the dialogue's
placement of a turn by its end stamp, and its report on MELD."""
import json
from pathlib import Path

import pytest

from bench_modules import load_bench
from ddvlm_core.arrival_order import LATE_MAX_S, turns_ended_after
from ddvlm_core.context import Dialogue

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("ends, end, expected", [
    ([], 5.0, 0),
    ([1.0, 2.0, 3.0], 4.0, 0),  # after all of them: the latest
    ([1.0, 2.0, 3.0], 3.0, 0),  # ended with the latest: not after it, arrival order kept
    ([1.0, 2.0, 3.0], 2.5, 1),
    ([1.0, 2.0, 3.0], 0.5, 3),
    ([1.0, None, 3.0], 0.5, 1),  # a turn without a stamp of its own is never passed
    ([1.0, 2.0, None], 0.5, 0),
    ([1.0, 2.0, 3.0 + LATE_MAX_S], 2.5, 0),  # the latest ended over LATE_MAX_S after it: another clock
    ([1.0, 40.0, 2.5 + LATE_MAX_S], 2.5, 2),  # at most LATE_MAX_S before the latest: placed
])
def test_turns_ended_after_known_answers(ends, end, expected):
    assert turns_ended_after(ends, end) == expected


def test_a_turn_with_an_earlier_end_goes_before_the_turns_that_ended_after_it():
    dialogue = Dialogue()
    hi = dialogue.append(dialogue.new_turn("bob", "Hi."), end=2.0)
    reply = dialogue.append(dialogue.new_turn("bob", "Really?"), end=11.0)
    long = dialogue.append(dialogue.new_turn("ann", "I waited all night for your call!"), end=10.0)
    assert dialogue.turns == (hi, long, reply)
    assert dialogue.until(long) == (hi, long) and dialogue.until(reply) == (hi, long, reply)
    plain = dialogue.append(dialogue.new_turn("ann", "Okay."))  # no stamp: the latest, and never passed
    older = dialogue.append(dialogue.new_turn("bob", "Wait."), end=1.0)
    assert dialogue.turns == (hi, long, reply, plain, older)
    dialogue.take_back(long)  # from the middle: an utterance that could not be answered
    assert dialogue.turns == (hi, reply, plain, older)
    assert dialogue.until(long) == dialogue.turns  # no longer in the dialogue: all of it


def test_in_a_full_window_the_earliest_turn_leaves_for_a_late_one():
    dialogue = Dialogue(max_turns=3)
    first, second, third = (dialogue.append(dialogue.new_turn("bob", f"Line {k}."), end=float(k)) for k in (1, 2, 4))
    late = dialogue.append(dialogue.new_turn("ann", "Late."), end=3.0)
    assert dialogue.turns == (second, late, third)
    oldest = dialogue.append(dialogue.new_turn("ann", "Oldest."), end=0.5)  # before every turn of a full window
    assert dialogue.turns == (oldest, late, third) and dialogue.until(oldest) == (oldest,)
    replaced = dialogue.append(dialogue.new_turn("bob", "Line 4, again."), replacing=third, end=4.5)
    assert dialogue.turns == (oldest, late, replaced)


def test_index_finds_the_turn_itself_not_the_same_words_said_again():
    dialogue = Dialogue()
    first = dialogue.append(dialogue.new_turn("bob", "Yes."), end=1.0)
    again = dialogue.append(dialogue.new_turn("bob", "Yes."), end=2.0)
    assert first == again and dialogue.index(first) == 0 and dialogue.index(again) == 1
    assert dialogue.index(dialogue.new_turn("bob", "Yes.")) is None


def test_the_bench_answers_again_each_turn_a_late_transcript_went_before_from_the_order_said():
    """bench/late_transcripts.py's model of the node: an ASR per voice at RTF 1. Ann's long turn, said first,
    arrives after Bob's and Carl's short replies; both are answered again from the order said, each revision as
    long after its first answer as Ann's transcript came after theirs."""
    from collections import namedtuple

    bench = load_bench("late_transcripts")
    row = namedtuple("row", "speaker text")
    rows = [row("ann", " ".join(["word"] * 20) + "."), row("bob", "Really?"), row("carl", "Wow.")]
    said = bench.transcripts(rows, 1.0)
    assert [i for i, _, _ in said] == [1, 2, 0]
    held = bench.hold(rows, said, placed=True)
    assert held.late == {0} and [[t.speaker for t in c] for c in held.first] == [["ann"], ["bob"], ["bob", "carl"]]
    assert [[t.speaker for t in c] for c in held.latest] == [["ann"], ["ann", "bob"], ["ann", "bob", "carl"]]
    arrived = {i: t for i, _, t in said}
    assert held.revision_delays == pytest.approx([arrived[0] - arrived[1], arrived[0] - arrived[2]])
    unplaced = bench.hold(rows, said, placed=False)  # in arrival order: nothing is placed, nothing revised
    assert unplaced.late == set() and unplaced.revision_delays == [] and unplaced.latest == unplaced.first


def test_on_meld_late_transcripts_grow_with_the_asrs_real_time_factor_and_the_committed_report_is_current(tmp_path):
    """bench/late_transcripts.py --arrivals-only (no model, a second): with one ASR per voice, almost no transcript
    arrives late at a desktop GPU's real-time factor, and more the slower the ASR. The committed report holds those
    numbers and its model rows (from the full run): at RTF 0.5, the context in arrival order scores below the order
    said, placing the late ones by their end stamps recovers part of it, and answers each late one as the offline
    evaluation does (from the turns said before it); answering again the turns they went before recovers the rest."""
    assert load_bench("late_transcripts").main(["--arrivals-only", "--report-dir", str(tmp_path)]) == 0
    fresh = json.loads((tmp_path / "late_transcripts.json").read_text())
    for split in fresh["arrivals"].values():
        shares = [split["percent"][r] for r in ("0.1", "0.3", "0.5", "1.0")]
        assert shares[0] < 0.5 and shares == sorted(shares) and shares[-1] > 15
    committed = json.loads((REPO / "reports" / "late_transcripts.json").read_text())
    assert committed["arrivals"] == fresh["arrivals"]
    in_order, arrival, placed, revised = committed["rows"]
    assert in_order["n"] == arrival["n"] == placed["n"] == revised["n"] == 2610
    assert placed["late"]["n"] == fresh["arrivals"]["test"]["late"]["0.5"]
    assert arrival["wa_f1"] < placed["wa_f1"] < in_order["wa_f1"] and placed["late"] == in_order["late"]
    assert committed["revisions"]["answers"] == fresh["arrivals"]["test"]["revised"]["0.5"]
    assert placed["revised"]["wa_f1"] < revised["revised"]["wa_f1"]
    assert revised["wa_f1"] == pytest.approx(in_order["wa_f1"], abs=0.01)


def test_the_readme_states_the_rule_and_the_numbers_of_the_committed_report():
    report = json.loads((REPO / "reports" / "late_transcripts.json").read_text())
    test = {rtf: f"{share:.2f} %" for rtf, share in report["arrivals"]["test"]["percent"].items()}
    in_order, arrival, placed, revised = report["rows"]
    delay = report["revisions"]["delay_s"]
    readme = " ".join((REPO / "README.md").read_text().split())
    assert f"and not by more than {LATE_MAX_S:g} s (stamps of another clock)" in readme
    assert (f"{test['0.1']} of the transcripts arrive late at a real-time factor of 0.1 (Whisper on a desktop GPU), "
            f"{test['0.3']} at 0.3, {test['0.5']} at 0.5 (a Jetson) and {test['1.0']} at 1") in readme
    assert report["model_rtf"] == 0.5 and (
        f"at 0.5 the default scores WA-F1 {arrival['wa_f1']:.2f} with the context in arrival order, "
        f"{placed['wa_f1']:.2f} placed and {revised['wa_f1']:.2f} once the turns they went before are answered "
        f"again ({in_order['wa_f1']:.2f} with one ASR, in the order said); on the {revised['revised']['n']} "
        f"utterances answered again, {placed['revised']['wa_f1']:.2f} in their first answers and "
        f"{revised['revised']['wa_f1']:.2f} revised, a revision coming {delay['p50']:.2f} s after the first answer "
        f"at the median ({delay['p90']:.2f} s at p90), and {report['revisions']['answers']} answers again in all "
        f"({100 * report['revisions']['answers'] / in_order['n']:.0f} % more inferences than transcripts)") in readme


def test_the_benchs_model_rows_score_each_answer_set_up(tiny_text_checkpoint, monkeypatch):
    """bench/late_transcripts.py's model part on three MELD test dialogues (6, 11, 24: one answer revised in each at
    RTF 0.5) with a tiny model: its four rows score every utterance, and three answers were published again."""
    import ddvlm_core.meld

    bench = load_bench("late_transcripts")
    chosen = {k: rows for k, rows in ddvlm_core.meld.dialogues("test").items() if k in (6, 11, 24)}
    monkeypatch.setattr(ddvlm_core.meld, "dialogues", lambda split: chosen)
    rows, revisions = bench.model_rows(tiny_text_checkpoint)
    assert [r["row"] for r in rows] == list(bench.ROWS)
    assert all(r["n"] == 12 for r in rows) and revisions["answers"] == 3 and revisions["utterances"] == 3
    assert [r["revised"]["n"] for r in rows] == [3] * 4
