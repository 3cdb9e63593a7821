"""Table 4 ablations: each row is a set of overrides of one training configuration, run for several seeds.

    python -m training.ablate --config training/configs/cpu.yaml --seeds 0,1,2 [--rows text_sd,text_no_sd]
    python -m training.ablate --render reports/ablation.json      # the Markdown again from a report's JSON
    python -m training.ablate --merge a.json b.json --report reports/ablation_x   # seeds run in two sessions

Writes reports/ablation.md and reports/ablation.json: mean ± std test WA-F1 (model chosen on dev) per
row next to the paper's number, with the encoder, caption source and text mode of each row. Rows that
need captions are listed as not run when the configuration has none. Every number but the paper's
comes from the runs.

On your own corpus (``--corpus=own --meld_dir=DIR``, e.g. a study's sessions, python -m ddvlm_ros.corpus) the
same rows run on its splits; the report goes to RUN_DIR/ablation/report.md and .json (not reports/, MELD's),
and sets no paper number beside its scores: the paper's are on MELD.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from training.config import (HOSTING_KEYS, ConfigError, TrainConfig, config_differences, load_config, mode_text,
                             override_text)
from training.schedule import lr_left_after

REPORTS = Path("reports")
SD_KEPT = {"student": "", "ema": "; self-distilled runs keep the EMA teacher's weights",  # TrainConfig.sd_select
           "either": "; self-distilled runs keep the student's or the EMA teacher's weights, whichever is "
                     "better on dev"}


@dataclass(frozen=True)
class Row:
    name: str
    title: str
    paper: float | None
    overrides: dict = field(default_factory=dict)
    needs_captions: bool = False
    score: str = "final"  # which stage's selected test WA-F1 the row reports: text | visual | final


ROWS = (
    Row("full", "DDVLM (full)", 67.80, {}, True),
    Row("no_sd", "w/o Self-Distillation", 66.88, {"self_distillation": False}, True),
    Row("no_cmkd", "w/o Cross-Modal KD", 67.42, {"cross_modal_kd": False}, True),
    Row("no_fusion", "w/o Residual Fusion", 67.24, {"fusion": "concat"}, True),
    Row("text_sd", "Self-Distillation Only Text", 67.13, {"stages": ("text",)}, False, "text"),
    Row("text_no_sd", "w/o Self-Distillation Only Text", 66.46, {"stages": ("text",), "self_distillation": False},
        False, "text"),
    Row("visual_cmkd", "Only Visual", 33.85, {"stages": ("text", "visual")}, True, "visual"),
    Row("visual_no_cmkd", "w/o Cross-Modal Only Visual", 31.66, {"stages": ("text", "visual"), "cross_modal_kd": False},
        True, "visual"),
    Row("text_no_speakers", "Only Text, SD, without speaker tokens (ours)", None,
        {"stages": ("text",), "speaker_tokens": False}, False, "text"),
)


def row_test(results: dict, row: Row) -> dict:
    """The test metrics (and predictions) of the stage the row is scored by, at its dev-selected epoch."""
    stages = results["stages"]
    name = row.score if row.score != "final" else ("fusion" if "best" in stages.get("fusion", {}) else "text")
    return stages[name]["best"]["test"]


def row_score(results: dict, row: Row) -> float:
    return row_test(results, row)["wa_f1"]


def _job_config(base, row: Row, seed: int):
    run_dir = f"{base.run_dir}/ablation/{row.name}/seed{seed}"
    return replace(base, **row.overrides, seed=seed, run_dir=run_dir).validate()


def _run_in_process(cfg, log) -> dict:
    from training.loop import run

    return run(cfg, log)


def _run_as_subprocess(cfg) -> subprocess.Popen:
    """``python -m training`` on the job's resolved config (written to its run directory as YAML)."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file = run_dir / "job.yaml"
    config_file.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
    log_file = open(run_dir / "train.log", "w", encoding="utf-8")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "-m", "training", "--config", str(config_file)],
                            stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _summary(results: dict, row: Row, seed: int, seconds: float) -> dict:
    """One run's line of the report. ``seconds`` is this call's wall time; a text stage resumed from an earlier
    call adds the train and eval time its history records for the epochs that call ran (not its start-up)."""
    text = results["stages"].get("text", {})
    earlier = text.get("resumed_after", 0)
    seconds += sum(r.get("train_seconds", 0) + r.get("eval_seconds", 0) for r in text.get("history", [])
                   if r["epoch"] <= earlier)
    predictions, examples = row_test(results, row).get("predictions"), results.get("test_examples")
    return {"seed": seed, "test_wa_f1": row_score(results, row), "seconds": round(seconds, 1),
            **({"test_predictions": label_string(predictions), "test_gold": label_string(examples["gold"]),
                "test_dialogues": run_lengths(examples["dialogues"])} if predictions and examples else {}),
            **({"resumed_after": earlier} if earlier else {}),
            "text_best_epoch": text.get("best", {}).get("epoch"), "text_kept": text.get("best", {}).get("kept"),
            "text_dev_wa_f1": text.get("best", {}).get("dev_wa_f1"),
            "epochs_run": len(text.get("history", [])), "text_history": text.get("history", []),
            **({"hardware": results["hardware"]} if "hardware" in results else {}),
            **({"captions": results["captions"]} if "captions" in results else {}),
            **({"text_calibration": text["calibration"]} if "temperature" in text.get("calibration", {}) else {})}


