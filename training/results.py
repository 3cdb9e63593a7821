"""Every measured text-branch configuration in one table, from the ablation reports' JSON (issue #4's targets).

    python -m training.results reports/ablation*.json --out reports/text_branch

One line per report that ran the text rows: mode, device, schedule (and where a time budget cut it), the
self-distilled (SD) and CE-only rows' mean ± std test WA-F1 over their seeds, the SD gain, the best single run,
and, where the runs recorded their EMA teacher's scores, what ``--sd_select=either`` keeps: at every epoch the
student or the EMA teacher, whichever is better on dev. Selection does not change training, so that column is
exactly what an ``either`` run of the same trajectory reports, not an estimate. A last column, the *test
ceiling*, is the highest test score any recorded epoch of the SD runs reached (student or teacher). It is picked
on test, so it is not a result: it bounds what any other choice of epoch or of student/teacher could have
reported from those runs, and says whether the target needs better selection or different training. The
*epoch-1 gap* says whether a seed's SD and no-SD runs were still identical after the CE-only epoch 1 (0 on
deterministic kernels), i.e. whether the SD gain is SD's alone; the gain target counts only such runs. Every
number comes from the reports except the paper's (Table 4) and the issue's targets.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from training.ablate import (ROWS, batches_text, epoch_one_spread, gain_interval, hardware_text, read_report,
                             stopped_runs)
from training.config import candidates, mode_text

PAPER = {row.name: row.paper for row in ROWS}  # RoBERTa-large, Table 4
TARGET = 65.0  # issue #4: a fine-tuned MPNet-base text branch with SD, mean of 3 seeds
GAIN_TARGET = 0.5  # issue #4: SD over no SD, mean of 3 seeds


def either_choice(run: dict) -> tuple[float, float] | None:
    """(dev, test) WA-F1 of the model ``sd_select: either`` keeps in this run: ``training.config.candidates`` of
    every epoch's recorded student and EMA-teacher scores, the first best on dev kept, as ``training.loop.fit``
    keeps it. None when the run recorded no teacher scores."""
    history = run.get("text_history") or []
    if not any("teacher_dev_wa_f1" in record for record in history):
        return None
    best = None
    for record in history:
        scores = {split: {"wa_f1": record[f"{split}_wa_f1"]} for split in ("dev", "test")}
        teacher = {split: {"wa_f1": record[f"teacher_{split}_wa_f1"]} for split in ("dev", "test")
                   if f"teacher_{split}_wa_f1" in record}
        for _, kept in candidates("either", scores, teacher if len(teacher) == 2 else {}):
            if best is None or kept["dev"]["wa_f1"] > best[0]:
                best = (kept["dev"]["wa_f1"], kept["test"]["wa_f1"])
    return best


def highest_test_score(runs: list[dict]) -> float | None:
    """The highest test WA-F1 any recorded epoch of these runs reached, the student's or the EMA teacher's.
    Picked on test, so not a result: no choice of epoch or of student/teacher made from these runs' recorded
    models reports more. None when no run recorded its epochs."""
    scores = [record[key] for run in runs for record in run.get("text_history") or []
              for key in ("test_wa_f1", "teacher_test_wa_f1") if key in record]
    return max(scores, default=None)


def mean_std(scores: list[float]) -> str:
    if not scores:
        return "—"
    if len(scores) == 1:
        return f"{scores[0]:.2f} (1)"
    return f"{statistics.mean(scores):.2f} ± {statistics.stdev(scores):.2f} ({len(scores)})"


def schedule(config: dict, rows: dict) -> str:
    """"10 epochs", or where a time budget stopped runs early: "10 epochs; budget stopped SD after 5, no SD
    after 7/8" (the epochs at which a row's stopped runs ended; ``training.ablate.truncation_line`` says more)."""
    epochs, label = config["epochs"], {"text_sd": "SD", "text_no_sd": "no SD"}
    stopped = []
    for name in label:
        cuts = sorted({run["epochs_run"] for run in stopped_runs(rows.get(name, {}), epochs)})
        if cuts:
            stopped.append(f"{label[name]} after {'/'.join(map(str, cuts))}")
    return f"{epochs} epochs{batches_text(config)}" + (f"; budget stopped {', '.join(stopped)}" if stopped else "")


