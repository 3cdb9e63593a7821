"""Transcripts that arrive after later ones (``ddvlm_core.arrival_order``), on MELD.

    python bench/late_transcripts.py [--model-dir checkpoints/default] [--report-dir reports] [--arrivals-only]

MELD's dialogues spoken one turn after another (each turn ``GAP_S`` after the one before, lasting its words at
``WORDS_PER_S``, ``MIN_TURN_S`` at least), each speaker heard by an ASR of their own (one per voice or microphone):
it sends a transcript ``ENDPOINT_S`` after the utterance ends (its voice activity detector waits for that much
silence) plus the utterance's duration times its real-time factor (RTF; Whisper small: about 0.1 on a desktop GPU,
0.3-0.5 on a Jetson Orin, 1 on a laptop CPU), one utterance after the other. A long turn followed by a short reply
of another speaker then reaches the node after the reply.

- *arrivals*: the share of transcripts that arrive after a turn that ended after them, per RTF and split, and how
  many answers the node publishes again for them (``revise_answers``: the turns each went before). No model.
- *model*: MELD test at ``MODEL_RTF``, each transcript answered when it arrives from the dialogue context as the node
  holds it (32 turns, 511 tokens), four rows: one ASR for everyone (transcripts in the order said: the offline
  evaluation); an ASR per voice with the context in the order the transcripts arrived (the node before placing);
  the same, each transcript placed by its end stamp, scored by each utterance's first answer (``revise_answers:
  false``); and by its latest answer, revised when a late transcript went before it (the node). WA-F1 over all of
  them, over the late ones, and over the revised ones; how long after its first answer a revision comes.

Writes late_transcripts.md and .json to reports/ (or ``--report-dir``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.shared import predict_new, refuse_non_checkpoint, write_report  # noqa: E402

GAP_S = 0.3  # between one turn's end and the next one's start
WORDS_PER_S = 2.5
MIN_TURN_S = 0.6
ENDPOINT_S = 0.5  # silence an ASR's voice activity detector waits for before it ends an utterance
RTFS = (0.1, 0.3, 0.5, 1.0)
MODEL_RTF = 0.5
MAX_TURNS = 32  # the node's max_context_turns default
ROWS = ("one ASR for everyone: in the order said", "an ASR per voice: context in arrival order",
        "an ASR per voice: placed by end stamp, first answers (revise_answers: false)",
        "an ASR per voice: placed by end stamp, latest answers (the node)")


def transcripts(rows, rtf: float | None) -> list[tuple[int, float, float]]:
    """A MELD dialogue's transcripts as (index of the utterance, its end time, when it reaches the node) in the order
    they reach it: each speaker's ASR with real-time factor ``rtf`` (None: one ASR for everyone, in the order said,
    each at its end)."""
    clock, ends, arrivals, busy = 0.0, [], [], {}
    for row in rows:
        start = clock + GAP_S
        clock = end = start + max(MIN_TURN_S, len(row.text.split()) / WORDS_PER_S)
        ends.append(end)
        if rtf is not None:
            busy[row.speaker] = max(end + ENDPOINT_S, busy.get(row.speaker, 0.0)) + rtf * (end - start)
        arrivals.append(busy[row.speaker] if rtf is not None else end)
    order = range(len(rows)) if rtf is None else sorted(range(len(rows)), key=lambda i: (arrivals[i], ends[i]))
    return [(i, ends[i], arrivals[i]) for i in order]


class Held(NamedTuple):
    """The node's dialogue over a MELD dialogue's transcripts, utterances in MELD's order."""

    first: list  # each utterance's context when its transcript arrived (its first answer's)
    latest: list  # its context when last answered: again each time a late transcript went before it
    late: set  # the utterances placed before a turn that ended after them
    revision_delays: list  # per answer published again: seconds after the utterance's first answer


