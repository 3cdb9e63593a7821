"""Transcripts that are an ASR's partial results (``ddvlm_core.partial_results``), on MELD.

    python bench/asr_partials.py [--model-dir checkpoints/default] [--report-dir reports] [--people-only]

- *people*: every MELD utterance through the node's rule, at MELD's own end times (``is_partial_of`` against the
  turn before it, as the node's dialogue holds it): the share the node would take for a partial result of the turn
  before although a person said it ("No!" then "No, I won't." a second later), at the shipped PARTIAL_GAP_S and
  at others beside it. No model runs.
- *partial results*: every MELD test utterance preceded by the partial results a streaming ASR publishes while it
  is spoken (``asr_noise.streaming_partials``: Vosk's, every 0.5 s of speech at 2.5 words a second, lower case
  without punctuation; the final result 0.5 s after the last, at MELD's end time, in MELD's text), all on the
  node's transcript topic. Each final utterance predicted from its dialogue context as the node holds it (32 turns,
  511 tokens), three rows: final results only; with the partial results, folded as the node folds them; with them
  left in the context (the node before). The labels are the people's; the answers to the partial results are not
  scored.

Writes asr_partials.md and .json to reports/ (or ``--report-dir``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.shared import predict_new, refuse_non_checkpoint, write_report  # noqa: E402

GAPS = (1.0, 1.5, 2.0, 3.0)
RESULT_EVERY_S = 0.5  # a streaming ASR's partial results: one per 0.5 s of speech (Vosk's ROS nodes: 8000 samples)
MAX_TURNS = 32  # the node's max_context_turns default
ROWS = ("final results only (the node)", "partial results folded (the node)",
        "partial results left in the context (the node before)")


def messages(rows, partials: bool, punctuated: bool = True) -> list[tuple[str, str, float, int | None]]:
    """A MELD dialogue as transcripts: (speaker, text, end time, index of the utterance when it is its final result,
    else None), in order; with ``partials``, each utterance's streaming partial results before it; not
    ``punctuated``: the final results as an ASR without punctuation writes them."""
    from ddvlm_core.asr_noise import streaming_partials, unpunctuate
    from ddvlm_core.meld import parse_time

    out = []
    for i, row in enumerate(rows):
        end = parse_time(row.end)
        steps = streaming_partials(row.text) if partials else []
        out += [(row.speaker, text, end - RESULT_EVERY_S * (len(steps) - j), None) for j, text in enumerate(steps)]
        out.append((row.speaker, row.text if punctuated else unpunctuate(row.text), end, i))
    return out


def hold(transcripts, fold: bool, max_gap_s: float | None = None):
    """The node's dialogue over ``transcripts`` (``messages``): (each final's context, how many transcripts the rule
    folded into the next one, of them how many were partial results)."""
    from ddvlm_core.context import Dialogue
    from ddvlm_core.partial_results import PARTIAL_GAP_S, is_partial_of

    gap = PARTIAL_GAP_S if max_gap_s is None else max_gap_s
    dialogue, latest, contexts, folded, folded_partials = Dialogue(MAX_TURNS), None, {}, 0, 0
    for speaker, text, end, final in transcripts:
        turn = dialogue.new_turn(speaker, text)
        if fold and latest is not None and is_partial_of(latest[0], turn, end - latest[1], gap):
            dialogue.append(turn, replacing=latest[0])
            folded += 1
            folded_partials += latest[2] is None
        else:
            dialogue.append(turn)
        latest = (turn, end, final)
        if final is not None:
            contexts[final] = dialogue.turns
    return [contexts[i] for i in sorted(contexts)], folded, folded_partials


def people(split: str) -> dict:
    """How many of ``split``'s utterances the rule takes for a partial result's next version, per gap, in MELD's
    text and without punctuation."""
    from ddvlm_core.meld import dialogues

    data = list(dialogues(split).values())
    n = sum(len(rows) for rows in data)
    out: dict = {"utterances": n}
    for text, punctuated in (("meld_text", True), ("unpunctuated", False)):
        taken = {gap: sum(hold(messages(rows, False, punctuated), True, gap)[1] for rows in data) for gap in GAPS}
        out[text] = {"taken": {str(g): k for g, k in taken.items()},
                     "percent": {str(g): round(100.0 * k / n, 2) for g, k in taken.items()}}
    return out


def score(predictions, gold: list[str]) -> dict:
    from ddvlm_core.labels import label_id
    from ddvlm_core.metrics import metrics

    m = metrics([label_id(g) for g in gold], [label_id(p.top_label) for p in predictions])
    truncated = sum("context-truncated" in p.flags for p in predictions)
    return {"n": len(predictions), "wa_f1": m["wa_f1"], "accuracy": m["accuracy"],
            "context_truncated": 100.0 * truncated / len(predictions)}


def model_rows(model_dir: str) -> list[dict]:
    from transformers.utils import logging

    from ddvlm_core.inference import EmotionRecognizer
    from ddvlm_core.meld import dialogues

    logging.set_verbosity_error()
    recognizer = EmotionRecognizer.from_checkpoint(model_dir, load_caption_embedder=False)
    data = list(dialogues("test").values())
    gold = [r.emotion for rows in data for r in rows]
    predicted: dict[tuple, object] = {}  # a context seen in an earlier row is not predicted again
    out = []
    for name, partials, fold in zip(ROWS, (False, True, True), (True, True, False)):
        contexts, folded, folded_partials, transcripts = [], 0, 0, 0
        for rows in data:
            said = messages(rows, partials)
            held, k, kp = hold(said, fold)
            contexts += held
            folded, folded_partials, transcripts = folded + k, folded_partials + kp, transcripts + len(said)
        keys, n_new = predict_new(recognizer, contexts, predicted, name)
        out.append({"row": name, "transcripts": transcripts, "folded": folded, "folded_partials": folded_partials,
                    "predicted_here": n_new, **score([predicted[k] for k in keys], gold)})
        print(f"{name}: WA-F1 {out[-1]['wa_f1']:.2f} ({n_new} contexts predicted)", flush=True)
    return out


def report(people_rows: dict, rows: list[dict], model_dir: str) -> str:
    from ddvlm_core.partial_results import PARTIAL_GAP_S

    lines = ["# Transcripts that are an ASR's partial results", "",
             "`python bench/asr_partials.py` (`ddvlm_core/partial_results.py`). A transcript is taken for the next "
             "version of the turn before it when that turn is its speaker's, ended at most the gap before it and "
             "does not end a sentence (. ! ? …), and the transcript's words begin with that turn's (case and "
             "punctuation aside; that turn's last word may have been revised or cut). The node ships the gap "
             f"{PARTIAL_GAP_S:g} s.", "",
             "## People taken for partial results (MELD's own end times)", "",
             "In MELD's text, and in the same text as an ASR without punctuation writes it (lower case, no "
             "punctuation: no turn ends a sentence).", "",
             "| gap | " + " | ".join(f"{split}, MELD's text" for split in people_rows) + " | "
             + " | ".join(f"{split}, no punctuation" for split in people_rows) + " |",
             "|---|" + "---|" * 2 * len(people_rows)]
    for gap in GAPS:
        mark = " (shipped)" if gap == PARTIAL_GAP_S else ""
        lines.append(f"| {gap:g} s{mark} | " + " | ".join(
            f"{p[text]['percent'][str(gap)]:.2f} % ({p[text]['taken'][str(gap)]} of {p['utterances']})"
            for text in ("meld_text", "unpunctuated") for p in people_rows.values()) + " |")
    if rows:
        lines += ["", "## MELD test with a streaming ASR's partial results on the transcript topic", "",
                  f"Model `{model_dir}`. Each utterance preceded by the partial results Vosk publishes while it is "
                  f"spoken (one per {RESULT_EVERY_S:g} s of speech at 2.5 words a second, lower case without "
                  "punctuation); the final result at MELD's end time, in MELD's text. Scored: the answers to the "
                  f"{rows[0]['n']} final results, each from its dialogue context as the node holds it ({MAX_TURNS} "
                  "turns, 511 tokens); *context dropped*: the share whose earliest turns did not fit the prompt.", "",
                  "| transcripts | transcripts sent | folded into the next (of them partial results) | WA-F1 | "
                  "accuracy | context dropped |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['row']} | {r['transcripts']} | {r['folded']} ({r['folded_partials']}) | {r['wa_f1']:.2f} | "
                  f"{r['accuracy']:.2f} | {r['context_truncated']:.1f} % |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default=str(REPO / "checkpoints" / "default"), help="checkpoint to evaluate")
    ap.add_argument("--report-dir", default=str(REPO / "reports"), help="where the reports go")
    ap.add_argument("--people-only", action="store_true", help="only the people's rates (no model, seconds)")
    args = ap.parse_args(argv)
    if not args.people_only:
        refuse_non_checkpoint(ap, args.model_dir)
    people_rows = {split: people(split) for split in ("train", "dev", "test")}
    rows = [] if args.people_only else model_rows(args.model_dir)
    write_report(args.report_dir, "asr_partials", {"model_dir": args.model_dir, "people": people_rows, "rows": rows},
                 report(people_rows, rows, args.model_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