def summary(path: Path) -> dict | None:
    """One report's line, or None when it has no self-distilled text row with runs."""
    report = read_report(path)
    if report["config"].get("corpus", "meld") != "meld":  # scores on another test set: not comparable in one table
        raise ValueError(f"{path}: ablations on your corpus {report['config']['meld_dir']}, not on MELD; this table "
                         f"compares MELD test scores (that run's own table: {path.with_suffix('.md')})")
    rows = {row["row"]: row for row in report["rows"]}
    sd = rows.get("text_sd", {}).get("runs", [])
    if not sd:
        return None
    no_sd = rows.get("text_no_sd", {}).get("runs", [])
    config = report["config"]
    sd_scores, no_sd_scores = [r["test_wa_f1"] for r in sd], [r["test_wa_f1"] for r in no_sd]
    either = [choice[1] for run in sd if (choice := either_choice(run)) is not None]
    return {
        "report": path.stem, "mode": mode_text(config), "encoder": rows["text_sd"]["encoder"],
        "device": config["device"] + hardware_text(report["rows"]), "schedule": schedule(config, rows),
        "batch_size": config["batch_size"],
        "lr": config["lr"] if config["text_mode"] != "frozen" else config["head_lr"],
        "sd_select": config.get("sd_select") or "student",
        "sd": sd_scores, "no_sd": no_sd_scores,
        "gain": statistics.mean(sd_scores) - statistics.mean(no_sd_scores) if no_sd_scores else None,
        "epoch1_gap": epoch_one_spread(rows["text_sd"], rows["text_no_sd"]) if no_sd else None,
        "gain_interval": gain_interval(rows["text_sd"], rows["text_no_sd"]) if no_sd else None,
        "best_sd_run": max(sd_scores), "either": either if len(either) == len(sd) else [],
        "test_ceiling": highest_test_score(sd),
    }


