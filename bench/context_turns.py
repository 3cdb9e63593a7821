"""How many turns of context the model reads (the node's ``max_context_turns``): WA-F1 on MELD, and the time an
answer takes.

    python bench/context_turns.py [--turns 1,2,4,8,16,32] [--splits dev,test] [--limit N]
                                  [--latency-utterances 100] [--model-dir checkpoints/default] [--report-dir reports]

Each utterance is predicted from its dialogue as the node keeps it: a ``ddvlm_core.context.Dialogue`` of
``max_turns`` k (the latest k turns, this one included, with the speaker tokens of the whole conversation), in a
prompt of at most 511 tokens. Per row: WA-F1, accuracy, macro F1, how long the prompts are (mean and 90th
percentile, in tokens) and how many lost earlier turns to the 511-token cap; the row of the node's default
(``DEFAULT_TURNS``) is compared with each other one on the same utterances, paired over whole dialogues.

Latency: the time one answer takes (``EmotionRecognizer.predict``, batch 1, this machine's torch threads) in a
conversation longer than any row's window, as a robot's conversations are (MELD's dialogues have under 10 turns on
average, 33 at most): the last split's dialogues one after the other as one conversation, the
``--latency-utterances`` answers after its first ``DEFAULT_TURNS`` turns, so that each row's prompts hold k turns (up
to the token cap). Each row's median of 3 rounds, the rows taken in turn within each round, and its ratio to the
default's.

Writes context_turns.md and .json to reports/ (or ``--report-dir``).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.shared import difference_words, meld_splits, refuse_non_checkpoint, write_report  # noqa: E402

DEFAULT_TURNS = 32  # the node's max_context_turns (ddvlm_ros.params)
LATENCY_ROUNDS = 3


def contexts_of(split: str, max_turns: int, limit: int = 0) -> tuple[list, list[int], list[int]]:
    """Each utterance's context as the node keeps it (the Turns of a ``Dialogue(max_turns)`` once it is added), its
    gold label and its dialogue id; the first ``limit`` utterances (0 = all)."""
    from ddvlm_core.context import Dialogue
    from ddvlm_core.meld import dialogues

    contexts, gold, dialogue_ids = [], [], []
    for dialogue_id, rows in sorted(dialogues(split).items()):
        dialogue = Dialogue(max_turns)
        for row in rows:
            dialogue.add(row.speaker, row.text)
            contexts.append(dialogue.turns)
            gold.append(row.label)
            dialogue_ids.append(dialogue_id)
    end = limit or len(contexts)
    return contexts[:end], gold[:end], dialogue_ids[:end]


def prompt_lengths(recognizer, contexts) -> dict:
    """The prompts' mean and 90th-percentile length in tokens, and the share (%) that lost earlier turns to the
    token cap."""
    prompts = [recognizer.prompts.build(list(c)) for c in contexts]
    lengths = sorted(len(p.input_ids) for p in prompts)
    return {"mean_tokens": statistics.fmean(lengths), "p90_tokens": lengths[int(0.9 * (len(lengths) - 1))],
            "cut_by_token_cap": 100 * sum(p.n_turns_dropped > 0 for p in prompts) / len(prompts)}


def score(recognizer, contexts, gold, desc: str) -> tuple[dict, list[int]]:
    """(WA-F1, accuracy, macro F1, prompt lengths; the predicted classes)."""
    from ddvlm_core.labels import LABELS
    from ddvlm_core.metrics import metrics

    predicted = [LABELS.index(p.top_label) for p in recognizer.predict_many(contexts, desc=desc)]
    return metrics(gold, predicted) | prompt_lengths(recognizer, contexts), predicted


def long_conversation(split: str, max_turns: int, n: int) -> list:
    """The contexts of ``n`` answers in one long conversation made of the split's dialogues one after the other,
    as a ``Dialogue(max_turns)`` keeps it: those after its first ``DEFAULT_TURNS`` turns."""
    from ddvlm_core.context import Dialogue
    from ddvlm_core.meld import dialogues

    dialogue, contexts = Dialogue(max_turns), []
    for _, rows in sorted(dialogues(split).items()):
        for row in rows:
            dialogue.add(row.speaker, row.text)
            contexts.append(dialogue.turns)
    return contexts[DEFAULT_TURNS:DEFAULT_TURNS + n]


def latencies(recognizer, contexts_by_turns: dict[int, list], rounds: int = LATENCY_ROUNDS) -> dict[int, float]:
    """Each row's median over ``rounds`` of the mean time (ms) of one answer to each of its contexts, the rows
    timed in turn within a round (a machine's drift falls on all of them)."""
    for contexts in contexts_by_turns.values():
        recognizer.predict(contexts[0])  # warm-up
    times: dict[int, list[float]] = {k: [] for k in contexts_by_turns}
    for _ in range(rounds):
        for k, contexts in contexts_by_turns.items():
            start = time.perf_counter()
            for context in contexts:
                recognizer.predict(context)
            times[k].append(1000 * (time.perf_counter() - start) / len(contexts))
    return {k: statistics.median(t) for k, t in times.items()}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", default="1,2,4,8,16,32",
                    help=f"comma-separated max_context_turns to compare; {DEFAULT_TURNS} (the node's default) is "
                         "always one of them")
    ap.add_argument("--splits", default="dev,test", help="comma-separated MELD splits")
    ap.add_argument("--limit", type=int, default=0, help="the first N utterances of each split (0 = all)")
    ap.add_argument("--latency-utterances", type=int, default=100,
                    help="answers timed per row, in one long conversation made of the last split's dialogues "
                         "(0 = no latency)")
    ap.add_argument("--model-dir", default=str(REPO / "checkpoints" / "default"), help="checkpoint to evaluate")
    ap.add_argument("--report-dir", default=str(REPO / "reports"), help="where the reports go")
    args = ap.parse_args(argv)
    try:
        turns = sorted({int(k) for k in args.turns.split(",") if k.strip()} | {DEFAULT_TURNS})
    except ValueError:
        ap.error(f"--turns: comma-separated whole numbers, got {args.turns!r}")
    if turns[0] < 1:
        ap.error(f"--turns: each at least 1, got {args.turns!r}")
    splits = meld_splits(ap, args.splits)
    if args.limit < 0 or args.latency_utterances < 0:
        ap.error("--limit and --latency-utterances: 0 or more")
    refuse_non_checkpoint(ap, args.model_dir)
    from transformers.utils import logging

    logging.set_verbosity_error()
    import torch

    from ddvlm_core.inference import EmotionRecognizer
    from ddvlm_core.metrics import bootstrap_wa_f1_difference

    recognizer = EmotionRecognizer.from_checkpoint(args.model_dir, load_caption_embedder=False)
    rows = []
    for split in splits:
        predicted = {}
        for k in turns:
            contexts, gold, dialogue_ids = contexts_of(split, k, args.limit)
            scores, predicted[k] = score(recognizer, contexts, gold, f"{split}, {k} turns")
            rows.append({"split": split, "max_context_turns": k} | scores)
            print(f"{split}, {k} turns: WA-F1 {scores['wa_f1']:.2f}", flush=True)
        for row in rows[-len(turns):]:  # the default against each other row, the same utterances
            if row["max_context_turns"] != DEFAULT_TURNS:
                row["against_default"] = bootstrap_wa_f1_difference(gold, predicted[DEFAULT_TURNS],
                                                                    predicted[row["max_context_turns"]], dialogue_ids)
    latency = {}
    if args.latency_utterances:
        timed = {k: long_conversation(splits[-1], k, args.latency_utterances) for k in turns}
        per_answer = latencies(recognizer, timed)
        rows_timed = {str(k): {"ms": ms, "ratio_to_default": ms / per_answer[DEFAULT_TURNS],
                               **prompt_lengths(recognizer, timed[k])} for k, ms in per_answer.items()}
        latency = {"split": splits[-1], "utterances": len(timed[DEFAULT_TURNS]),
                   "torch_threads": torch.get_num_threads(), "rows": rows_timed}
    command = "python bench/context_turns.py" + "".join(
        f" --{name.replace('_', '-')} {value}" for name, value, default in (
            ("turns", args.turns, "1,2,4,8,16,32"), ("splits", args.splits, "dev,test"), ("limit", args.limit, 0),
            ("latency_utterances", args.latency_utterances, 100)) if value != default)
    write_report(args.report_dir, "context_turns",
                 {"command": command, "model_dir": args.model_dir, "rows": rows, "latency": latency},
                 markdown(rows, latency, command, args.model_dir))
    return 0


