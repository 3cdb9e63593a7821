"""A replay's answers as ELAN tiers: open them in ELAN on the video made from the bag, beside the annotators' own.

    python -m ddvlm_ros.replay BAG --answers S01.jsonl --elan S01_ddvlm.eaf [--labels S01.eaf]

Per speaker, three tiers (``TIER_PREFIX`` + what + ":" + speaker id, the speaker the participant): ``transcript``,
each answered utterance at its span (seconds from the bag's first message: ELAN's time line on that video, linked
without an offset) with the words as the node read them, and two that depend on it (ELAN's symbolic association),
``emotion`` (the label the utterance is scored by: its latest answer's) and ``confidence``. With ``base`` (the
annotators' .eaf given as ``--labels``) the tiers go into a copy of it, whose own tiers, time slots and annotations
stay as they were; tiers of an earlier replay (``TIER_PREFIX``) are replaced. Times are whole milliseconds; a span
that begins before the bag (speech it caught the end of) begins at 0, and one that would overlap the speaker's
previous one on its tier (ELAN keeps a tier's annotations apart) begins where that one ends. The turns that only
gave context (the robot's: when its ``robot_speaking`` says it spoke them, else estimated from their words; see
``replay.robot_span``) get a transcript tier alone, which shows whom a person answered; unanswered utterances are
left out.
"""
from __future__ import annotations

import datetime
import xml.etree.ElementTree as ElementTree
from pathlib import Path

TIER_PREFIX = "ddvlm-"  # the tiers this writes; time labels never take them for an annotator's (time_labels)
UTTERANCE_TYPE, DEPENDENT_TYPE = "ddvlm-utterance", "ddvlm-of-utterance"  # their linguistic types
XSI = "http://www.w3.org/2001/XMLSchema-instance"
SCHEMA = "http://www.mpi.nl/tools/elan/EAFv3.0.xsd"
ORDER = ("HEADER", "TIME_ORDER", "TIER", "LINGUISTIC_TYPE", "LOCALE", "LANGUAGE", "CONSTRAINT")  # EAF's element order
ElementTree.register_namespace("xsi", XSI)  # written as ELAN writes it (xsi:noNamespaceSchemaLocation), not ns0


def new_document() -> ElementTree.Element:
    """An empty EAF 3.0 document: a header in milliseconds and an empty time order."""
    root = ElementTree.Element("ANNOTATION_DOCUMENT", {
        "AUTHOR": "ddvlm", "DATE": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "FORMAT": "3.0", "VERSION": "3.0", f"{{{XSI}}}noNamespaceSchemaLocation": SCHEMA})
    ElementTree.SubElement(root, "HEADER", {"MEDIA_FILE": "", "TIME_UNITS": "milliseconds"})
    ElementTree.SubElement(root, "TIME_ORDER")
    return root


def read_document(path: str | Path) -> ElementTree.Element:
    """The root of the ELAN annotation file at ``path``; ValueError, with the reason, for one that cannot be read or
    is no ELAN file."""
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError) as e:
        raise ValueError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
    if root.tag != "ANNOTATION_DOCUMENT":
        raise ValueError(f"{path}: not an ELAN annotation file (its root is <{root.tag}>)")
    return root


def write_answers(records: list[dict], out: str | Path, base: str | Path | None = None) -> dict[str, int]:
    """Write ``records`` (``replay.answer_records``) as tiers to ``out``, into a copy of ``base`` if given; returns
    speaker id -> transcript annotations written (utterances, or turns that only gave context). ValueError for a
    ``base`` that is no ELAN file."""
    root = read_document(base) if base is not None else new_document()
    _drop_earlier_tiers(root)
    _add_types(root)
    time_order = root.find("TIME_ORDER")
    if time_order is None:
        time_order = _insert(root, ElementTree.Element("TIME_ORDER"))
    ids = _Ids(root)
    written: dict[str, int] = {}
    for speaker, utterances in _by_speaker(records).items():
        answered = any(not record.get("context_only") for _, _, record in utterances)
        tiers = {what: _tier(root, f"{TIER_PREFIX}{what}:{speaker}", speaker, parent)
                 for what, parent in (("transcript", None), ("emotion", "transcript"), ("confidence", "transcript"))
                 if answered or not parent}
        for start, end, record in utterances:
            slots = [ids.slot(time_order, ms) for ms in (start, end)]
            parent = ids.annotation()
            _annotation(tiers["transcript"], "ALIGNABLE_ANNOTATION", {
                "ANNOTATION_ID": parent, "TIME_SLOT_REF1": slots[0], "TIME_SLOT_REF2": slots[1]},
                record.get("transcript") or "")
            if record.get("context_only"):
                continue
            for what, value in (("emotion", record["prediction"]), ("confidence", f"{record['confidence']:.3f}")):
                _annotation(tiers[what], "REF_ANNOTATION", {"ANNOTATION_ID": ids.annotation(),
                                                            "ANNOTATION_REF": parent}, value)
        written[speaker] = len(utterances)
    ElementTree.indent(root)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    ElementTree.ElementTree(root).write(out, encoding="UTF-8", xml_declaration=True)
    return written