def write(summaries: list[dict], out: Path) -> None:
    """``out``.json (the lines) and ``out``.md (the table, the paper's line, the target's status)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"target": TARGET, "reports": summaries}, indent=1) + "\n")
    lines = ["# Text branch on MELD test: every measured configuration (WA-F1, model chosen on dev)", "",
             "Generated by `python -m training.results` from the ablation reports' JSON. SD and no SD: mean ± std "
             "(seeds) of the self-distilled and the CE-only text rows. *Either*: the same SD runs, keeping at each "
             "epoch the student or the EMA teacher, whichever scores higher on dev (what `--sd_select=either` "
             "keeps; computed from the scores the runs recorded for both). *Test ceiling*: the highest test score "
             "that any recorded epoch of the SD runs reached, student or teacher; picked on test, so not a result, "
             "but the most that any other choice of epoch or of student/teacher could have reported from these "
             "runs. *Epoch-1 gap*: the largest dev WA-F1 difference between a seed's SD and no-SD runs after epoch 1, "
             "which is CE only in both: 0 where the kernels are deterministic, so that the SD gain is SD's alone; "
             "above 0, each paired difference carries that much kernel noise. [low, high] after a gain: its 95 % "
             "interval over resamples of the test dialogues, the seeds' paired predictions scored on the same "
             "resamples (reports whose runs recorded their test predictions). The lr of a frozen-backbone run is its "
             "head's.", "",
             "| report | mode | device | schedule | batch | lr | SD | no SD | SD gain | epoch-1 gap | best SD run "
             "| either | test ceiling |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        gain = f"{s['gain']:+.2f}" if s["gain"] is not None else "—"
        if s.get("gain_interval"):
            gain += f" [{s['gain_interval']['low']:+.2f}, {s['gain_interval']['high']:+.2f}]"
        kept = "" if s["sd_select"] == "student" else f" (kept: {s['sd_select']})"
        lines.append(f"| `{s['report']}` | {s['mode']} | {s['device']} | {s['schedule']} | {s['batch_size']} | "
                     f"{s['lr']:g} | {mean_std(s['sd'])}{kept} | {mean_std(s['no_sd'])} | {gain} | "
                     f"{number(s['epoch1_gap'])} | {s['best_sd_run']:.2f} | {mean_std(s['either'])} | "
                     f"{number(s['test_ceiling'])} |")
    paper_gain = PAPER["text_sd"] - PAPER["text_no_sd"]
    lines.append(f"| paper, RoBERTa-large (Table 4) | full | GPU | Table 2 | 4 | 1e-05 | {PAPER['text_sd']:.2f} | "
                 f"{PAPER['text_no_sd']:.2f} | {paper_gain:+.2f} | — | — | — | — |")
    lines += ["", target_line(summaries), "", gain_target_line(summaries)]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def number(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def target_line(summaries: list[dict]) -> str:
    """Issue #4's target: a fine-tuned (LoRA or full) text branch with SD at >= TARGET, mean of 3 seeds. While it
    is not met and no recorded epoch of a fine-tuned SD run reached it even picked on test, says so: then no
    selection from those runs can meet it, and the training itself has to change."""
    tuned = [(statistics.mean(scores), s["report"], column) for s in summaries if s["mode"] != "frozen"
             for column, scores in (("SD", s["sd"]), ("either", s["either"])) if len(scores) >= 3]
    if not tuned:
        line = f"Target (issue #4): fine-tuned text branch with SD >= {TARGET:.1f}, mean of 3 seeds: no 3-seed run yet."
    else:
        best = max(tuned)
        verdict = "met" if best[0] >= TARGET else f"not met ({TARGET - best[0]:.2f} short)"
        line = (f"Target (issue #4): fine-tuned text branch with SD >= {TARGET:.1f}, mean of 3 seeds: {verdict}; "
                f"highest 3-seed mean {best[0]:.2f} (`{best[1]}`, {best[2]}).")
        if best[0] >= TARGET:
            return line
    ceilings = [(s["test_ceiling"], s["report"]) for s in summaries
                if s["mode"] != "frozen" and s["test_ceiling"] is not None]
    if ceilings and max(ceilings)[0] < TARGET:
        top = max(ceilings)
        line += (f" No recorded epoch of a fine-tuned SD run reached {TARGET:.1f} on test, even picked on test "
                 f"(highest {top[0]:.2f}, `{top[1]}`): no choice of epoch or of student/teacher from these runs "
                 "can meet the target; the training has to change.")
    return line


def gain_target_line(summaries: list[dict]) -> str:
    """Issue #4's second target: an SD gain of at least GAIN_TARGET over no SD, fine-tuned, mean of 3 seeds. A
    gain counts as SD's where each seed's two runs are identical through the CE-only epoch 1 (epoch-1 gap 0).
    Where they already differ there, kernel noise is part of every paired difference (up to 1.95 dev WA-F1 in
    the GPU runs, more than the target), so a gain from such runs is named with its gap, not counted as met."""
    head = f"Target (issue #4): SD gain >= +{GAIN_TARGET:.1f} over no SD, fine-tuned, mean of 3 seeds: "
    tuned = [s for s in summaries if s["mode"] != "frozen" and s["gain"] is not None
             and len(s["sd"]) >= 3 and len(s["no_sd"]) >= 3]
    if not tuned:
        return head + "no 3-seed pair of rows yet."
    clean = [s for s in tuned if s["epoch1_gap"] is not None and s["epoch1_gap"] < 1e-9]
    best_clean = max(clean, key=lambda s: s["gain"], default=None)
    if best_clean is not None and best_clean["gain"] >= GAIN_TARGET:
        return head + f"met: {best_clean['gain']:+.2f} (`{best_clean['report']}`, epoch 1 identical in each pair)."
    line = head + "not met"
    if best_clean is not None:
        line += (f"; where each seed's two runs share epoch 1 exactly (the gain is SD's alone), the highest is "
                 f"{best_clean['gain']:+.2f} (`{best_clean['report']}`)")
    noisy = [s for s in tuned if s not in clean and s["gain"] >= GAIN_TARGET]
    if noisy:
        top = max(noisy, key=lambda s: s["gain"])
        gap = (f"epoch 1, CE only in both, differed by up to {top['epoch1_gap']:.2f} dev WA-F1"
               if top["epoch1_gap"] is not None else "no epoch-1 scores recorded")
        line += (f". Higher gains come only from pairs not shown to share epoch 1: {top['gain']:+.2f} "
                 f"(`{top['report']}`, {gap})")
    elif best_clean is None:
        top = max(tuned, key=lambda s: s["gain"])
        line += f"; highest {top['gain']:+.2f} (`{top['report']}`)"
    return line + "."


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.results", description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="+", help="ablation report JSON files (python -m training.ablate)")
    ap.add_argument("--out", default="reports/text_branch", help="writes OUT.md and OUT.json")
    args = ap.parse_args(argv)
    try:
        summaries = [s for path in sorted(set(args.reports)) if (s := summary(Path(path))) is not None]
    except FileNotFoundError as e:
        ap.error(f"no such report: {e.filename}")
    except ValueError as e:  # read_report: JSON that is not python -m training.ablate's, naming the file
        ap.error(str(e))
    except (KeyError, TypeError) as e:  # a report of that shape with a row that lacks a field
        ap.error(f"an incomplete ablation report ({type(e).__name__}: {e}); pass the .json that training.ablate "
                 "writes")
    if not summaries:
        print("no report with a self-distilled text row", file=sys.stderr)
        return 2
    write(summaries, Path(args.out))
    print(Path(args.out).with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