def markdown(rows: list[dict], latency: dict, command: str, model_dir: str) -> str:
    lines = ["# How many turns of context: max_context_turns", "",
             f"`{command}`; model `{model_dir}`. Each MELD utterance predicted from the latest *turns* of its dialogue "
             "(itself included), as the node keeps them with `max_context_turns`, in a prompt of at most 511 tokens. "
             f"*Against {DEFAULT_TURNS}*: WA-F1 minus that of the node's default, {DEFAULT_TURNS}, on the same "
             "utterances; *tokens*: the prompts' mean and 90th percentile; *cut*: prompts that lost earlier turns to "
             "the 511-token cap.", "",
             f"| split | turns | WA-F1 | against {DEFAULT_TURNS} | accuracy | macro F1 | tokens (mean / p90) | cut | "
             "utterances |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        paired = r.get("against_default")
        against = (f"{paired['difference']:+.2f} ({paired['low']:.2f} to {paired['high']:.2f})" if paired else "—")
        lines.append(f"| {r['split']} | {r['max_context_turns']} | {r['wa_f1']:.2f} | {against} | "
                     f"{r['accuracy']:.2f} | {r['macro_f1']:.2f} | {r['mean_tokens']:.0f} / {r['p90_tokens']} | "
                     f"{r['cut_by_token_cap']:.1f} % | {r['n']} |")
    lines += ["", f"Against {DEFAULT_TURNS} turns, paired 95 % intervals over the dialogues:"]
    lines += [f"- {r['split']}, {r['max_context_turns']} turns: {difference_words(r['against_default'])}"
              for r in rows if "against_default" in r]
    if latency:
        lines += ["", "## The time an answer takes", "",
                  f"In one long conversation, MELD {latency['split']}'s dialogues one after the other, as a robot's "
                  f"conversations outlast MELD's dialogues: {latency['utterances']} answers after its first "
                  f"{DEFAULT_TURNS} turns, one at a time, {latency['torch_threads']} torch threads; median of "
                  f"{LATENCY_ROUNDS} rounds. Ratios are measured in one run; the milliseconds are this machine's.", "",
                  "| turns | tokens (mean / p90) | ms per answer | ratio to the default |", "|---|---|---|---|"]
        lines += [f"| {k} | {r['mean_tokens']:.0f} / {r['p90_tokens']} | {r['ms']:.1f} | "
                  f"{r['ratio_to_default']:.2f}x |" for k, r in latency["rows"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
