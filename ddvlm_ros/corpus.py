"""A study's labelled sessions as a corpus to train on: replays' answers files -> MELD's CSV files.

    python -m ddvlm_ros.corpus answers/*.jsonl --out study_corpus --dev S05 --test S06,S07
    python -m training --config training/configs/lora_cpu.yaml --init_checkpoint=checkpoints/default \\
           --corpus=own --meld_dir=study_corpus --epochs=2 --lr=1e-4
    python -m training.evaluate runs/lora_cpu/checkpoint --corpus study_corpus

Each answers file (``python -m ddvlm_ros.replay BAG --labels LABELS --answers FILE``) is one session; each of its
conversations becomes a dialogue, and each of its turns a row, in the order the node heard them: Speaker (its
speaker id), Utterance (the transcript as the robot's ASR wrote it, or what the robot said: what the node reads),
Emotion (the annotators' label; empty where they gave none and for the robot's turns, which are then context only)
and StartTime / EndTime (its span in the bag, where the replay gave one). A conversation is one dialogue until the
node began a new context in it (its ``idle_timeout_s``), and ``corpus.json`` says how many turns of it the node read
(its ``max_context_turns``), so that training builds each prompt as the robot built it. Sessions replayed with a
captioner (``--captioner qwen``) also give each utterance the caption the node fused its answer with, written as
``training.captions`` records in ``captions.jsonl``: the visual branch and the fusion then train on the robot's own
camera (``--caption_source=OUT/captions.jsonl``). Whole sessions go to one split each (``--dev``, ``--test``, the
rest train), never a participant's turns to two splits: a model scored on the people it was trained on scores
higher than it will on the next participant.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from ddvlm_core.labels import label_id
from ddvlm_core.meld import READING, SPLITS, utterance_key

CAPTIONS = "captions.jsonl"  # in the corpus folder, where the sessions were replayed with a captioner
COLUMNS = ("Sr No.", "Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID", "StartTime", "EndTime",
           "Session")  # MELD's own order; Session: the answers file a dialogue came from


class CorpusError(ValueError):
    """Answers files that cannot make a corpus, with the reason."""


def session_dialogues(path: Path) -> dict[str, list[dict]]:
    """An answers file's turns by dialogue context (the node's: a conversation, and in it a new context after its
    idle_timeout_s), in the order the node heard them: dicts with speaker, text, emotion ('' unlabelled), span, how
    many turns the node read (max_context_turns), the captioner and caption, whether it only gave context;
    CorpusError naming the line of a record that cannot be read."""
    dialogues: dict[str, list[dict]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            key, text, gold = record["key"], record["transcript"], record["gold"]
            emotion = "" if gold is None else str(gold).strip().lower()
            if emotion:
                label_id(emotion)  # a label of the 7
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise CorpusError(f"{path}, line {number}: not a replay answer record ({type(e).__name__}: {e})") from None
        if text is None:
            continue
        context = record.get("context") or key.rpartition("/")[0]  # a new one where the node began a new context
        dialogues.setdefault(context, []).append(
            {"speaker": record.get("speaker_id") or "", "text": text, "emotion": "" if record.get("context_only")
             else emotion, "max_context_turns": record.get("max_context_turns") or 0,
             "span": record.get("span_s"), "captioner": record.get("captioner", ""), "caption": caption_of(record),
             "context_only": bool(record.get("context_only"))})
    return dialogues


def caption_of(record: dict) -> str:
    """The caption the node fused an utterance's answer with (its revised answer's, else its refined one's; '' for
    none: no frames in its window, no captioner, a turn that only gave context)."""
    return next((a["caption"] for a in (record.get("revised"), record.get("refined")) if a and a.get("caption")), "")


def clock(seconds: float | None) -> str:
    """Seconds into the bag as MELD's 'hh:mm:ss,mmm' ('' for none)."""
    if seconds is None:
        return ""
    ms = max(0, round(seconds * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def split_of(session: str, dev: set[str], test: set[str]) -> str:
    return "dev" if session in dev else "test" if session in test else "train"


def write_corpus(answers: list[Path], out: Path, dev: set[str], test: set[str]) -> dict[str, dict[str, int]]:
    """``out/{train,dev,test}_sent_emo.csv``, ``out/corpus.json`` (how the node read the dialogues) and, where the
    sessions were captioned, ``out/captions.jsonl``, from the ``answers`` files (one session each, named by the
    file); returns per split how many sessions, dialogues, utterances, labelled and captioned utterances it holds.
    CorpusError, before anything is written, where a --dev / --test session has no file, a split would have no
    labelled utterance (training needs each one), or the sessions were replayed with different captioners or
    max_context_turns."""
    sessions = {path.name.removesuffix(".jsonl"): path for path in answers}
    if len(sessions) < len(answers):
        raise CorpusError("two answers files name the same session")
    unknown = sorted((dev | test) - set(sessions))
    if unknown:
        raise CorpusError(f"--dev / --test name sessions without an answers file: {unknown}")
    if dev & test:
        raise CorpusError(f"sessions both in --dev and --test: {sorted(dev & test)}")
    rows: dict[str, list[dict]] = {split: [] for split in SPLITS}
    captions: list[dict] = []
    counts = {split: {"sessions": 0, "dialogues": 0, "utterances": 0, "labelled": 0, "captioned": 0}
              for split in SPLITS}
    turns_read: set[int] = set()  # the max_context_turns the sessions were replayed with (0: not recorded)
    for session, path in sessions.items():
        split = split_of(session, dev, test)
        counts[split]["sessions"] += 1
        for turns in session_dialogues(path).values():
            dialogue = counts[split]["dialogues"]
            counts[split]["dialogues"] += 1
            for number, turn in enumerate(turns):
                start, end = turn["span"] or (None, None)
                rows[split].append({"Sr No.": len(rows[split]) + 1, "Utterance": turn["text"],
                                    "Speaker": turn["speaker"], "Emotion": turn["emotion"],
                                    "Dialogue_ID": dialogue, "Utterance_ID": number, "StartTime": clock(start),
                                    "EndTime": clock(end), "Session": session})
                counts[split]["utterances"] += 1
                counts[split]["labelled"] += bool(turn["emotion"])
                turns_read.add(turn["max_context_turns"])
                if turn["captioner"] and not turn["context_only"]:
                    captions.append(caption_record(utterance_key(split, dialogue, number), turn, session))
                    counts[split]["captioned"] += bool(turn["caption"])
    empty = [split for split in SPLITS if not counts[split]["labelled"]]
    if empty:
        raise CorpusError(f"no labelled utterance in {', '.join(empty)}: each split needs sessions with labels "
                          f"(--dev, --test name them; the others train)")
    turns_read = sorted(turns_read - {0})
    if len(turns_read) > 1:
        raise CorpusError(f"the sessions were replayed with different max_context_turns {turns_read}: replay them "
                          "with one, the robot's")
    captioners = sorted({c["captioner"] for c in captions})
    if len(captioners) > 1:
        raise CorpusError(f"the sessions were replayed with different captioners {captioners}: their captions "
                          "cannot train one visual branch (replay them with one)")
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        with open(out / f"{split}_sent_emo.csv", "w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, COLUMNS)
            writer.writeheader()
            writer.writerows(rows[split])
    reading = {"max_context_turns": turns_read[0]} if turns_read else {}  # the prompts read as the node read them
    (out / READING).write_text(json.dumps(reading, indent=1) + "\n", encoding="utf-8")
    (out / CAPTIONS).unlink(missing_ok=True)  # an earlier corpus's
    if captions:
        (out / CAPTIONS).write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in captions),
                                    encoding="utf-8")
    return counts


def caption_record(key: str, turn: dict, session: str) -> dict:
    """An utterance's caption as ``training.captions`` records one (key, captioner id, status, caption): what the
    node captioned from the camera during the replay, so that the visual branch trains on the robot's own captions;
    an utterance without one trains and is scored from its text (status no_caption)."""
    return {"key": key, "captioner": turn["captioner"], "status": "ok" if turn["caption"] else "no_caption",
            "caption": turn["caption"], "detail": f"replayed session {session}"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ddvlm_ros.corpus", description=__doc__.split("\n\n")[0])
    ap.add_argument("answers", nargs="+", type=Path, help="one replay --answers file (JSONL) per session")
    ap.add_argument("--out", required=True, type=Path, help="folder for train/dev/test_sent_emo.csv")
    ap.add_argument("--dev", default="", help="comma-separated sessions (answers file names without .jsonl) for dev, "
                    "on which training picks its epoch")
    ap.add_argument("--test", default="", help="comma-separated sessions for test, scored once at the end")
    args = ap.parse_args(argv)
    names = {split: {s for s in getattr(args, split).split(",") if s} for split in ("dev", "test")}
    try:
        counts = write_corpus(args.answers, args.out, names["dev"], names["test"])
    except (CorpusError, OSError, UnicodeDecodeError) as e:
        ap.error(str(e))
    for split in SPLITS:
        c = counts[split]
        captioned = f", {c['captioned']} captioned" if (args.out / CAPTIONS).is_file() else ""
        print(f"{split}: {c['sessions']} sessions, {c['dialogues']} dialogues, {c['utterances']} utterances "
              f"({c['labelled']} labelled{captioned}) -> {args.out / f'{split}_sent_emo.csv'}")
    if (args.out / CAPTIONS).is_file():
        print(f"captions (--caption_source): {args.out / CAPTIONS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
