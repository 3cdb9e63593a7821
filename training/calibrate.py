"""Calibrate a checkpoint's confidence: fit its temperatures on MELD dev and write them into its manifest.

    python -m training.calibrate CHECKPOINT [--captions CAPTIONS] [--report-dir reports] [--name calibration]
    python -m training.calibrate CHECKPOINT --corpus study_corpus --name study_calibration   # on your own sessions

Temperature scaling (``ddvlm_core.calibration``): p = softmax(z / T), one T for the text branch's logits (the
answers without a caption), one for the answers to transcripts without punctuation (those the recognizer flags
``transcript-unpunctuated``, fitted on dev written as such an ASR writes it) and, with ``--captions``, one for the
fused logits (the answers with a caption), each minimising the NLL of MELD dev. No argmax changes, so WA-F1 and
accuracy stay exactly as they were; the confidence a robot thresholds comes to mean what it says. Test is scored
before and after, never fitted on. The weights files are not touched: only the manifest's ``text_temperature``,
``unpunctuated_temperature``, ``fused_temperature`` and its ``calibration`` entry (what was fitted on what).
Writes REPORT_DIR/NAME.md and .json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ddvlm_core.calibration import before_after, fit_temperature, manifest_entry
from ddvlm_core.labels import NUM_LABELS

FIT_SPLIT = "dev"
SPLITS = ("dev", "test")


def split_logits(model, tok, builder, split: str, caption_of=None, corpus: str | Path = "") -> dict[str, torch.Tensor]:
    """{"labels", "text" logits, and with captions "fused" logits and "has_visual"} of a MELD split, in one
    pass of the backbone per batch; of your own ``corpus``'s split, also "flagged": the answers the recognizer
    flags ``transcript-unpunctuated`` (its transcripts as the robot's ASR wrote them)."""
    from ddvlm_core.context import unpunctuated
    from ddvlm_core.meld import dialogues
    from training.data import build_examples, check_full_test_split
    from training.evaluate import logits_of_examples

    examples = build_examples(split, builder, str(corpus))
    if split == "test" and not corpus:
        check_full_test_split(examples)
    out = {"labels": torch.tensor([e.label for e in examples])}
    if corpus:
        text_of = {(r.dialogue_id, r.utterance_id): r.text for rows in dialogues(split, Path(corpus)).values()
                   for r in rows}
        out["flagged"] = torch.tensor([unpunctuated(text_of[e.dialogue_id, e.utterance_id]) for e in examples],
                                      dtype=torch.bool)
    if caption_of is None:
        out["text"] = logits_of_examples(lambda ids, mask: model.text(ids, mask).logits, examples, tok.pad_token_id,
                                         desc=f"{split} ({len(examples)} utterances)")
        return out
    embeddings, has = caption_of.for_examples(examples)

    def both(ids, mask, emb, has_visual):
        result = model(ids, mask, emb, has_visual)
        return torch.cat([result.text.logits, result.logits], -1)

    joint = logits_of_examples(both, examples, tok.pad_token_id, extras=lambda idx: (embeddings[idx], has[idx]),
                               desc=f"{split} ({len(examples)} utterances, {int(has.sum())} captioned)")
    out.update(text=joint[:, :NUM_LABELS], fused=joint[:, NUM_LABELS:], has_visual=has)
    return out


def unpunctuated_logits(model, tok, builder, split: str) -> dict[str, torch.Tensor]:
    """{"labels", "text" logits, "flagged"} of a MELD split written as an ASR without punctuation writes it
    (``unpunctuate``, the whole dialogue); "flagged": the answers the recognizer flags ``transcript-unpunctuated``
    (3+ words), the ones ``unpunctuated_temperature`` applies to."""
    from ddvlm_core.asr_noise import unpunctuate
    from ddvlm_core.context import unpunctuated
    from ddvlm_core.meld import dialogues
    from training.data import build_examples
    from training.evaluate import logits_of_examples

    examples = build_examples(split, builder, text_of=unpunctuate)
    text_of = {(r.dialogue_id, r.utterance_id): r.text for rows in dialogues(split).values() for r in rows}
    flagged = torch.tensor([unpunctuated(unpunctuate(text_of[e.dialogue_id, e.utterance_id])) for e in examples])
    text = logits_of_examples(lambda ids, mask: model.text(ids, mask).logits, examples, tok.pad_token_id,
                              desc=f"{split} without punctuation ({len(examples)} utterances)")
    return {"labels": torch.tensor([e.label for e in examples]), "text": text, "flagged": flagged}


def branch_inputs(logits: dict[str, torch.Tensor], branch: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) a temperature of ``branch`` applies to: every answer for "text" (of your own corpus: those
    not flagged unpunctuated), the captioned ones for "fused" (an answer without a caption is the text branch's),
    the flagged ones of the split written without punctuation (of your own corpus: as it is) for
    "unpunctuated"."""
    if branch == "text" and "flagged" in logits:  # your own corpus: the answers not flagged unpunctuated
        return logits["text"][~logits["flagged"]], logits["labels"][~logits["flagged"]]
    if branch == "text":
        return logits["text"], logits["labels"]
    if branch == "unpunctuated":
        keep = logits["flagged"]
        return logits["text"][keep], logits["labels"][keep]
    keep = logits["has_visual"]
    return logits["fused"][keep], logits["labels"][keep]


def calibrate(checkpoint: str | Path, captions: str | Path = "", log=print, write: bool = True,
              corpus: str | Path = "") -> dict:
    """Fit the temperatures on dev, score dev and test before and after, and (``write``) store them in the
    checkpoint's manifest. Returns the report's content. ``corpus``: your own dialogues' dev and test (e.g. a
    study's, ``python -m ddvlm_ros.corpus``) instead of MELD's, their transcripts as the robot's ASR wrote them:
    answers the recognizer flags unpunctuated are those it wrote so, not MELD rewritten."""
    from ddvlm_core import checkpoint as ckpt
    from ddvlm_core.context import PromptBuilder
    from ddvlm_core.model import DDVLM
    from training.evaluate import CaptionInputs

    if captions and "fusion" not in ckpt.read_manifest(checkpoint)["modules"]:
        raise ValueError(f"{checkpoint} has no visual branch and fusion: --captions needs a checkpoint trained on them")
    model, tok, manifest = DDVLM.load(checkpoint)
    caption_of = CaptionInputs(captions, manifest["config"]["caption_embedder"]) if captions else None
    builder = PromptBuilder(tok, manifest["config"]["max_tokens"], manifest["config"].get("speaker_tokens", True))
    config = manifest["config"]
    shipped = {"text": config.get("text_temperature", 1.0), "fused": config.get("fused_temperature", 1.0),
               "unpunctuated": config.get("unpunctuated_temperature") or config.get("text_temperature", 1.0)}
    logits = {split: split_logits(model, tok, builder, split, caption_of, corpus) for split in SPLITS}
    plain = logits if corpus else {split: unpunctuated_logits(model, tok, builder, split) for split in SPLITS}
    branches = ("text", "fused", "unpunctuated") if caption_of else ("text", "unpunctuated")
    report = {"checkpoint": str(checkpoint), "fitted_on": f"{corpus or 'MELD'} {FIT_SPLIT}",
              "method": "temperature scaling", "captions": str(captions) if captions else "none",
              "corpus": str(corpus) if corpus else "meld", "branches": {}}
    for branch in branches:
        source = plain if branch == "unpunctuated" else logits
        fit_logits, fit_labels = branch_inputs(source[FIT_SPLIT], branch)
        if len(fit_labels) == 0:
            report["branches"][branch] = {"skipped": f"no {FIT_SPLIT} utterance of this kind" + (
                " has a caption" if branch == "fused" else "")}
            continue
        temperature = fit_temperature(fit_logits, fit_labels)
        entry = {"temperature": temperature, "splits": {}}
        # an unpunctuated answer had the text temperature before it had its own: that is the score to beat; on your
        # own corpus, the checkpoint's temperatures as they were are
        before = shipped[branch] if corpus else (
            report["branches"]["text"]["temperature"] if branch == "unpunctuated" else 1.0)
        for split in SPLITS:
            entry["splits"][split] = before_after(*branch_inputs(source[split], branch), temperature, before)
        report["branches"][branch] = entry
        scored = [f"{split} ECE {m['as_trained']['ece']:.2f}% -> {m['calibrated']['ece']:.2f}%, NLL "
                  f"{m['as_trained']['nll']:.3f} -> {m['calibrated']['nll']:.3f}"
                  for split, m in entry["splits"].items() if m["n"]]
        log(f"{branch}: T = {temperature:.3f} (fitted on {FIT_SPLIT}); " + "; ".join(scored))
    fitted = {f"{b}_temperature": e["temperature"] for b, e in report["branches"].items() if "temperature" in e}
    if write:
        entry = manifest_entry(fitted, captions=report["captions"], fitted_on=report["fitted_on"])
        ckpt.update_manifest(checkpoint, config=fitted, extra={"calibration": entry})
    return report


def report_markdown(report: dict) -> str:
    command = f"python -m training.calibrate {report['checkpoint']}" + (
        f" --captions {report['captions']}" if report["captions"] != "none" else "") + (
        f" --corpus {report['corpus']}" if report.get("corpus", "meld") != "meld" else "")
    lines = ["# Calibrated confidence (temperature scaling)", "",
             f"Generated by `{command}`. Each temperature T minimises the NLL of {report['fitted_on']}; test is only "
             "scored. p = softmax(z / T) changes no argmax, so WA-F1 and accuracy are those of the checkpoint as "
             "trained. ECE: 15 equal-width confidence bins, in percent (0 = a confidence of 70 % is right 70 % of the "
             "time).", ""]
    for branch, entry in report["branches"].items():
        name = {"text": "text branch (answers without a caption)", "fused": "fused (answers with a caption)",
                "unpunctuated": "text branch on transcripts without punctuation (answers flagged "
                                "`transcript-unpunctuated`: MELD written in lower case without punctuation, "
                                "3+ words)"}[branch]
        if "skipped" in entry:
            lines += [f"## {name}", "", f"Not fitted: {entry['skipped']}.", ""]
            continue
        lines += [f"## {name}: T = {entry['temperature']:.3f}", "",
                  "| split | n | T | NLL | ECE (%) | Brier | mean confidence (%) | accuracy (%) |",
                  "|---|---|---|---|---|---|---|---|"]
        for split, scores in entry["splits"].items():
            if not scores["n"]:
                lines.append(f"| {split} | 0 | | | | | | |")
            for kind in ("as_trained", "text_temperature", "calibrated") if scores["n"] else ():
                if kind not in scores:
                    continue
                m = scores[kind]
                lines.append(f"| {split} | {scores['n']} | {m['temperature']:.3f} | {m['nll']:.4f} | {m['ece']:.2f} | "
                             f"{m['brier']:.4f} | {m['mean_confidence']:.2f} | {m['accuracy']:.2f} |")
        if not entry["splits"]["test"]["n"]:
            lines.append("")
            continue
        first = "text_temperature" if "text_temperature" in entry["splits"]["test"] else "as_trained"
        lines += ["", "Reliability on test (confidence bins: how many answers, their mean confidence, how many were "
                  "right):", "", f"| confidence | {'with the text T' if first != 'as_trained' else 'as trained'}: n | "
                  "confidence (%) | accuracy (%) | calibrated: n | confidence (%) | accuracy (%) |",
                  "|---|---|---|---|---|---|---|"]
        before, after = (entry["splits"]["test"][k]["reliability"] for k in (first, "calibrated"))
        for a, b in zip(before, after):
            def cells(row):
                return f"{row['n']} | " + (f"{row['confidence']:.1f} | {row['accuracy']:.1f}" if row["n"] else "— | —")
            lines.append(f"| {a['from']:.1f}–{a['to']:.1f} | {cells(a)} | {cells(b)} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.calibrate", description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="a checkpoint folder (e.g. checkpoints/default, RUN_DIR/checkpoint)")
    ap.add_argument("--captions", default="", help="captions JSONL file or folder (python -m training.captions): "
                    "also fit the fused temperature of a checkpoint trained on captions")
    ap.add_argument("--corpus", default="", help="a folder of your own corpus's CSVs (python -m ddvlm_ros.corpus): "
                    "fit on its dev and score its test, transcripts as the robot's ASR wrote them, instead of MELD's")
    ap.add_argument("--report-dir", default="reports", help="where NAME.md and NAME.json go (default: reports)")
    ap.add_argument("--name", default="calibration", help="report file name, without extension")
    ap.add_argument("--no-write", action="store_true", help="score and report only; leave the manifest as it is")
    args = ap.parse_args(argv)
    from transformers.utils import logging

    logging.set_verbosity_error()
    from ddvlm_core.checkpoint import CheckpointError

    try:
        report = calibrate(args.checkpoint, args.captions, write=not args.no_write, corpus=args.corpus)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        ap.error(str(e))
    out = Path(args.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (out / f"{args.name}.md").write_text(report_markdown(report), encoding="utf-8")
    print(f"wrote {out / args.name}.md and .json" + ("" if args.no_write else f"; temperatures in {args.checkpoint}"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
