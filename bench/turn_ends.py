"""Transcripts without punctuation, their turns ended with a full stop in the prompt or not (the node's
``end_unpunctuated_turns``), on MELD.

    python bench/turn_ends.py [--splits dev,test] [--limit N] [--model-dir checkpoints/default]
                              [--report-dir reports]

For each split, every utterance is predicted from its dialogue context (all turns before it, the prompt at most
511 tokens) three ways: in MELD's text; as an ASR without punctuation writes it (``asr_noise.unpunctuate``: lower
case, no punctuation), read as it is (the node's ``end_unpunctuated_turns: never``); the same with each turn ended
with a full stop (``context.end_sentence``), as the node writes it with ``auto`` (once it has found that the ASR
does not punctuate) or ``always``. The checkpoint's tokenizer lower-cases (MPNet's), so punctuation is all the two
writings differ in. *Mean confidence* and *ECE* (expected calibration error, 15 bins): the published
confidence (the checkpoint's temperatures, flagged answers' their own) against how often the answers were right.

Writes turn_ends.md and .json to reports/ (or ``--report-dir``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.shared import difference_words, meld_splits, refuse_non_checkpoint, write_report  # noqa: E402

ROWS = (("MELD's text", False, False), ("no punctuation, read as it is (never)", True, False),
        ("no punctuation, turns ended (auto, always)", True, True))  # (row, unpunctuated, turns ended)


def contexts_of(split: str, unpunctuated: bool, limit: int = 0) -> tuple[list, list[int], list[int]]:
    """Each utterance's dialogue context, (speaker, text) pairs up to and with it, its gold label and its dialogue
    id; the first ``limit`` utterances (0 = all)."""
    from ddvlm_core.asr_noise import unpunctuate
    from ddvlm_core.meld import dialogues

    contexts, gold, dialogue_ids = [], [], []
    for dialogue_id, rows in sorted(dialogues(split).items()):
        turns = []
        for row in rows:
            turns.append((row.speaker, unpunctuate(row.text) if unpunctuated else row.text))
            contexts.append(list(turns))
            gold.append(row.label)
            dialogue_ids.append(dialogue_id)
    end = limit or len(contexts)
    return contexts[:end], gold[:end], dialogue_ids[:end]


def score(recognizer, contexts, gold, desc: str) -> tuple[dict, list[int]]:
    """(WA-F1, accuracy, macro F1, ECE and mean confidence of the published answers; the predicted classes)."""
    from ddvlm_core.calibration import published_calibration
    from ddvlm_core.labels import LABELS
    from ddvlm_core.metrics import metrics

    predictions = recognizer.predict_many(contexts, desc=desc)
    predicted = [LABELS.index(p.top_label) for p in predictions]
    calibration = published_calibration([p.probabilities for p in predictions], gold)
    return metrics(gold, predicted) | {"ece": calibration["ece"],
                                       "mean_confidence": calibration["mean_confidence"]}, predicted


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--splits", default="dev,test", help="comma-separated MELD splits")
    ap.add_argument("--limit", type=int, default=0, help="the first N utterances of each split (0 = all)")
    ap.add_argument("--model-dir", default=str(REPO / "checkpoints" / "default"), help="checkpoint to evaluate")
    ap.add_argument("--report-dir", default=str(REPO / "reports"), help="where the reports go")
    args = ap.parse_args(argv)
    splits = meld_splits(ap, args.splits)
    refuse_non_checkpoint(ap, args.model_dir)
    from transformers.utils import logging

    logging.set_verbosity_error()
    from ddvlm_core.inference import EmotionRecognizer

    recognizer = EmotionRecognizer.from_checkpoint(args.model_dir, load_caption_embedder=False)
    from ddvlm_core.metrics import bootstrap_wa_f1_difference

    rows = []
    for split in splits:
        predicted = []
        for row, unpunctuated, ended in ROWS:
            contexts, gold, dialogue_ids = contexts_of(split, unpunctuated, args.limit)
            recognizer.end_unpunctuated_turns = ended
            scores, classes = score(recognizer, contexts, gold, f"{split}, {row}")
            predicted.append(classes)
            rows.append({"split": split, "row": row, "unpunctuated": unpunctuated, "turns_ended": ended} | scores)
            print(f"{split}, {row}: WA-F1 {rows[-1]['wa_f1']:.2f}", flush=True)
        # turns ended against read as it is: the same utterances, a paired bootstrap over whole dialogues
        rows[-1]["against_read_as_it_is"] = bootstrap_wa_f1_difference(gold, predicted[1], predicted[2], dialogue_ids)
    command = "python bench/turn_ends.py" + (f" --splits {args.splits}" if args.splits != "dev,test" else "") + (
        f" --limit {args.limit}" if args.limit else "")
    write_report(args.report_dir, "turn_ends", {"command": command, "model_dir": args.model_dir, "rows": rows},
                 markdown(rows, command, args.model_dir))
    return 0


def markdown(rows: list[dict], command: str, model_dir: str) -> str:
    lines = ["# Transcripts without punctuation: turns ended with a full stop, or not", "",
             f"`{command}`; model `{model_dir}`. Each MELD utterance predicted from its dialogue context written "
             "three ways: MELD's text; as an ASR without punctuation writes it (lower case, no punctuation), which "
             "the node reads as it is with `end_unpunctuated_turns: never`; the same with each turn ended with a "
             "full stop in the prompt, as the node writes it with `auto` (once it has found that the ASR does not "
             "punctuate) or `always`. *change*: against the row before; *ECE*: of the "
             "published confidence (15 bins).", "",
             "| split | writing | WA-F1 | change | accuracy | macro F1 | mean confidence | ECE | utterances |",
             "|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows):
        change = f"{r['wa_f1'] - rows[i - 1]['wa_f1']:+.2f}" if i and rows[i - 1]["split"] == r["split"] else "—"
        lines.append(f"| {r['split']} | {r['row']} | {r['wa_f1']:.2f} | {change} | {r['accuracy']:.2f} | "
                     f"{r['macro_f1']:.2f} | {r['mean_confidence']:.2f} | {r['ece']:.2f} | {r['n']} |")
    lines += ["", "Turns ended against read as it is, the same utterances:"]
    lines += [f"- {r['split']}: {difference_words(r['against_read_as_it_is'])}" for r in rows
              if "against_read_as_it_is" in r]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