def run_rows(base, rows: list[Row], seeds: list[int], log=print, parallel: int = 1) -> list[dict]:
    """Every (row, seed) run; ``parallel`` > 1 runs that many at once as subprocesses (e.g. several
    seeds sharing one GPU, whose small-batch steps leave it mostly idle)."""
    entries, jobs = [], []
    for row in rows:
        entry = {"row": row.name, "title": row.title, "paper": row.paper if base.corpus == "meld" else None,
                 "mode": mode_text(base.to_dict()),
                 "encoder": base.text_backbone, "captions": base.caption_source, "device": base.device,
                 "epochs": base.epochs, "seeds": seeds, "scores": [], "runs": []}
        entries.append(entry)
        if row.needs_captions and base.caption_source == "none":
            entry["not_run"] = ("needs captions; none on this machine (no MELD videos)" if base.corpus == "meld"
                                else "needs captions; caption_source: none")
            continue
        jobs += [(entry, row, seed, _job_config(base, row, seed)) for seed in seeds]
    running: list[tuple] = []
    pending = list(jobs)
    while pending or running:
        while pending and (parallel <= 1 or len(running) < parallel):
            entry, row, seed, cfg = pending.pop(0)
            t0 = time.monotonic()
            if parallel <= 1:
                _finish(entry, row, seed, _run_in_process(cfg, log), t0, log)
            else:
                log(f"ablation {row.name} seed {seed}: started ({cfg.run_dir}/train.log)")
                running.append((entry, row, seed, cfg, t0, _run_as_subprocess(cfg)))
        for job in [j for j in running if j[-1].poll() is not None]:
            running.remove(job)
            entry, row, seed, cfg, t0, proc = job
            result_file = Path(cfg.run_dir) / "results.json"
            if proc.returncode != 0 or not result_file.is_file():
                entry.setdefault("failed", []).append({"seed": seed, "returncode": proc.returncode,
                                                       "log": f"{cfg.run_dir}/train.log"})
                log(f"ablation {row.name} seed {seed}: FAILED (exit {proc.returncode}), see {cfg.run_dir}/train.log")
                continue
            _finish(entry, row, seed, json.loads(result_file.read_text(encoding="utf-8")), t0, log)
        if running:
            time.sleep(2)
    for entry in entries:
        summarize(entry)
    return entries


def summarize(entry: dict) -> dict:
    """A row's runs in seed order, their test WA-F1 scores, mean and (sample) std."""
    if entry["runs"]:
        entry["runs"].sort(key=lambda r: r["seed"])
        entry["scores"] = [r["test_wa_f1"] for r in entry["runs"]]
        entry["mean"] = statistics.mean(entry["scores"])
        entry["std"] = statistics.stdev(entry["scores"]) if len(entry["scores"]) > 1 else 0.0
    return entry


RUN_KEYS = ("seeds", "scores", "runs", "mean", "std", "failed", "not_run")  # a report row's results
MERGE_MAY_DIFFER = ("seed", *HOSTING_KEYS)  # the seed, and how a run was hosted (not what it trains)