def _by_speaker(records: list[dict]) -> dict[str, list[tuple[int, int, dict]]]:
    """speaker -> (start ms, end ms, record) of each answered utterance and each turn that only gave context with a
    span, in time order, kept apart."""
    out: dict[str, list[tuple[int, int, dict]]] = {}
    for record in records:
        span = record.get("span_s")
        if not span or (record.get("prediction") is None and not record.get("context_only")):
            continue
        out.setdefault(record.get("speaker_id") or "unknown", []).append(
            (max(0, round(span[0] * 1000)), round(span[1] * 1000), record))
    for speaker, rows in out.items():
        rows.sort(key=lambda row: row[:2])
        kept, last_end = [], 0
        for start, end, record in rows:
            start = max(start, last_end)
            if end > start:
                kept.append((start, end, record))
                last_end = end
        out[speaker] = kept
    return {speaker: kept for speaker, kept in out.items() if kept}  # no tiers for speech all before the bag


class _Ids:
    """New time slot and annotation ids that the document does not use yet (ELAN's own ids are ts<n> and a<n>; these
    are prefixed, so that ELAN's next ones never meet them)."""

    def __init__(self, root: ElementTree.Element):
        self.used = {e.get(key) for e in root.iter() for key in ("TIME_SLOT_ID", "ANNOTATION_ID") if e.get(key)}
        self.count = {"ts": 0, "a": 0}

    def _next(self, kind: str) -> str:
        while True:
            self.count[kind] += 1
            ident = f"{TIER_PREFIX}{kind}{self.count[kind]}"
            if ident not in self.used:
                self.used.add(ident)
                return ident

    def slot(self, time_order: ElementTree.Element, ms: int) -> str:
        ident = self._next("ts")
        ElementTree.SubElement(time_order, "TIME_SLOT", {"TIME_SLOT_ID": ident, "TIME_VALUE": str(ms)})
        return ident

    def annotation(self) -> str:
        return self._next("a")


def _insert(root: ElementTree.Element, element: ElementTree.Element) -> ElementTree.Element:
    """Insert ``element`` after the last child that EAF orders before or with it."""
    rank = ORDER.index(element.tag)
    position = 0
    for k, child in enumerate(root):
        if child.tag in ORDER and ORDER.index(child.tag) <= rank:
            position = k + 1
    root.insert(position, element)
    return element


def _drop_earlier_tiers(root: ElementTree.Element) -> None:
    for tier in [t for t in root.findall("TIER") if t.get("TIER_ID", "").startswith(TIER_PREFIX)]:
        root.remove(tier)


def _add_types(root: ElementTree.Element) -> None:
    """The linguistic types of the tiers (and the symbolic association constraint ELAN files list), where missing."""
    types = {t.get("LINGUISTIC_TYPE_ID") for t in root.findall("LINGUISTIC_TYPE")}
    for ident, attributes in ((UTTERANCE_TYPE, {"TIME_ALIGNABLE": "true"}),
                              (DEPENDENT_TYPE, {"TIME_ALIGNABLE": "false", "CONSTRAINTS": "Symbolic_Association"})):
        if ident not in types:
            _insert(root, ElementTree.Element("LINGUISTIC_TYPE", {"LINGUISTIC_TYPE_ID": ident,
                                                                  "GRAPHIC_REFERENCES": "false", **attributes}))
    if not any(c.get("STEREOTYPE") == "Symbolic_Association" for c in root.findall("CONSTRAINT")):
        _insert(root, ElementTree.Element("CONSTRAINT", {"STEREOTYPE": "Symbolic_Association",
                                                         "DESCRIPTION": "1-1 association with a parent annotation"}))


def _tier(root: ElementTree.Element, ident: str, speaker: str, parent: str | None) -> ElementTree.Element:
    attributes = {"TIER_ID": ident, "LINGUISTIC_TYPE_REF": DEPENDENT_TYPE if parent else UTTERANCE_TYPE,
                  "PARTICIPANT": speaker}
    if parent:
        attributes["PARENT_REF"] = f"{TIER_PREFIX}{parent}:{speaker}"
    return _insert(root, ElementTree.Element("TIER", attributes))


def _annotation(tier: ElementTree.Element, kind: str, attributes: dict, value: str) -> None:
    inner = ElementTree.SubElement(ElementTree.SubElement(tier, "ANNOTATION"), kind, attributes)
    ElementTree.SubElement(inner, "ANNOTATION_VALUE").text = value
