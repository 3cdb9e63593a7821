"""Gold labels as time intervals (an annotator's, e.g. exported from ELAN), matched to a replayed bag's utterances.

A study's annotators label stretches of the recording, not the node's utterance keys: a CSV (or tab-separated)
file with a header naming the columns ``start``, ``end`` and ``label``, and optionally ``speaker``::

    start,end,label,speaker
    12.4,14.1,joy,ann
    0:15.2,0:17.9,neutral,bob

Times are seconds from the bag's first message (what a video made from the bag, Foxglove's time line or ELAN with
that video show): plain seconds (negative before it), ``mm:ss.s`` or ``hh:mm:ss.s`` (a comma for the decimal point
too, as in SRT).

An ELAN annotation file (``.eaf``, on a video made from the bag, linked without an offset) is read as it is: each
annotation of a tier of labels is an interval, its speaker the tier's participant. The tiers of labels are those
named (``tiers``; ELAN's tier ids), else every tier all of whose annotations are labels (but the node's own, which
``--elan`` writes: ``ddvlm_ros.elan``); a dependent tier's annotations (an emotion tier on a transcription tier's
utterances) take their parent annotation's times.
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
from typing import Sequence

from ddvlm_core.labels import LABELS, label_id
from ddvlm_ros.elan import TIER_PREFIX, read_document

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


def load_intervals(path: str | Path, tiers: Sequence[str] = ()) -> list[Interval]:
    """The intervals of a CSV or tab-separated file with a header (start, end, label[, speaker]), or of an ELAN
    annotation file's tiers of labels (``load_eaf``; ``tiers``: those named)."""
    path = Path(path)
    if path.suffix.lower() == ".eaf":
        return load_eaf(path, tiers)
    if tiers:
        raise TimeLabelsError(f"{path}: tiers ({', '.join(tiers)}) are an ELAN .eaf file's; a CSV has none")
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


def load_eaf(path: str | Path, tiers: Sequence[str] = ()) -> list[Interval]:
    """The intervals of an ELAN annotation file (EAF): every annotation of its tiers of labels, in seconds of ELAN's
    time line, the tier's participant its speaker. ``tiers``: the tier ids to read, each all labels (empty
    annotations left out); none named: every tier whose annotations are all labels, and a tier with labels and
    other values too is refused (a typo would otherwise drop its labels without a word)."""
    path = Path(path)
    try:
        root = read_document(path)
    except ValueError as e:
        raise TimeLabelsError(str(e)) from None
    header = root.find("HEADER")
    units = header.get("TIME_UNITS", "milliseconds") if header is not None else "milliseconds"
    if units != "milliseconds":
        raise TimeLabelsError(f"{path}: time units {units!r}; ELAN's milliseconds are read")
    offsets = [m.get("MEDIA_URL", "") for m in root.iter("MEDIA_DESCRIPTOR")
               if (m.get("TIME_ORIGIN") or "0").strip() != "0"]
    if offsets:
        raise TimeLabelsError(f"{path}: {offsets[0]} is linked with an offset (TIME_ORIGIN): link the video made from "
                              "the bag without one, so that ELAN's time line is the bag's")
    slots = {slot.get("TIME_SLOT_ID"): slot.get("TIME_VALUE") for slot in root.iter("TIME_SLOT")}
    found = {tier.get("TIER_ID", ""): tier for tier in root.iter("TIER")}
    aligned, refs = {}, {}  # annotation id -> (slot 1, slot 2); id -> the id it refers to (a dependent tier's)
    for tier in found.values():
        for a in tier.iter("ALIGNABLE_ANNOTATION"):
            aligned[a.get("ANNOTATION_ID")] = (a.get("TIME_SLOT_REF1"), a.get("TIME_SLOT_REF2"))
        for a in tier.iter("REF_ANNOTATION"):
            refs[a.get("ANNOTATION_ID")] = a.get("ANNOTATION_REF")
    values = {name: [(a.get("ANNOTATION_ID"), (a.findtext("ANNOTATION_VALUE") or "").strip())
                     for a in tier.iter() if a.tag in ("ALIGNABLE_ANNOTATION", "REF_ANNOTATION")]
              for name, tier in found.items()}
    values = {name: [(ident, text) for ident, text in rows if text] for name, rows in values.items()}
    chosen = _label_tiers(path, values, tiers)
    out: list[tuple[Interval, str]] = []  # each interval and its tier
    for name in chosen:
        speaker = (found[name].get("PARTICIPANT") or "").strip()
        for ident, text in values[name]:
            start, end = _annotation_times(path, name, ident, aligned, refs, slots)
            try:
                label = LABELS[label_id(text)]
            except ValueError as e:
                raise TimeLabelsError(f"{path}, tier {name!r} at {start:g} s: {e}") from None
            if end <= start:
                raise TimeLabelsError(f"{path}, tier {name!r} at {start:g} s: ends before it starts")
            out.append((Interval(start, end, label, speaker), name))
    if not tiers:
        _check_one_annotator(path, out)
    return sorted((iv for iv, _ in out), key=lambda iv: (iv.start, iv.end))


