"""MELD text annotations (declare-lab/MELD, GPL-3.0; copies in data/meld/).

Rows are read as UTF-8 CSV; dialogues are lists of utterances in Utterance_ID order. The directory is
``$DDVLM_MELD_DIR`` if set, else the repository's ``data/meld``.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ddvlm_core.labels import label_id

SPLITS = ("train", "dev", "test")
SPLIT_SIZES = {"train": 9989, "dev": 1109, "test": 2610}


@dataclass(frozen=True)
class MeldUtterance:
    split: str
    dialogue_id: int
    utterance_id: int
    speaker: str
    text: str
    emotion: str
    label: int
    start: str  # hh:mm:ss,ms within the episode
    end: str
    season: int = 0
    episode: int = 0

    @property
    def key(self) -> str:
        return utterance_key(self.split, self.dialogue_id, self.utterance_id)


def utterance_key(split: str, dialogue_id: int, utterance_id: int) -> str:
    """``split/dia{D}_utt{U}``: the utterance's clip name, the key of its caption and of its training example."""
    return f"{split}/dia{dialogue_id}_utt{utterance_id}"


def parse_time(text: str) -> float:
    """MELD's 'hh:mm:ss,mmm' -> seconds."""
    hms, _, ms = text.strip().partition(",")
    h, m, sec = (int(x) for x in hms.split(":"))
    return 3600 * h + 60 * m + sec + int(ms or 0) / 1000


def meld_dir() -> Path:
    env = os.environ.get("DDVLM_MELD_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "data" / "meld"


REQUIRED_COLUMNS = ("Dialogue_ID", "Utterance_ID", "Speaker", "Utterance", "Emotion")  # the rest is MELD's own
# (StartTime, EndTime: the clip's place in the episode; Season, Episode): optional in a corpus of your own
UNLABELLED = -1  # the label of a turn whose Emotion is empty (your own corpus): context for the turns after it only
READING = "corpus.json"  # beside your own corpus's CSVs: how its dialogues are read ({"max_context_turns": N})


def max_context_turns(directory: Path | None = None) -> int | None:
    """How many turns of a dialogue a prompt reads at most, in the corpus in ``directory`` (its ``READING`` file's
    ``max_context_turns``: the robot's node read no more); None: all of them (MELD, as the paper reads it)."""
    path = (directory or meld_dir()) / READING
    if not path.is_file():
        return None
    try:
        turns = json.loads(path.read_text(encoding="utf-8")).get("max_context_turns")
    except (json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f"{path}: not a corpus's reading ({e})") from None
    if turns is not None and (not isinstance(turns, int) or turns < 1):
        raise ValueError(f"{path}: max_context_turns must be an integer >= 1, got {turns!r}")
    return turns


def read_split(split: str, directory: Path | None = None) -> list[MeldUtterance]:
    """The split's rows, from ``{split}_sent_emo.csv`` in ``directory`` (default: ``meld_dir()``). MELD's CSVs, or
    your own dialogues in their columns (``REQUIRED_COLUMNS``; an empty Emotion: a turn that only gives context,
    label ``UNLABELLED``). ValueError naming the file and line of a row that cannot be read."""
    if split not in SPLITS:
        raise ValueError(f"MELD split must be one of {SPLITS}, got {split!r}")
    path = (directory or meld_dir()) / f"{split}_sent_emo.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: MELD annotations not found (set DDVLM_MELD_DIR)")
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: no column {', '.join(missing)} (needs {', '.join(REQUIRED_COLUMNS)})")
        rows = []
        for r in reader:
            try:
                rows.append(MeldUtterance(
                    split, int(r["Dialogue_ID"]), int(r["Utterance_ID"]), r["Speaker"].strip(), r["Utterance"],
                    r["Emotion"].strip(), label_id(r["Emotion"]) if r["Emotion"].strip() else UNLABELLED,
                    r.get("StartTime") or "", r.get("EndTime") or "", int(r.get("Season") or 0),
                    int(r.get("Episode") or 0)))
            except (ValueError, TypeError, AttributeError) as e:  # None: a row with fewer fields than the header
                raise ValueError(f"{path}, line {reader.line_num}: {e}") from None
        return rows


def dialogues(split: str, directory: Path | None = None) -> dict[int, list[MeldUtterance]]:
    """dialogue id -> its utterances in order."""
    out: dict[int, list[MeldUtterance]] = {}
    for row in read_split(split, directory):
        out.setdefault(row.dialogue_id, []).append(row)
    for rows in out.values():
        rows.sort(key=lambda r: r.utterance_id)
    return out
