"""The same transcript delivered twice (ddvlm_core.duplicates): the rule, known answers, and its report on MELD."""
import json
from pathlib import Path

import pytest

from bench_modules import load_bench
from ddvlm_core.duplicates import (CROSS_INPUT_MIN_WORDS, COPY_WINDOW_S, SAME_END_S, Delivery, is_copy,
                                   original_of, same_words)

REPO = Path(__file__).resolve().parents[1]
ORIGINAL = Delivery("utterance", "ann", "I got the job!", 10.0, True, 100.0)
SAID = Delivery("transcript", "", "I got the job!", 100.0, False, 100.0)  # stamped when it arrived (a String)


@pytest.mark.parametrize("later, expected", [
    (ORIGINAL, True),  # the same message again (a relay, a bridge)
    (Delivery("utterance", "ann", "I  got the job! ", 10.0, True, 100.0 + COPY_WINDOW_S), True),  # white space
    (Delivery("utterance", "ann", "I got the job!", 10.0, True, 100.0 + COPY_WINDOW_S + 0.01), False),  # too late
    (Delivery("utterance", "ann", "I got the job!", 10.0, True, 99.9), False),  # arrived before it
    (Delivery("utterance", "ann", "I got the job!", 10.4, True, 100.1), False),  # said again: a new end
    (Delivery("utterance", "bob", "I got the job!", 10.0, True, 100.1), False),  # another speaker on the input
    (Delivery("utterance", "ann", "I got the job.", 10.0, True, 100.1), False),  # other words
    (Delivery("transcript", "Ann", "I got the job!", 10.9, False, 100.2), True),  # the same words on another input
    (Delivery("voices", "ann", "I got the job!", 10.0, True, 100.2), True),  # ROS4HRI's input
])
def test_is_copy_known_answers(later, expected):
    assert is_copy(ORIGINAL, later) is expected


@pytest.mark.parametrize("later, expected", [
    (Delivery("transcript", "", "I got the job!", 100.0 + SAME_END_S, False, 100.05), True),  # two publishers
    (Delivery("transcript", "", "I got the job!", 100.3, False, 100.3), False),  # said again 0.3 s later
    (Delivery("transcript", "", "I got the job!", 100.3, False, 100.015), False),  # the same, in a bag played 20x
])
def test_transcripts_stamped_on_arrival_are_copies_only_with_ends_that_close(later, expected):
    assert is_copy(SAID, later) is expected


def test_on_two_inputs_a_copy_has_three_words_at_least():
    """Two people answering "Yes!" at once, one heard on each input, are two."""
    yes = Delivery("utterance", "ann", "Yes!", 10.0, True, 100.0)
    assert not is_copy(yes, Delivery("transcript", "", "Yes!", 100.1, False, 100.1))
    assert CROSS_INPUT_MIN_WORDS == 3 and is_copy(yes, Delivery("utterance", "ann", "Yes!", 10.0, True, 100.1))
    three = Delivery("utterance", "ann", "Yes, of course.", 10.0, True, 100.0)
    assert is_copy(three, Delivery("transcript", "", "Yes, of course.", 100.1, False, 100.1))


def test_a_transcript_stamped_on_arrival_is_compared_with_the_latest_of_its_input_only():
    """A backlog: Ann's "Yes, please." twice with Bob's turn between, all taken at once (ends read on arrival): two
    utterances. The same transcript right after itself is a copy; stamped ones are compared with all the latest."""
    ann, bob = (Delivery("transcript", who, text, 50.0, False, 100.0) for who, text in (("Ann", "Yes, please."),
                                                                                        ("Bob", "No.")))
    again = Delivery("transcript", "Ann", "Yes, please.", 50.01, False, 100.01)
    assert is_copy(ann, again) and original_of([ann, bob], again) is None and original_of([bob, ann], again) is ann
    stamped = [Delivery("utterance", who, text, end, True, 100.0) for who, text, end in (("Ann", "Yes, please.", 49.0),
                                                                                         ("Bob", "No.", 50.0))]
    copy = Delivery("utterance", "Ann", "Yes, please.", 49.0, True, 100.02)
    assert original_of(stamped, copy) is stamped[0]
    assert original_of([stamped[0], bob], Delivery("transcript", "", "Yes, please, now.", 51.0, False, 100.03)) is None


def test_same_words_ignores_white_space_only():
    assert same_words(" Hi  there.\n", "Hi there.") and not same_words("Hi there.", "hi there.")


def test_on_meld_no_person_is_taken_for_a_copy_and_the_committed_report_is_current(tmp_path):
    """bench/duplicates.py (no model, seconds): none of MELD's 13,708 utterances would be taken for a copy of one
    before it, as Utterances (stamped ends) or as Strings (ends on arrival), at 1x or at 20x. The committed report
    holds those numbers."""
    assert load_bench("duplicates").main(["--report-dir", str(tmp_path)]) == 0
    fresh = json.loads((tmp_path / "duplicates.json").read_text())
    assert len(fresh["rows"]) == 12 and sum(r["utterances"] for r in fresh["rows"]) == 4 * 13708
    assert not any(r["taken"] for r in fresh["rows"])
    assert fresh == json.loads((REPO / "reports" / "duplicates.json").read_text()), "rerun bench/duplicates.py"


def test_the_readme_states_the_rule_and_the_numbers_of_the_committed_report():
    from ddvlm_ros.pipeline import COPY_RECUR, COPY_WINDOW, RECENT_DELIVERIES

    rows = json.loads((REPO / "reports" / "duplicates.json").read_text())["rows"]
    n = sum(r["utterances"] for r in rows if r["input"].startswith("Utterance") and r["speed"] == 1.0)
    taken = {t["utterance"]: t for r in rows for t in r["taken"]}
    readme = " ".join((REPO / "README.md").read_text().split())
    assert (f"a transcript that arrives at most {COPY_WINDOW_S:g} s after one of the latest {RECENT_DELIVERIES} of its "
            f"conversation with its words ({CROSS_INPUT_MIN_WORDS} at least on another input: two people answering "
            "\"Yes!\" at once are two) and, on the same input, "
            "its speaker and its end (the same stamp; for a `std_msgs/String`, stamped on arrival, ends within "
            f"{SAME_END_S:g} s)") in readme
    assert f"its status warns while {COPY_RECUR} of the latest {COPY_WINDOW} transcripts are copies" in readme
    assert not taken and (f"of MELD's {n:,} utterances on a bag's time line, none is taken for a copy, as "
                          "`Utterance`s or as `std_msgs/String`s, played at 1x or 20x") in readme
