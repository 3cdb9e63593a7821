"""Gold labels as time intervals (an annotator's, e.g. exported from ELAN), matched to a replayed bag's utterances.

A study's annotators label stretches of the recording, not the node's utterance keys: a CSV (or tab-separated)
file with a header naming the columns ``start``, ``end`` and ``label``, and optionally ``speaker``::

    start,end,label,speaker
    12.4,14.1,joy,ann
    0:15.2,0:17.9,neutral,bob

Times are seconds from the bag's first message (what a video made from the bag, Foxglove's time line or ELAN with
that video show): plain seconds (negative before it), ``mm:ss.s`` or ``hh:mm:ss.s`` (a comma for the decimal point
too, as in SRT).
Labels are MELD's seven (``ddvlm_core.labels``; case is ignored). Each replayed utterance takes the label of the
interval that overlaps its time span the most (where the node places its camera window: its ``Utterance`` start and
end stamps; a transcript without them: when its words were said, estimated from them and when it came,
``ddvlm_core.speech_timing``; and on the speech a VAD in the bag heard, ``ddvlm_ros.replay.BagVads``), among the
intervals of its speaker when both name one; an utterance no interval overlaps is not scored, and intervals no
utterance overlaps are counted.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from ddvlm_core.labels import LABELS, label_id

TIME = re.compile(r"(-?)(?:(?:(\d+):)?(\d+):)?(\d+(?:[.,]\d*)?)")


class TimeLabelsError(ValueError):
    """A labels file that cannot be read, with the row and the reason."""


@dataclass(frozen=True)
class Interval:
    start: float  # seconds from the bag's first message
    end: float
    label: str  # one of LABELS
    speaker: str = ""  # '' = anyone


def parse_time(text: str) -> float:
    """'12.5', '1:02.5', '0:01:02,500' -> seconds; '-2.5': before the bag's first message (speech it caught the
    end of)."""
    m = TIME.fullmatch(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a time (seconds, mm:ss.s or hh:mm:ss.s)")
    sign, hours, minutes, seconds = m.groups()
    value = int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds.replace(",", "."))
    return -value if sign else value


def load_intervals(path: str | Path) -> list[Interval]:
    """The intervals of a CSV or tab-separated file with a header (start, end, label[, speaker])."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise TimeLabelsError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
    first = text.splitlines()[0] if text.strip() else ""
    rows = csv.DictReader(text.splitlines(), delimiter="\t" if "\t" in first else ",")
    columns = {(c or "").strip().lower(): c for c in rows.fieldnames or []}
    missing = [c for c in ("start", "end", "label") if c not in columns]
    if missing:
        raise TimeLabelsError(f"{path}: no column {', '.join(missing)} in its header (start, end, label[, speaker]; "
                              f"found {', '.join(columns) or 'none'})")
    out = []
    for n, row in enumerate(rows, start=2):  # line 1 is the header
        try:
            start, end = parse_time(row[columns["start"]] or ""), parse_time(row[columns["end"]] or "")
            label = LABELS[label_id((row[columns["label"]] or "").strip())]
        except ValueError as e:
            raise TimeLabelsError(f"{path}, line {n}: {e}") from None
        if end <= start:
            raise TimeLabelsError(f"{path}, line {n}: ends ({end:g} s) before it starts ({start:g} s)")
        speaker = (row.get(columns["speaker"]) or "").strip() if "speaker" in columns else ""
        out.append(Interval(start, end, label, speaker))
    return out


def overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def label_for(span: tuple[float, float], speaker: str, intervals: list[Interval]) -> str | None:
    """The label of the interval overlapping ``span`` the most (the earliest on a tie) among those of ``speaker``
    when both name one; None when none overlaps it."""
    best, best_overlap = None, 0.0
    for iv in intervals:
        if iv.speaker and speaker and iv.speaker.casefold() != speaker.casefold():
            continue
        o = overlap(span, (iv.start, iv.end))
        if o > best_overlap:
            best, best_overlap = iv, o
    return best.label if best is not None else None


def unmatched(spans: list[tuple[float, float]], intervals: list[Interval]) -> int:
    """How many intervals overlap none of the utterances' spans (speech the replay never answered, or labels on
    another time line)."""
    return sum(not any(overlap(s, (iv.start, iv.end)) > 0 for s in spans) for iv in intervals)