def merge_reports(reports: list[dict]) -> list[dict]:
    """The rows of several reports of one configuration (e.g. seeds run in different GPU sessions) as one
    report's rows: each row's runs joined by seed. ValueError when the configurations differ in anything but
    MERGE_MAY_DIFFER, or when a row has the same seed in two reports."""
    config = reports[0]["config"]
    for report in reports[1:]:
        differ = config_differences(config, report["config"], MERGE_MAY_DIFFER)
        if differ:
            raise ValueError(f"the reports differ in {differ}: only seeds of one configuration can be merged")
    merged: dict[str, dict] = {}
    for report in reports:
        for entry in report["rows"]:
            if entry["row"] not in merged:  # the row's description; what its runs gave is joined below
                merged[entry["row"]] = {**{k: v for k, v in entry.items() if k not in RUN_KEYS},
                                        "seeds": [], "scores": [], "runs": [], "failed": []}
            row = merged[entry["row"]]
            repeated = {r["seed"] for r in entry["runs"]} & {r["seed"] for r in row["runs"]}
            if repeated:
                raise ValueError(f"row {entry['row']}: seeds {sorted(repeated)} are in two of the reports")
            row["runs"] += entry["runs"]
            row["seeds"] = sorted(set(row["seeds"]) | set(entry["seeds"]))
            row["failed"] += entry.get("failed", [])
            if "not_run" in entry:
                row["not_run"] = entry["not_run"]
    for row in merged.values():
        if not row["failed"]:
            del row["failed"]
        if row["runs"]:
            row.pop("not_run", None)
    return [summarize(row) for row in merged.values()]


def _finish(entry: dict, row: Row, seed: int, results: dict, t0: float, log) -> None:
    skipped = [stage["skipped"] for stage in results["stages"].values() if "skipped" in stage]
    if row.needs_captions and skipped:  # e.g. no train example had a usable caption: the row is not what it says
        entry["not_run"] = skipped[0]
        log(f"ablation {row.name} seed {seed}: not run ({skipped[0]})")
        return
    summary = _summary(results, row, seed, time.monotonic() - t0)
    entry["runs"].append(summary)
    log(f"ablation {row.name} seed {seed}: test WA-F1 {summary['test_wa_f1']:.2f} ({summary['seconds']:.0f}s)")


def resumed_text(run: dict) -> str:
    """" (resumed after epoch 2)" for a run that an earlier call stopped there, " (re-read)" for one this call
    found finished, else ""."""
    earlier = run.get("resumed_after")
    if not earlier:
        return ""
    return " (re-read)" if earlier >= run["epochs_run"] else f" (resumed after epoch {earlier})"


def paired_differences(a: dict, b: dict) -> dict[int, float]:
    """Test WA-F1 of row ``a`` minus row ``b`` for each seed both rows ran, in seed order."""
    score_b = {r["seed"]: r["test_wa_f1"] for r in b["runs"]}
    return {r["seed"]: r["test_wa_f1"] - score_b[r["seed"]] for r in a["runs"] if r["seed"] in score_b}


def epoch_one_spread(a: dict, b: dict) -> float | None:
    """Largest |dev WA-F1 of ``a`` minus ``b``| at epoch 1 over the seeds both rows ran (None when no seed has
    an epoch-1 record in both). Epoch 1 is CE only with or without self-distillation (Table 2), so on
    deterministic kernels it is 0 and a paired difference is SD's alone; GPU kernels that add in a varying
    order (full fine-tuning's embedding gradients) make it larger: the noise inside each paired difference."""
    def epoch_one(entry: dict) -> dict[int, float]:
        return {run["seed"]: record["dev_wa_f1"] for run in entry.get("runs", [])
                for record in run.get("text_history", []) if record["epoch"] == 1}
    first_a, first_b = epoch_one(a), epoch_one(b)
    spreads = [abs(first_a[seed] - first_b[seed]) for seed in first_a if seed in first_b]
    return max(spreads) if spreads else None


