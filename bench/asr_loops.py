"""WA-F1 on MELD test when Whisper falls into repetition loops on some utterances, with the loops cut as the node
cuts them (``ddvlm_core.context.collapse_repetition_loops``) and as the ASR wrote them.

    python bench/asr_loops.py [--fraction 0.1] [--min-words 150] [--seed 0] [--model-dir checkpoints/default]

A seeded ``--fraction`` of the utterances is written as Whisper writes one in a loop (``asr_noise.whisper_loop``:
its last sentence repeated until the transcript has ``--min-words`` words); the labels stay the people's. Each
utterance is predicted from its dialogue context as the node builds it. Three rows: MELD's text; the loops cut
(what the node does); the loops as the ASR wrote them (the node before the cut). Scores over all utterances, over
the looped ones, and over the others that follow a loop in their dialogue (the loop is in their context).
Writes asr_loops.md and .json to reports/ (or ``--report-dir``).
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.shared import refuse_non_checkpoint, write_report  # noqa: E402

ROWS = ("MELD's text", "loops cut (the node)", "loops as the ASR wrote them")


def dialogues_with_loops(fraction: float, min_words: int, seed: int):
    """[(texts per row, speakers, labels, looped flags)] per MELD test dialogue, in order."""
    from ddvlm_core.asr_noise import whisper_loop
    from ddvlm_core.meld import dialogues

    rng = random.Random(seed)
    out = []
    for rows in dialogues("test").values():
        looped = [rng.random() < fraction for _ in rows]
        texts = [r.text for r in rows]
        asr = [whisper_loop(t, min_words) if loop else t for t, loop in zip(texts, looped)]
        out.append(((texts, asr, asr), [r.speaker for r in rows], [r.emotion for r in rows], looped))
    return out


def turns_of(row: int, texts: list[str], speakers: list[str]):
    """The dialogue's turns as the node holds them (rows 0, 1), or with the loops left in (row 2)."""
    from ddvlm_core.context import Turn, make_turns, normalize_utterance

    turns = make_turns(list(zip(speakers, texts)))
    if row < 2:
        return turns
    return [Turn(t.speaker_token, normalize_utterance(text), t.speaker) for t, text in zip(turns, texts)]


def score(predictions: list, gold: list[str], keep: list[bool]) -> dict:
    from ddvlm_core.labels import label_id
    from ddvlm_core.metrics import metrics

    pairs = [(label_id(g), label_id(p.top_label), p) for g, p, k in zip(gold, predictions, keep) if k]
    if not pairs:
        return {"n": 0}
    m = metrics([g for g, _, _ in pairs], [p for _, p, _ in pairs])
    truncated = sum("context-truncated" in p.flags for _, _, p in pairs)
    return {"n": len(pairs), "wa_f1": m["wa_f1"], "accuracy": m["accuracy"],
            "context_truncated": 100.0 * truncated / len(pairs)}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fraction", type=float, default=0.1, help="share of the utterances that loop, 0-1")
    ap.add_argument("--min-words", type=int, default=150, help="words of a looped transcript (a Whisper window: ~150)")
    ap.add_argument("--seed", type=int, default=0, help="seed of which utterances loop")
    ap.add_argument("--report-dir", default=str(REPO / "reports"), help="where the reports go")
    ap.add_argument("--model-dir", default=str(REPO / "checkpoints" / "default"), help="checkpoint to evaluate")
    args = ap.parse_args(argv)
    if not 0 <= args.fraction <= 1:
        ap.error(f"--fraction must be in [0, 1], got {args.fraction}")
    refuse_non_checkpoint(ap, args.model_dir)
    from transformers.utils import logging

    logging.set_verbosity_error()
    from ddvlm_core.inference import EmotionRecognizer

    recognizer = EmotionRecognizer.from_checkpoint(args.model_dir, load_caption_embedder=False)
    data = dialogues_with_loops(args.fraction, args.min_words, args.seed)
    gold = [label for _, _, labels, _ in data for label in labels]
    looped = [loop for *_, flags in data for loop in flags]
    after = [not loop and any(flags[:k]) for *_, flags in data for k, loop in enumerate(flags)]
    rows = []
    for row, name in enumerate(ROWS):
        contexts = []
        for texts, speakers, _, _ in data:
            turns = turns_of(row, texts[row], speakers)
            contexts += [turns[:k + 1] for k in range(len(turns))]
        predictions = recognizer.predict_many(contexts, desc=name)
        rows.append({"row": name, "all": score(predictions, gold, [True] * len(gold)),
                     "looped": score(predictions, gold, looped), "after_a_loop": score(predictions, gold, after),
                     "flagged_loops": sum("transcript-repetition-loop" in p.flags for p in predictions)})
        print(f"{name}: WA-F1 {rows[-1]['all']['wa_f1']:.2f}", flush=True)
    write_report(args.report_dir, "asr_loops", {"model_dir": args.model_dir, "fraction": args.fraction,
                                                "min_words": args.min_words, "seed": args.seed, "rows": rows},
                 report(args, rows))
    return 0


def report(args, rows: list[dict]) -> str:
    def cell(s: dict) -> str:
        return f"{s['wa_f1']:.2f} | {s['accuracy']:.2f} | {s['context_truncated']:.1f} %" if s["n"] else "- | - | -"

    n = rows[0]
    lines = ["# MELD test with Whisper repetition loops", "",
             f"`python bench/asr_loops.py --fraction {args.fraction} --min-words {args.min_words} --seed {args.seed}`;"
             f" model `{args.model_dir}`. {n['looped']['n']} of the {n['all']['n']} utterances written as Whisper "
             f"writes one in a repetition loop (the last sentence repeated to {args.min_words}+ words); "
             f"{n['after_a_loop']['n']} others follow a loop in their dialogue. Each utterance is predicted from its "
             "dialogue context as the node builds it; *context dropped*: the share whose earliest turns did not fit "
             "the 511-token prompt (flag context-truncated). The labels are the people's.", "",
             "| transcripts | loops flagged | all: WA-F1 | accuracy | context dropped | looped: WA-F1 | accuracy | "
             "context dropped | after a loop: WA-F1 | accuracy | context dropped |", "|---|---|---|---|---|---|---|---|"
             "---|---|---|"]
    lines += [f"| {r['row']} | {r['flagged_loops']} | {cell(r['all'])} | {cell(r['looped'])} | "
              f"{cell(r['after_a_loop'])} |" for r in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