def hold(rows, said, placed: bool) -> Held:
    """The node's dialogue over ``said`` (``transcripts``), each transcript appended as it arrives, or with
    ``placed`` put before the turns that ended after it, which are then answered again (``revise_answers``)."""
    from ddvlm_core.context import Dialogue

    dialogue, first, latest, late, delays = Dialogue(MAX_TURNS), {}, {}, set(), []
    answered = {}  # id(turn) -> (the turn, its utterance, when its transcript arrived)
    for i, end, arrived in said:
        turn = dialogue.append(dialogue.new_turn(rows[i].speaker, rows[i].text), end=end if placed else None)
        first[i] = latest[i] = dialogue.until(turn)
        for after in dialogue.turns[len(first[i]):]:
            late.add(i)
            _, j, first_arrived = answered[id(after)]
            latest[j] = dialogue.until(after)
            delays.append(arrived - first_arrived)
        answered[id(turn)] = (turn, i, arrived)
    return Held([first[i] for i in range(len(rows))], [latest[i] for i in range(len(rows))], late, delays)


def arrivals(split: str) -> dict:
    """Per RTF, how many of ``split``'s transcripts arrive after a turn that ended after them, and how many answers
    the node publishes again for them."""
    from ddvlm_core.meld import dialogues

    data = list(dialogues(split).values())
    n = sum(len(rows) for rows in data)
    held = {rtf: [hold(rows, transcripts(rows, rtf), True) for rows in data] for rtf in RTFS}
    late = {rtf: sum(len(h.late) for h in held[rtf]) for rtf in RTFS}
    revised = {rtf: sum(len(h.revision_delays) for h in held[rtf]) for rtf in RTFS}
    return {"utterances": n, "late": {str(r): k for r, k in late.items()},
            "percent": {str(r): round(100.0 * k / n, 2) for r, k in late.items()},
            "revised": {str(r): k for r, k in revised.items()}}


def score(predictions, gold: list[str]) -> dict:
    from ddvlm_core.labels import label_id
    from ddvlm_core.metrics import metrics

    m = metrics([label_id(g) for g in gold], [label_id(p.top_label) for p in predictions])
    return {"n": len(predictions), "wa_f1": m["wa_f1"], "accuracy": m["accuracy"]}


def model_rows(model_dir: str) -> tuple[list[dict], dict]:
    """The rows of MELD test (see the module's docstring), and how many answers were revised and how late."""
    from transformers.utils import logging

    from ddvlm_core.inference import EmotionRecognizer
    from ddvlm_core.meld import dialogues

    import numpy as np

    logging.set_verbosity_error()
    recognizer = EmotionRecognizer.from_checkpoint(model_dir, load_caption_embedder=False)
    data = list(dialogues("test").values())
    gold = [r.emotion for rows in data for r in rows]
    held = {(rtf, placed): [hold(rows, transcripts(rows, rtf), placed) for rows in data]  # each dialogue's, as
            for rtf, placed in ((None, False), (MODEL_RTF, False), (MODEL_RTF, True))}  # the rows hold it
    node = held[MODEL_RTF, True]  # an ASR per voice, placed: the node
    late, revised, offset = [], [], 0  # utterances delivered late, and answered again: scored apart in every row
    for rows, one in zip(data, node):
        late += sorted(offset + i for i in one.late)
        revised += [offset + i for i in range(len(rows)) if one.latest[i] != one.first[i]]
        offset += len(rows)
    predicted: dict[tuple, object] = {}  # a context seen in an earlier row is not predicted again
    out = []
    for name, rtf, placed, answers in zip(ROWS, (None, MODEL_RTF, MODEL_RTF, MODEL_RTF), (False, False, True, True),
                                          ("first", "first", "first", "latest")):
        contexts = [c for h in held[rtf, placed] for c in getattr(h, answers)]
        keys, n_new = predict_new(recognizer, contexts, predicted, name)
        out.append({"row": name, "rtf": rtf, "placed": placed, "answers": answers, "predicted_here": n_new,
                    **score([predicted[k] for k in keys], gold),
                    "late": score([predicted[keys[k]] for k in late], [gold[k] for k in late]),
                    "revised": score([predicted[keys[k]] for k in revised], [gold[k] for k in revised])})
        print(f"{name}: WA-F1 {out[-1]['wa_f1']:.2f}, on the {len(late)} late ones {out[-1]['late']['wa_f1']:.2f}, "
              f"on the {len(revised)} revised ones {out[-1]['revised']['wa_f1']:.2f} ({n_new} contexts predicted)",
              flush=True)
    delays = sorted(d for one in node for d in one.revision_delays)
    return out, {"answers": len(delays), "utterances": len(revised),
                 "delay_s": {"p50": round(float(np.percentile(delays, 50)), 2),
                             "p90": round(float(np.percentile(delays, 90)), 2), "max": round(max(delays), 2)}}