def paired_line(a: dict, b: dict) -> list[str]:
    """The seed-paired SD gain, and how far apart the pair already was after the shared CE-only epoch 1."""
    diffs = paired_differences(a, b)
    if len(diffs) < 2:
        return []
    spread = epoch_one_spread(a, b)
    if spread is None:
        start = "same initialisation and batch order"
    elif spread < 1e-9:
        start = "same initialisation and batch order; epoch 1 is identical"
    else:
        start = (f"same initialisation and batch order; epoch 1, CE only in both, already differs by up to "
                 f"{spread:.2f} dev WA-F1: kernels that are not deterministic")
    return [f"Paired by seed ({start}): {', '.join(f'seed {k} {d:+.2f}' for k, d in diffs.items())}; "
            f"mean {statistics.mean(diffs.values()):+.2f} ± {statistics.stdev(diffs.values()):.2f}."]


def label_string(labels: list[int]) -> str:
    """Label ids (0-6) as one digit each: a run's 2,610 test answers in 2,610 characters of the report's JSON."""
    return "".join(map(str, labels))


def labels_of(digits: str) -> list[int]:
    return [int(d) for d in digits]


def run_lengths(ids: list[int]) -> str:
    """"id:count,..." of the test examples' dialogue ids, in order: each dialogue and how many of its utterances
    follow each other (a dialogue met again later starts a new run)."""
    out: list[list[int]] = []
    for i in ids:
        if out and out[-1][0] == i:
            out[-1][1] += 1
        else:
            out.append([i, 1])
    return ",".join(f"{i}:{n}" for i, n in out)


def from_run_lengths(runs: str) -> list[int]:
    return [int(i) for i, n in (run.split(":") for run in runs.split(",") if run) for _ in range(int(n))]


def gain_interval(a: dict, b: dict) -> dict | None:
    """How far the test sample alone could move the mean gain of row ``a`` over row ``b``: the 95 % interval of
    the seeds' mean paired difference over resamples of the test dialogues, every seed's predictions scored on the
    same resamples (``ddvlm_core.metrics.bootstrap_wa_f1_difference``); None when the runs recorded no test
    predictions (reports written before they did)."""
    from ddvlm_core.metrics import bootstrap_wa_f1_difference

    runs_b = {r["seed"]: r for r in b.get("runs", []) if "test_predictions" in r}
    pairs = [(r, runs_b[r["seed"]]) for r in a.get("runs", []) if "test_predictions" in r and r["seed"] in runs_b]
    first = pairs[0][0] if pairs else {}
    if not pairs or any((x["test_gold"], x["test_dialogues"]) != (first["test_gold"], first["test_dialogues"])
                        for pair in pairs for x in pair):
        return None
    return bootstrap_wa_f1_difference(labels_of(first["test_gold"]),
                                      [labels_of(y["test_predictions"]) for _, y in pairs],
                                      [labels_of(x["test_predictions"]) for x, _ in pairs],
                                      from_run_lengths(first["test_dialogues"]))


def gain_interval_line(a: dict, b: dict) -> list[str]:
    """``gain_interval`` in words ([] without one)."""
    from ddvlm_core.metrics import interval_words

    d = gain_interval(a, b)
    if d is None:
        return []
    return [f"Over the test dialogues ({d['pairs']} seed pair{'s' if d['pairs'] > 1 else ''}, every run scored on "
            f"the same resamples): mean gain {d['difference']:+.2f}, {interval_words(d, 'test dialogues')}; "
            f"{100 * d['share_above_0']:.1f} % of the resampled gains above 0."]


def epoch_means(entry: dict, model: str = "") -> dict[int, tuple[int, float, float]]:
    """epoch -> (runs that reached it, mean dev WA-F1, mean test WA-F1) over a row's runs: how the rows
    compare at each epoch of training, not only at each run's dev-selected one (e.g. a no-SD model that
    overfits in later epochs while the self-distilled one holds). ``model="teacher_"``: the EMA teacher's
    scores, which self-distilled runs record beside the student's."""
    per_epoch: dict[int, list[dict]] = {}
    for run in entry.get("runs", []):
        for record in run.get("text_history", []):
            if f"{model}dev_wa_f1" in record:
                per_epoch.setdefault(record["epoch"], []).append(record)
    return {epoch: (len(records), statistics.mean(r[f"{model}dev_wa_f1"] for r in records),
                    statistics.mean(r[f"{model}test_wa_f1"] for r in records))
            for epoch, records in sorted(per_epoch.items())}


