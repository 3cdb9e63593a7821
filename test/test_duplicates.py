"""The same transcript delivered twice (ddvlm_core.duplicates): the rule, known answers, and its report on MELD."""
import json
from pathlib import Path

import pytest

from bench_modules import load_bench
from ddvlm_core.duplicates import COPY_WINDOW_S, SAME_END_S, Delivery, is_copy, same_words

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
    (Delivery("voice ann", "ann", "I got the job!", 10.0, True, 100.2), True),
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


def test_same_words_ignores_white_space_only():
    assert same_words(" Hi  there.\n", "Hi there.") and not same_words("Hi there.", "hi there.")


def test_on_meld_no_person_is_taken_for_a_copy_but_one_annotation_artifact_and_the_committed_report_is_current(
        tmp_path):
    """bench/duplicates.py (no model, seconds): as Utterances (stamped ends), none of MELD's 13,708 utterances would be
    taken for a copy of one before it, at 1x or at 20x; as Strings (ends on arrival), one: a 'Yay!' MELD times 47 ms
    after the same speaker's 'Yay!'. The committed report holds those numbers."""
    assert load_bench("duplicates").main(["--report-dir", str(tmp_path)]) == 0
    fresh = json.loads((tmp_path / "duplicates.json").read_text())
    stamped = [r for r in fresh["rows"] if r["input"].startswith("Utterance")]
    assert len(stamped) == 6 and not any(r["taken"] for r in stamped)
    taken = {t["utterance"]: t for r in fresh["rows"] for t in r["taken"]}
    assert list(taken) == ["train/dia541/utt10"] and taken["train/dia541/utt10"]["after_s"] < SAME_END_S
    assert fresh == json.loads((REPO / "reports" / "duplicates.json").read_text()), "rerun bench/duplicates.py"


def test_the_readme_states_the_rule_and_the_numbers_of_the_committed_report():
    from ddvlm_ros.pipeline import COPY_RECUR, COPY_WINDOW, RECENT_DELIVERIES

    rows = json.loads((REPO / "reports" / "duplicates.json").read_text())["rows"]
    n = sum(r["utterances"] for r in rows if r["input"].startswith("Utterance") and r["speed"] == 1.0)
    taken = {t["utterance"]: t for r in rows for t in r["taken"]}
    readme = " ".join((REPO / "README.md").read_text().split())
    assert (f"a transcript that arrives at most {COPY_WINDOW_S:g} s after one of the latest {RECENT_DELIVERIES} of its "
            "conversation with its words and, on the same input, its speaker and its end (the same stamp; for a "
            f"`std_msgs/String`, stamped on arrival, ends within {SAME_END_S:g} s)") in readme
    assert f"its status warns while {COPY_RECUR} of the latest {COPY_WINDOW} transcripts are copies" in readme
    (yay,) = taken.values()
    assert (f"of MELD's {n:,} utterances on a bag's time line, none is taken for a copy as `Utterance`s, played at 1x "
            f"or 20x, and {len(taken)} as `std_msgs/String`s (a \"{yay['text']}\" MELD times "
            f"{1000 * yay['after_s']:.0f} ms after the same speaker's)") in readme
