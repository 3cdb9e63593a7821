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


def test_on_meld_late_transcripts_grow_with_the_asrs_real_time_factor_and_the_committed_report_is_current(tmp_path):
    """bench/late_transcripts.py --arrivals-only (no model, a second): with one ASR per voice, almost no transcript
    arrives late at a desktop GPU's real-time factor, and more the slower the ASR. The committed report holds those
    numbers and its model rows (from the full run): at RTF 0.5, the context in arrival order scores below the order
    said, placing the late ones by their end stamps recovers part of it, and answers each late one as the offline
    evaluation does (from the turns said before it)."""
    assert load_bench("late_transcripts").main(["--arrivals-only", "--report-dir", str(tmp_path)]) == 0
    fresh = json.loads((tmp_path / "late_transcripts.json").read_text())
    for split in fresh["arrivals"].values():
        shares = [split["percent"][r] for r in ("0.1", "0.3", "0.5", "1.0")]
        assert shares[0] < 0.5 and shares == sorted(shares) and shares[-1] > 15
    committed = json.loads((REPO / "reports" / "late_transcripts.json").read_text())
    assert committed["arrivals"] == fresh["arrivals"]
    in_order, arrival, placed = committed["rows"]
    assert in_order["n"] == arrival["n"] == placed["n"] == 2610
    assert placed["late"]["n"] == fresh["arrivals"]["test"]["late"]["0.5"]
    assert arrival["wa_f1"] < placed["wa_f1"] < in_order["wa_f1"] and placed["late"] == in_order["late"]


def test_the_readme_states_the_rule_and_the_numbers_of_the_committed_report():
    report = json.loads((REPO / "reports" / "late_transcripts.json").read_text())
    test = {rtf: f"{share:.2f} %" for rtf, share in report["arrivals"]["test"]["percent"].items()}
    in_order, arrival, placed = report["rows"]
    readme = " ".join((REPO / "README.md").read_text().split())
    assert f"and not by more than {LATE_MAX_S:g} s (stamps of another clock)" in readme
    assert (f"{test['0.1']} of the transcripts arrive late at a real-time factor of 0.1 (Whisper on a desktop GPU), "
            f"{test['0.3']} at 0.3, {test['0.5']} at 0.5 (a Jetson) and {test['1.0']} at 1") in readme
    assert report["model_rtf"] == 0.5 and (
        f"at 0.5 the default scores WA-F1 {arrival['wa_f1']:.2f} with the context in arrival order, "
        f"{placed['wa_f1']:.2f} placed ({in_order['wa_f1']:.2f} with one ASR, in the order said") in readme