def overconfidence_line(sd: dict, no_sd: dict) -> list[str]:
    """Section 3.4 says self-distillation "alleviates the issue of overconfidence in a single class": the test ECE
    of the text branch as trained (temperature 1) and the temperature fitted on dev, mean ± std over the seeds of
    each row that recorded them (a temperature above 1: the model was overconfident on dev)."""
    def stats(entry: dict, value) -> tuple[float, float, int] | None:
        values = [value(r["text_calibration"]) for r in entry.get("runs", []) if "text_calibration" in r]
        if not values:
            return None
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values)

    def text(s) -> str:
        return f"{s[0]:.2f} ± {s[1]:.2f} ({s[2]})"

    ece = [stats(e, lambda c: c["test"]["as_trained"]["ece"]) for e in (sd, no_sd)]
    temperature = [stats(e, lambda c: c["temperature"]) for e in (sd, no_sd)]
    if None in ece:
        return []
    return ["", f"Overconfidence (Section 3.4: self-distillation \"alleviates the issue of overconfidence\"): test "
                f"ECE of the text branch as trained, SD {text(ece[0])} %, no SD {text(ece[1])} %; temperature "
                f"fitted on dev, SD {text(temperature[0])}, no SD {text(temperature[1])}."]


def epoch_table(entries: list[dict]) -> list[str]:
    """Markdown: per epoch, each row's mean dev / test WA-F1 over its seeds (and how many reached the epoch),
    and its EMA teacher's where the runs recorded it."""
    means = {f"{e['row']}{title}": m for e in entries for model, title in (("", ""), ("teacher_", " EMA teacher"))
             if (m := epoch_means(e, model))}
    if not means:
        return []
    epochs = sorted({epoch for m in means.values() for epoch in m})
    lines = ["", "Per epoch, mean over the seeds that reached it (dev / test WA-F1, runs):", "",
             "| epoch | " + " | ".join(means) + " |", "|---|" + "---|" * len(means)]
    for epoch in epochs:
        cells = [f"{m[epoch][1]:.2f} / {m[epoch][2]:.2f} ({m[epoch][0]})" if epoch in m else "—"
                 for m in means.values()]
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    return lines


def captions_line(entries: list[dict]) -> list[str]:
    """Which captioner's captions the multimodal rows trained on, and how many examples per split had one (the
    others: a missing, unreadable or mis-timed clip, or no record; ``python -m training.captions`` lists them)."""
    reports = [run["captions"] for e in entries for run in e.get("runs", []) if run.get("captions")]
    if not reports:
        return []
    first = reports[0]
    splits = ", ".join(f"{s} {first[s]['captioned']}/{first[s]['examples']}" for s in ("train", "dev", "test")
                       if s in first)
    return ["", f"Captions: `{first['captioner']}` from {first['source']}; examples with a usable caption: {splits}."]


def stopped_runs(entry: dict, epochs: int) -> list[dict]:
    """A row's runs that stopped (their time budget) before the end of the ``epochs``-epoch schedule."""
    return [run for run in entry.get("runs", []) if 0 < run["epochs_run"] < epochs and run.get("text_history")]


def truncation_line(entries: list[dict], epochs: int, warmup_ratio: float) -> list[str]:
    """Which runs their time budget stopped before the end of the ``epochs``-epoch schedule, and how high the
    learning rate still was there: such a run never reached the low-rate end of the linear decay, so its score
    is not that of the configured schedule, and rows stopped at different epochs are compared unevenly."""
    stops = []
    for entry in entries:
        cut = sorted({(run["epochs_run"], run["text_history"][-1]["train_steps"])
                      for run in stopped_runs(entry, epochs)})
        if cut:
            where = ", ".join(f"{n} ({lr_left_after(n, epochs, warmup_ratio, steps):.0%})" for n, steps in cut)
            stops.append(f"{entry['row']} after {where}")
    if not stops:
        return []
    return ["", f"Stopped by the time budget before the {epochs}-epoch schedule ended (epochs run, and in brackets "
            f"the learning rate there as a share of its peak; it decays linearly to 0 at epoch {epochs}): "
            f"{'; '.join(stops)}. These scores are not those of a completed schedule."]