def report(arrival_rows: dict, rows: list[dict], revisions: dict, model_dir: str) -> str:
    from ddvlm_core.arrival_order import LATE_FLAG, REVISED_FLAG

    lines = ["# Transcripts that arrive after later ones", "",
             "`python bench/late_transcripts.py` (`ddvlm_core/arrival_order.py`). MELD's dialogues spoken one turn "
             f"after another ({GAP_S:g} s between turns, {WORDS_PER_S:g} words a second, {MIN_TURN_S:g} s at "
             "least), each speaker heard by an ASR of their own that sends a transcript "
             f"{ENDPOINT_S:g} s after the utterance ends plus its duration times the ASR's real-time factor (RTF), "
             "one utterance after the other. A transcript that ended before turns already in the context is placed "
             f"before them by the node, and its answer carries `{LATE_FLAG}`; those turns are answered again with it "
             f"in their context (`revise_answers`, flag `{REVISED_FLAG}`).", "",
             "## Transcripts that arrive late, and answers published again for them", "",
             "| RTF | " + " | ".join(arrival_rows) + " |", "|---|" + "---|" * len(arrival_rows)]
    for rtf in RTFS:
        cells = [f"{a['percent'][str(rtf)]:.2f} % ({a['late'][str(rtf)]} of {a['utterances']}); "
                 f"{a['revised'][str(rtf)]} answers again" for a in arrival_rows.values()]
        lines.append(f"| {rtf:g} | " + " | ".join(cells) + " |")
    if rows:
        n_late, n_revised = rows[0]["late"]["n"], rows[0]["revised"]["n"]
        lines += ["", f"## MELD test, an ASR per voice at RTF {MODEL_RTF:g}", "",
                  f"Model `{model_dir}`. Each transcript answered when it arrives, from its dialogue context as the "
                  f"node holds it ({MAX_TURNS} turns, 511 tokens); scored on all {rows[0]['n']} utterances, on "
                  f"the {n_late} that arrive late with an ASR per voice, and on the {n_revised} answered again "
                  f"({revisions['answers']} answers again in all: one per late transcript that went before the "
                  f"utterance). A revision comes {revisions['delay_s']['p50']:.2f} s after the utterance's first "
                  f"answer at the median, {revisions['delay_s']['p90']:.2f} s at p90 "
                  f"({revisions['delay_s']['max']:.2f} s at most).", "",
                  "| transcripts | WA-F1 | accuracy | WA-F1, late ones | WA-F1, revised ones |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['row']} | {r['wa_f1']:.2f} | {r['accuracy']:.2f} | {r['late']['wa_f1']:.2f} | "
                  f"{r['revised']['wa_f1']:.2f} |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default=str(REPO / "checkpoints" / "default"), help="checkpoint to evaluate")
    ap.add_argument("--report-dir", default=str(REPO / "reports"), help="where the reports go")
    ap.add_argument("--arrivals-only", action="store_true", help="only the shares arriving late (no model, seconds)")
    args = ap.parse_args(argv)
    if not args.arrivals_only:
        refuse_non_checkpoint(ap, args.model_dir)
    arrival_rows = {split: arrivals(split) for split in ("train", "dev", "test")}
    rows, revisions = ([], {}) if args.arrivals_only else model_rows(args.model_dir)
    write_report(args.report_dir, "late_transcripts", {"model_dir": args.model_dir, "model_rtf": MODEL_RTF,
                                                       "arrivals": arrival_rows, "rows": rows,
                                                       "revisions": revisions},
                 report(arrival_rows, rows, revisions, args.model_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
