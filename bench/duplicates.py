"""The same transcript delivered twice (``ddvlm_core.duplicates``): how many of MELD's people the rule would take for
a copy.

    python bench/duplicates.py [--report-dir reports]

Every MELD utterance on the node's time line as a bag of MELD holds it (``ddvlm_ros.bag.timeline``), compared, as
the node compares it, with the ``RECENT_DELIVERIES`` transcripts before it: as ``Utterance``s (the end is the
message's stamp) and as ``std_msgs/String`` transcripts (the end is when it arrived), played at 1x and at 20x (the
replay's and ``make demo``'s speed: the node runs on the bag's time, and the transcripts arrive 20 times closer).
A person taken for a copy is a person the node would not answer. No model runs.

Writes duplicates.md and .json to reports/ (or ``--report-dir``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.shared import write_report  # noqa: E402

SPEEDS = (1.0, 20.0)
INPUTS = {"Utterance (end stamped)": True, "String (end on arrival)": False}


def taken(split: str, stamped: bool, speed: float) -> list[dict]:
    """The utterances of ``split`` that the rule takes for a copy of one before, with that one."""
    from ddvlm_core.duplicates import Delivery, original_of
    from ddvlm_ros.bag import timeline
    from ddvlm_ros.pipeline import RECENT_DELIVERIES
    from ddvlm_core.meld import dialogues

    out, recent = [], {}
    for u in timeline(dialogues(split), split):
        before = recent.setdefault(u.conversation_id, [])
        delivery = Delivery("utterance", u.speaker, u.text, u.end, stamped, u.end / speed)
        original = original_of(before[-RECENT_DELIVERIES:], delivery)
        if original is None:
            before.append(delivery)
        else:
            out.append({"utterance": f"{u.conversation_id}/{u.utterance_id}", "speaker": u.speaker, "text": u.text,
                        "after_s": round(u.end - original.end, 3)})
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report-dir", default=str(REPO / "reports"), help="where the reports go")
    args = ap.parse_args(argv)
    from ddvlm_core.duplicates import COPY_WINDOW_S, CROSS_INPUT_MIN_WORDS, SAME_END_S
    from ddvlm_core.meld import SPLIT_SIZES

    rows = [{"split": split, "input": name, "speed": speed, "utterances": SPLIT_SIZES[split],
             "taken": taken(split, stamped, speed)}
            for split in SPLIT_SIZES for name, stamped in INPUTS.items() for speed in SPEEDS]
    lines = ["# The same transcript delivered twice: MELD's people taken for copies", "",
             "`python bench/duplicates.py` (`ddvlm_core/duplicates.py`). A transcript is a copy of one before it when "
             f"it arrives at most {COPY_WINDOW_S:g} s after it with its words, and on the same input its speaker and "
             f"its end (the same stamp; ends stamped on arrival within {SAME_END_S:g} s, and then only the latest "
             f"transcript of the input is compared; on another input, {CROSS_INPUT_MIN_WORDS} words at least). Every "
             "MELD utterance at its time on a bag's time line (`ddvlm_ros.bag.timeline`), compared with the "
             "transcripts before it as the node compares them. A person taken for a copy gets no answer.", "",
             "| split | input | bag played at | taken for copies |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['split']} | {r['input']} | {r['speed']:g}x | {len(r['taken'])} of {r['utterances']} |")
    seen = {}
    for r in rows:
        for t in r["taken"]:
            seen.setdefault(t["utterance"], t)
    if seen:
        said = [f"{k} ({t['speaker']}: {t['text']!r}, {t['after_s']:g} s after the same words)"
                for k, t in seen.items()]
        lines += ["", "Taken: " + "; ".join(said)]
    write_report(args.report_dir, "duplicates", {"rows": rows}, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