def hardware_text(entries: list[dict]) -> str:
    """" (NVIDIA H100 80GB HBM3)": what the runs recorded as their hardware ("" for runs from before they did;
    several names joined when runs ran on different machines, e.g. merged sessions)."""
    names = sorted({run["hardware"] for e in entries for run in e.get("runs", []) if run.get("hardware")})
    return f" ({'; '.join(names)})" if names else ""


def default_report(base) -> Path:
    """Where a run's report goes unless --report says: reports/ablation (MELD's, which the README cites), or on your
    own corpus beside the runs, RUN_DIR/ablation/report."""
    return REPORTS / "ablation" if base.corpus == "meld" else Path(base.run_dir) / "ablation" / "report"


def write_report(entries: list[dict], base, path: Path = REPORTS / "ablation", config: dict | None = None) -> None:
    """``path``.json (``config``, default ``base``'s, and the rows) and ``path``.md. On your own corpus the title
    names it and the table has no paper column (the paper's numbers are MELD's)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {"config": config if config is not None else base.to_dict(), "rows": entries}
    path.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    mode = mode_text(report["config"])  # the rows' overrides never change the text mode
    meld = base.corpus == "meld"
    lines = [
        "# Table 4 ablations on MELD (test WA-F1, model chosen on dev)" if meld else
        f"# Table 4's ablations on your corpus {base.meld_dir} (test WA-F1, model chosen on its dev)",
        "",
        f"Generated by `python -m training.ablate` with text mode **{mode}**, encoder "
        f"**{base.text_backbone}**, captions **{base.caption_source}**, {base.epochs} epochs, batch {base.batch_size}"
        f"{batches_text(base.to_dict())}, lr {base.lr:g}, device {base.device}{hardware_text(entries)}"
        f"{SD_KEPT[base.sd_select]}. "
        + ("The paper's numbers are RoBERTa-large with Qwen2.5-VL captions, full fine-tuning on a GPU." if meld else
           "The paper's numbers are on MELD, so none stands beside these."),
        "",
        "| row | ours (mean ± std) | seeds |" + (" paper |" if meld else "") + " mode | encoder | captions |",
        "|---|---|---|" + ("---|" if meld else "") + "---|---|---|",
    ]
    for e in entries:
        if "not_run" in e:
            ours = "not run: " + e["not_run"]
        elif "mean" not in e:
            ours = "failed (see the run logs)"
        else:
            ours = f"{e['mean']:.2f} ± {e['std']:.2f}"
        paper = (f" {e['paper']:.2f} |" if e["paper"] is not None else " — |") if meld else ""
        lines.append(f"| {e['title']} | {ours} | {len(e['scores'])} |{paper} {mode} | {e['encoder']} | "
                     f"{e['captions']} |")
    runs = [(e, r) for e in entries for r in e.get("runs", [])]
    calibrated = any("text_calibration" in r for _, r in runs)
    if runs:
        lines += ["", "Per run (model chosen on dev):", "",
                  "| row | seed | test WA-F1 | dev WA-F1 | best epoch | epochs run | seconds |"
                  + (" test ECE as trained | temperature |" if calibrated else ""),
                  "|---|---|---|---|---|---|---|" + ("---|---|" if calibrated else "")]
        for e, r in runs:
            dev = f"{r['text_dev_wa_f1']:.2f}" if r.get("text_dev_wa_f1") is not None else "—"
            epoch = f"{r['text_best_epoch']}" + (" (EMA teacher)" if r.get("text_kept") == "ema" else "")
            c = r.get("text_calibration")
            confidence = (f" {c['test']['as_trained']['ece']:.2f} | {c['temperature']:.3f} |" if c else " — | — |") \
                if calibrated else ""
            lines.append(f"| {e['row']} | {r['seed']} | {r['test_wa_f1']:.2f} | {dev} | {epoch} | "
                         f"{r['epochs_run']} | {r['seconds']:.0f}{resumed_text(r)} |{confidence}")
    lines += epoch_table(entries)
    failed = [(e["row"], f) for e in entries for f in e.get("failed", [])]
    for row, f in failed:
        lines.append(f"\nFAILED: {row} seed {f['seed']} (exit {f['returncode']}), log {f['log']}")
    ran = {e["row"]: e for e in entries if "mean" in e}
    if runs:
        lines += ["", "Seconds: wall time of each run, including the one-off extraction of cached features (frozen "
                  "mode: h_text; cached frozen layers: their token states) by the first run that found the feature "
                  "cache cold. A run resumed from an earlier call (its time budget stopped it, or a kill) adds the "
                  "train and eval time its history records for the epochs before, not that call's start-up; so does a "
                  "run that found its run directory finished and only re-read it (marked re-read)."]
    lines += captions_line(entries)
    lines += truncation_line(entries, base.epochs, base.warmup_ratio)
    if "text_sd" in ran and "text_no_sd" in ran:
        gain = ran["text_sd"]["mean"] - ran["text_no_sd"]["mean"]
        lines += ["", f"Self-distillation gain on the text branch: {gain:+.2f} WA-F1"
                      + (" (paper: +0.67)." if meld else ".")]
        lines += paired_line(ran["text_sd"], ran["text_no_sd"])
        lines += gain_interval_line(ran["text_sd"], ran["text_no_sd"])
        lines += overconfidence_line(ran["text_sd"], ran["text_no_sd"])
    if "text_sd" in ran and "text_no_speakers" in ran:
        gain = ran["text_sd"]["mean"] - ran["text_no_speakers"]["mean"]
        lines += ["", f"Speaker tokens (SD text branch with vs without `<sN>`): {gain:+.2f} WA-F1."]
        lines += gain_interval_line(ran["text_sd"], ran["text_no_speakers"])
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")


def planned_runs(base, rows: list[Row], seeds: list[int]) -> tuple[list[str], int]:
    """--dry-run: a line per run that ``run_rows`` would start (or not), and how many runs would be refused (their
    run directory holds the state of another configuration)."""
    from training.loop import resume_status

    lines, refused = [], 0
    for row in rows:
        changes = ", ".join(f"{k}={override_text(v)}" for k, v in row.overrides.items())
        if row.needs_captions and base.caption_source == "none":
            lines.append(f"{row.name}: not run (needs captions; caption_source: none)")
            continue
        for seed in seeds:
            cfg = _job_config(base, row, seed)
            try:
                status = resume_status(cfg)
            except ConfigError as e:
                refused += 1
                status = f"REFUSED: {e}"
            lines.append(f"{row.name} seed {seed}: {cfg.run_dir} ({status}){'; ' + changes if changes else ''}")
    return lines, refused


def batches_text(config: dict) -> str:
    """How a run's training batches were made, where not the default (fixed length buckets of MELD's text): '' or
    e.g. " (new length buckets each epoch, groups of 50 batches; 30% of the prompts unpunctuated each epoch)"."""
    parts = []
    megabatch = config.get("bucket_megabatch", 0)
    if not config.get("length_bucketing", True):
        parts.append("random batches, not length-bucketed")
    elif megabatch:
        parts.append(f"new length buckets each epoch, groups of {megabatch} batches")
    if config.get("punctuation_dropout", 0):
        parts.append(f"{config['punctuation_dropout']:.0%} of the prompts unpunctuated each epoch")
    return f" ({'; '.join(parts)})" if parts else ""


def read_rows_report(path: str | Path, head: str, what: str) -> dict:
    """A report JSON of the shape this ablation and bench/quantization.py write, {head: {...}, "rows": [{"row":
    ...}, ...]}; ValueError naming the file for anything else: "not JSON (...)", or "not " + ``what``."""
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    if not (isinstance(report, dict) and isinstance(report.get(head), dict) and isinstance(report.get("rows"), list)
            and all(isinstance(row, dict) and "row" in row for row in report["rows"])):
        raise ValueError(f"{path}: not {what}")
    return report


def read_report(path: str | Path) -> dict:
    """A report JSON that ``python -m training.ablate`` wrote; ValueError naming the file for anything else (e.g.
    a run's results.json or a quantization report passed by mistake)."""
    report = read_rows_report(path, "config", "an ablation report (one has 'config' and 'rows'; python -m "
                                              "training.ablate writes it next to the Markdown)")
    TrainConfig.from_dict(report["config"])  # a config this version can read, or ValueError / TypeError naming it
    return report


def render(json_path: Path) -> int:
    """The Markdown report again from a report JSON, with this version's layout (the JSON is rewritten
    unchanged in content)."""
    report = read_report(json_path)
    write_report(report["rows"], TrainConfig.from_dict(report["config"]), json_path.with_suffix(""), report["config"])
    print(json_path.with_suffix(".md").read_text())
    return 0


def merge(json_paths: list[str], report: Path | None) -> int:
    """The reports' runs joined into ``report`` (None: ``default_report`` of their configuration)."""
    try:
        reports = [read_report(p) for p in json_paths]
        rows = merge_reports(reports)
    except (ValueError, TypeError, KeyError) as e:
        print(f"cannot merge: {e}", file=sys.stderr)
        return 2
    base = TrainConfig.from_dict(reports[0]["config"])
    report = report or default_report(base)
    write_report(rows, base, report, reports[0]["config"])
    print(report.with_suffix(".md").read_text())
    return 0


def main(argv: list[str]) -> int:
    rows = "\n".join(f"  {r.name:<17} {r.title}" + (f" (paper: {r.paper:.2f})" if r.paper else "")
                     + ("; needs captions" if r.needs_captions else "") for r in ROWS)
    ap = argparse.ArgumentParser(
        prog="python -m training.ablate", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill("Table 4: each row a configuration of the one training loop, run for each seed; "
                                  "mean +- std test WA-F1 (model chosen on dev) beside the paper's. Any other "
                                  "--key=value is a training override for every row (python -m training --help "
                                  "lists them).", 79),
        epilog=f"rows:\n{rows}")
    ap.add_argument("--config", help="the training config every row starts from (training/configs/*.yaml)")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds; each row runs once per seed")
    ap.add_argument("--rows", default=",".join(r.name for r in ROWS), help="comma-separated rows (below; default: all)")
    ap.add_argument("--report", help="report path without suffix: .md and .json (default: reports/ablation; on your "
                    "own corpus RUN_DIR/ablation/report)")
    ap.add_argument("--parallel", type=int, default=1, help="runs at once, as subprocesses (e.g. seeds on one GPU)")
    ap.add_argument("--render", metavar="JSON", help="only rewrite the Markdown report of an earlier run's JSON "
                    "(e.g. one brought back from the GPU machine) next to it")
    ap.add_argument("--dry-run", action="store_true", help="make the checks a run makes before any work, print each "
                    "run (row, seed, run directory, whether it starts afresh or resumes, what the row changes), stop")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="only join the runs of reports of one configuration "
                    "(seeds run in different sessions) into the --report")
    args, overrides = ap.parse_known_args(argv)
    missing = [path for path in ([args.render] if args.render else []) + (args.merge or []) if not Path(path).is_file()]
    if missing:
        ap.error(f"no such report: {', '.join(missing)}")
    if args.render:
        try:
            return render(Path(args.render))
        except (ValueError, TypeError) as e:
            ap.error(str(e))
        except KeyError as e:  # a report JSON whose rows or config lack what the Markdown shows
            ap.error(f"{args.render}: an incomplete ablation report (no {e})")
    if args.merge:
        return merge(args.merge, Path(args.report) if args.report else None)
    from transformers.utils import logging

    logging.set_verbosity_error()
    try:
        base = load_config(args.config, overrides)
    except (OSError, ValueError, TypeError) as e:  # a missing file, an unknown key, a wrong type or range
        ap.error(str(e))
    wanted = args.rows.split(",")
    unknown = set(wanted) - {r.name for r in ROWS}
    if unknown:
        ap.error(f"unknown rows {sorted(unknown)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        ap.error(f"--seeds: comma-separated integers, got {args.seeds!r}")
    if args.parallel < 1:
        ap.error(f"--parallel must be >= 1, got {args.parallel}")
    from training.loop import preflight

    try:  # before any row starts (each row's run checks its own run directory)
        preflight(base)
    except ConfigError as e:
        ap.error(str(e))
    if args.dry_run:
        plan, refused = planned_runs(base, [r for r in ROWS if r.name in wanted], seeds)
        print("\n".join(plan))
        return 2 if refused else 0
    entries = run_rows(base, [r for r in ROWS if r.name in wanted], seeds, parallel=args.parallel)
    report = Path(args.report) if args.report else default_report(base)
    write_report(entries, base, report)
    print(report.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
