"""WA-F1 on MELD test when the transcripts carry ASR errors at WER 0 / 10 / 20 / 30 %, and when they come
without punctuation (an ASR that does not punctuate) at WER 0 / 20 %.

    python bench/asr_noise.py [--wers 0,0.1,0.2,0.3] [--unpunctuated-wers 0,0.2] [--seed 0]
                              [--model-dir checkpoints/default]

For each row a MELD test bag is written with seeded word substitutions, deletions and insertions
(``python -m ddvlm_ros.bag --asr-noise``; ``--asr-no-punctuation`` for the unpunctuated rows), its utterances
are read back and evaluated with the same contexts the node builds (the replay evaluator's metrics equal these
on the same utterances, tested in test/test_bag_replay.py), each turn read as it is: the unpunctuated rows are
the node's with ``end_unpunctuated_turns: never`` (its default, ``auto``, ends such turns with a full stop once it
has found that the ASR does not punctuate: ``bench/turn_ends.py`` measures that). The measured WER leaves case
and punctuation out (both texts ``unpunctuate``d), as ASR evaluations do. Writes replay_asr_noise.md and .json to
reports/ (or ``--report-dir``).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.shared import refuse_non_checkpoint  # noqa: E402


def evaluate_bag(bag: Path, recognizer, batch: int = 16) -> dict:
    from rclpy.serialization import deserialize_message

    from ddvlm_core.labels import LABELS, label_id
    from ddvlm_core.metrics import metrics
    from ddvlm_ros.bag import load_labels
    from ddvlm_ros.replay import bag_messages, ros_type

    labels = load_labels(bag)
    contexts, keys, history = [], [], {}
    for _, topic, msgtype, raw in bag_messages(bag):
        if topic != "/utterance":
            continue
        msg = deserialize_message(raw, ros_type(msgtype))
        turns = history.setdefault(msg.conversation_id, [])
        turns.append((msg.speaker_id, msg.text))
        contexts.append(list(turns))
        keys.append(f"{msg.conversation_id}/{msg.utterance_id}")
    predictions = recognizer.predict_many(contexts, batch, desc=bag.name)
    preds = [LABELS.index(p.top_label) for p in predictions]
    probabilities = [p.probabilities for p in predictions]
    gold = [label_id(labels[k]) for k in keys]
    from ddvlm_core.calibration import published_calibration

    published = published_calibration(probabilities, gold)  # the confidence as the node publishes it
    return metrics(gold, preds) | {k: published[k] for k in ("ece", "mean_confidence")} | {
        "right": {k: g == p for k, g, p in zip(keys, gold, preds)}}


MISHEARD_WER = 0.5  # an utterance with at least this share of its words wrong: an exact ASR confidence below 0.5


def misheard_split(right: dict[str, bool], utterance_wer: dict[str, float]) -> dict:
    """The share of utterances the ASR misheard (utterance WER >= MISHEARD_WER) and the accuracy of the answers to
    them and to the others (percent; None where there are none): what the node's transcript-low-confidence flag
    (asr_min_confidence 0.5) would separate if the ASR's confidence were exactly the share of words it got right."""
    def accuracy(keys: list[str]) -> float | None:
        return 100.0 * sum(right[k] for k in keys) / len(keys) if keys else None

    misheard = [k for k in right if utterance_wer[k] >= MISHEARD_WER]
    heard = [k for k in right if utterance_wer[k] < MISHEARD_WER]
    return {"misheard_share": 100.0 * len(misheard) / len(right), "accuracy_misheard": accuracy(misheard),
            "accuracy_heard": accuracy(heard)}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wers", default="0,0.1,0.2,0.3", help="comma-separated word error rates, 0-1")
    ap.add_argument("--unpunctuated-wers", default="0,0.2",
                    help="comma-separated word error rates, 0-1, of rows whose transcripts have no punctuation "
                         "('' = none)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the simulated ASR errors")
    ap.add_argument("--report-dir", default=str(REPO / "reports"), help="where the reports go")
    ap.add_argument("--model-dir", default=str(REPO / "checkpoints" / "default"), help="checkpoint to evaluate")
    args = ap.parse_args(argv)
    plan = [(wer, True) for wer in _wers(ap, "--wers", args.wers)]
    plan += [(wer, False) for wer in _wers(ap, "--unpunctuated-wers", args.unpunctuated_wers)]
    if not plan:
        ap.error("no rows: --wers and --unpunctuated-wers are both empty")
    refuse_non_checkpoint(ap, args.model_dir)  # before the bags are written
    from transformers.utils import logging

    logging.set_verbosity_error()
    from ddvlm_core.asr_noise import unpunctuate, word_error_rate
    from ddvlm_core.inference import EmotionRecognizer
    from ddvlm_ros.bag import labels_path, write_meld_bag

    recognizer = EmotionRecognizer.from_checkpoint(args.model_dir, load_caption_embedder=False)
    rows = []
    for wer, punctuation in plan:
        bag = write_meld_bag(Path(tempfile.mkdtemp()) / f"meld_test_wer{wer}", "test", asr_wer=wer, seed=args.seed,
                             asr_punctuation=punctuation)
        side = json.loads(labels_path(bag).read_text())["utterances"]
        pairs = {key: (unpunctuate(u["text"]), unpunctuate(u["asr_text"])) for key, u in side.items()}
        measured = sum(word_error_rate(r, h) * len(r.split()) for r, h in pairs.values()) / sum(
            len(r.split()) for r, _ in pairs.values())
        score = evaluate_bag(bag, recognizer)
        split = misheard_split(score["right"], {key: word_error_rate(*pair) for key, pair in pairs.items()})
        rows.append({"target_wer": wer, "punctuation": punctuation, "measured_wer": measured, "wa_f1": score["wa_f1"],
                     "accuracy": score["accuracy"], "macro_f1": score["macro_f1"], "n": score["n"],
                     "mean_confidence": score["mean_confidence"], "ece": score["ece"]} | split)
        print(f"WER {wer:.2f} (measured {measured:.3f}){'' if punctuation else ', no punctuation'}: "
              f"WA-F1 {score['wa_f1']:.2f}", flush=True)
    out = Path(args.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "replay_asr_noise.json").write_text(json.dumps({"model_dir": args.model_dir, "seed": args.seed,
                                                           "rows": rows}, indent=1) + "\n")
    base = rows[0]["wa_f1"]
    lines = ["# MELD test under ASR errors", "",
             f"`python bench/asr_noise.py --wers {args.wers} --unpunctuated-wers {args.unpunctuated_wers} --seed "
             f"{args.seed}`; model `{args.model_dir}`. Transcripts corrupted word by word (60 % substitutions, 25 % "
             "deletions, 15 % insertions) at the target WER; *punctuation* no: in lower case without punctuation, "
             "as ASRs that do not punctuate write them (`ddvlm_core.asr_noise.unpunctuate`). The measured WER leaves "
             "case and punctuation out. Each utterance sees its own (noisy) dialogue context, as the node does; "
             "*change* is against the first row. *Mean confidence* and *ECE* (expected calibration error, 15 bins): "
             "the published confidence against how often the answers were right (`ddvlm_core.calibration`). "
             f"*Misheard*: utterances with at least {MISHEARD_WER:.0%} of their words wrong (their own WER), which "
             "the node's flag `transcript-low-confidence` (`asr_min_confidence` 0.5) would mark if the ASR's "
             "confidence were exactly the share of words it got right; a real ASR's confidence only estimates it.",
             "", "| target WER | punctuation | measured WER | WA-F1 | change | accuracy | macro F1 | mean confidence | "
             "ECE | misheard | accuracy, misheard | accuracy, the others | utterances |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['target_wer']:.0%} | {'yes' if r['punctuation'] else 'no'} | {r['measured_wer']:.1%} | "
              f"{r['wa_f1']:.2f} | {r['wa_f1'] - base:+.2f} | {r['accuracy']:.2f} | {r['macro_f1']:.2f} | "
              f"{r['mean_confidence']:.2f} | {r['ece']:.2f} | {r['misheard_share']:.1f} % | "
              f"{_percent(r['accuracy_misheard'])} | {_percent(r['accuracy_heard'])} | {r['n']} |" for r in rows]
    (out / "replay_asr_noise.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _wers(ap: argparse.ArgumentParser, option: str, text: str) -> list[float]:
    """A comma-separated list of word error rates in [0, 1] ('' = none); the parser's error otherwise."""
    try:
        wers = [float(w) for w in text.split(",")] if text.strip() else []
    except ValueError:
        ap.error(f"{option}: comma-separated numbers in [0, 1], got {text!r}")
    if not all(0 <= w <= 1 for w in wers):
        ap.error(f"{option}: each in [0, 1], got {text!r}")
    return wers


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
