"""Transcripts that are an ASR's partial results (ddvlm_core.partial_results): the rule, known answers, the dialogue's
replacement of a turn, and its report on MELD."""
import json
from pathlib import Path

import pytest

from bench_modules import load_bench
from ddvlm_core.asr_noise import streaming_partials
from ddvlm_core.context import Dialogue, Turn
from ddvlm_core.partial_results import PARTIAL_GAP_S, ends_sentence, extends, is_partial_of

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("earlier, later, expected", [
    ("i", "i can't", True),
    ("i can't", "I can’t believe it!", True),  # the final result: case, punctuation, a curly apostrophe
    ("i can't believe it", "I can't believe it!", True),  # the same words (a partial result sent again, the final)
    ("i can", "i can't believe it", True),  # the earlier one's last word was cut while spoken
    ("i can", "i can't", True),
    ("i want to", "i want two coffees", True),  # the last word revised as more came
    ("thank you", "thank god", False),  # a last word revised, nothing more: another sentence
    ("line 1", "line 2", False),
    ("i can't believe", "i can't", False),  # shorter: not a later version
    ("i", "hi there", False),  # one word: it must be the first word
    ("where is my", "where are my keys", False),  # a revision before the last word
    ("No!", "No, I won't.", True),  # words alone: the turn before ends a sentence, which is_partial_of checks
    ("Yes.", "Okay, yes.", False),
    ("...", "Oh.", False),  # no words
])
def test_extends_known_answers(earlier, later, expected):
    assert extends(earlier, later) is expected


@pytest.mark.parametrize("text, ends", [("No!", True), ("Really?\"", True), ("Wait...", True), ("Hmm…", True),
                                        ("okay. ", True), ("He said “go.”", True), ("本当？", True), ("i can", False),
                                        ("so (yes)", False), ("I, um", False), ("", False)])
def test_ends_sentence_known_answers(text, ends):
    assert ends_sentence(text) is ends


def test_a_partial_result_is_the_same_speakers_turn_just_before_within_the_gap():
    earlier, later = Turn("<s1>", "i can't", "ann"), Turn("<s1>", "I can't believe it!", "ann")
    assert is_partial_of(earlier, later, 0.5) and is_partial_of(earlier, later, PARTIAL_GAP_S)
    assert not is_partial_of(earlier, later, PARTIAL_GAP_S + 0.01)  # too long before
    assert not is_partial_of(earlier, later, -0.1)  # after it (stamps out of order)
    assert not is_partial_of(Turn("<s2>", "i can't", "bob"), later, 0.5)  # another speaker
    assert not is_partial_of(Turn("<s1>", "No!", "ann"), Turn("<s1>", "No, I won't.", "ann"), 0.5)  # a sentence
    assert is_partial_of(Turn("<s1>", "no", "ann"), Turn("<s1>", "No, I won't.", "ann"), 0.5)
    assert is_partial_of(earlier, later, 2.5, max_gap_s=3.0)


def test_a_turn_appended_in_place_of_the_latest_replaces_it_and_keeps_a_full_window_whole():
    dialogue = Dialogue(max_turns=3)
    first, second, partial = dialogue.add("bob", "Hello."), dialogue.add("ann", "Hi."), dialogue.add("ann", "i can't")
    final = dialogue.append(dialogue.new_turn("ann", "I can't believe it!"), replacing=partial)
    assert dialogue.turns == (first, second, final)  # the window was full: nothing else left it
    assert final.speaker_token == second.speaker_token == "<s2>"
    later = dialogue.append(dialogue.new_turn("bob", "What?"), replacing=partial)  # not the latest: appended
    assert dialogue.turns == (second, final, later)


def test_streaming_partials_grow_by_the_words_said_every_half_second():
    assert streaming_partials("Oh, I can't!") == ["oh", "oh i"]
    assert streaming_partials("Yes.") == []  # one word: the final result only
    steps = streaming_partials("One two three four five six seven eight nine ten.")
    assert [len(s.split()) for s in steps] == [1, 2, 4, 5, 6, 8, 9]
    assert all(extends(a, b) for a, b in zip(steps, steps[1:] + ["One two three four five six seven eight nine ten."]))


def test_on_meld_the_rule_rarely_takes_people_and_the_committed_report_is_current(tmp_path):
    """bench/asr_partials.py --people-only (no model, a second): at MELD's own times, none of MELD's utterances would
    be taken for the next version of the turn before, and under 1 % of each split's written without punctuation.
    The committed report holds those numbers, and its model rows (from the full run): every simulated partial
    result folded, no WA-F1 lost to them folded."""
    assert load_bench("asr_partials").main(["--people-only", "--report-dir", str(tmp_path)]) == 0
    fresh = json.loads((tmp_path / "asr_partials.json").read_text())
    gap = f"{PARTIAL_GAP_S}"
    assert all(row["meld_text"]["taken"][gap] == 0 for row in fresh["people"].values())
    assert all(0 < row["unpunctuated"]["percent"][gap] < 1.0 for row in fresh["people"].values())
    committed = json.loads((REPO / "reports" / "asr_partials.json").read_text())
    assert committed["people"] == fresh["people"], "rerun bench/asr_partials.py"
    people_table = (tmp_path / "asr_partials.md").read_text()
    assert people_table in (REPO / "reports" / "asr_partials.md").read_text()
    clean, folded, left = committed["rows"]
    assert clean["folded"] == left["folded"] == 0
    assert folded["transcripts"] == left["transcripts"] > clean["transcripts"] == clean["n"] == 2610
    assert folded["folded_partials"] == folded["transcripts"] - clean["transcripts"]  # every partial result folded
    assert folded["wa_f1"] == pytest.approx(clean["wa_f1"], abs=0.5)


def test_the_readme_and_the_module_state_the_rule_and_the_numbers_of_the_committed_report():
    from ddvlm_ros.pipeline import PARTIAL_RECUR, PARTIAL_WINDOW

    report = json.loads((REPO / "reports" / "asr_partials.json").read_text())
    gap = f"{PARTIAL_GAP_S}"
    people = {split: f"{row['unpunctuated']['percent'][gap]:.2f} %" for split, row in report["people"].items()}
    assert all(row["meld_text"]["taken"][gap] == 0 for row in report["people"].values())
    clean, folded, left = report["rows"]
    readme = " ".join((REPO / "README.md").read_text().split())
    assert (f"a transcript that follows its speaker's previous turn within {PARTIAL_GAP_S:g} s, where that turn does "
            "not end a sentence (`. ! ? …`), and begins with its words") in readme
    assert f"once {PARTIAL_RECUR} of the latest {PARTIAL_WINDOW} transcripts are" in readme
    assert (f"{people['test']} of MELD test's utterances would be taken so ({people['train']} of train's, "
            f"{people['dev']} of dev's)") in readme
    assert (f"WA-F1 {left['wa_f1']:.2f} with the partial results left in the context, {folded['wa_f1']:.2f} with "
            f"them folded ({clean['wa_f1']:.2f} without them)") in readme
    assert (f"{left['context_truncated']:.1f} % of the prompts lose earlier turns with them left in "
            f"({folded['context_truncated']:.1f} % folded)") in readme
    module = " ".join((REPO / "ddvlm_core" / "partial_results.py").read_text().split())
    assert ("none of MELD's utterances is taken so in its text" in module
            and f"{people['train']} (train), {people['dev']} (dev) and {people['test']} (test) are" in module)