def _check_one_annotator(path: Path, intervals: list[tuple[Interval, str]]) -> None:
    """Refuse tiers found by themselves that label one speaker's speech twice (two annotators' tiers, whose
    labels the overlap would pick between): the tiers to score by are then named (--labels-tier)."""
    ordered = sorted(intervals, key=lambda pair: (pair[0].speaker, pair[0].start))
    for k, (a, tier_a) in enumerate(ordered):
        for b, tier_b in ordered[k + 1:]:
            if b.speaker != a.speaker or b.start >= a.end:
                break
            if tier_a != tier_b:
                who = f"{a.speaker}'s speech" if a.speaker else "speech of anyone"
                tiers = sorted((tier_a, tier_b))
                raise TimeLabelsError(f"{path}: tiers {tiers[0]!r} and {tiers[1]!r} both label {who} at {b.start:g} s "
                                      "(two annotators?); name the tiers to score by (--labels-tier)")


def _is_label(text: str) -> bool:
    try:
        label_id(text)
    except ValueError:
        return False
    return True


def _label_tiers(path: Path, values: dict[str, list[tuple[str, str]]], named: Sequence[str]) -> list[str]:
    """The tiers of an EAF file read as labels: ``named``, or every one all labels; a refusal in words."""
    listing = "; ".join(f"{name} ({len(rows)} annotations" + (f", e.g. {rows[0][1]!r})" if rows else ")")
                        for name, rows in values.items()) or "none"
    if named:
        unknown = [name for name in named if name not in values]
        if unknown:
            raise TimeLabelsError(f"{path}: no tier {', '.join(map(repr, unknown))}; its tiers: {listing}")
        return list(named)
    labelled = {name: sum(_is_label(text) for _, text in rows) for name, rows in values.items()
                if not name.startswith(TIER_PREFIX)}  # the node's own answers (--elan), no annotator's
    mixed = [name for name, n in labelled.items() if 2 * n >= len(values[name]) and 0 < n < len(values[name])]
    if mixed:
        odd = next(text for _, text in values[mixed[0]] if not _is_label(text))
        raise TimeLabelsError(f"{path}: tier {mixed[0]!r} has labels and {odd!r}, which is none (labels: "
                              f"{', '.join(LABELS)}); correct it, or name the tiers of labels (--labels-tier)")
    chosen = [name for name, n in labelled.items() if n and n == len(values[name])]
    if not chosen:
        raise TimeLabelsError(f"{path}: no tier whose annotations are all labels ({', '.join(LABELS)}); its tiers: "
                              f"{listing}")
    return chosen


def _annotation_times(path: Path, tier: str, ident: str, aligned: dict, refs: dict,
                      slots: dict) -> tuple[float, float]:
    """(start, end) in seconds of an annotation, a dependent tier's through the annotations it refers to."""
    seen = set()
    while ident in refs and ident not in seen:
        seen.add(ident)
        ident = refs[ident]
    values = [slots.get(slot) for slot in aligned.get(ident, (None, None))]
    if any(v is None or not v.strip().lstrip("-").isdigit() for v in values):
        raise TimeLabelsError(f"{path}, tier {tier!r}: annotation {ident} is not aligned to times (an unaligned "
                              "slot of a time subdivision?); align it in ELAN")
    return int(values[0]) / 1000.0, int(values[1]) / 1000.0


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
