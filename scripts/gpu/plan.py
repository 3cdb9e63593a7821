"""Choose what the one GPU training call runs, from a short probe run of the same jobs on random weights.

    python scripts/gpu/plan.py PROBE_ABLATION_JSON --budget SECONDS   -> shell variables on stdout

The probe (scripts/gpu/probe.sh) runs the 6 jobs of the SD-gain experiment at once on a slice of MELD;
its per-epoch train and eval seconds, scaled to the full splits, give the time of a 10-epoch run. The
richest plan that fits the budget wins: 6 runs (SD / no SD x 3 seeds) plus the no-speaker-tokens row,
then 6, then 4 (2 seeds); when 10 epochs do not fit, a schedule of as many epochs as fit (it then runs to its
end, the learning rate decayed to 0), for 3 seeds if that is at least 5 epochs, else for seed 0 alone (2
runs). Each run also gets a time budget
so that a wrong estimate ends runs before an epoch that would overrun it rather than killing them.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for ddvlm_core

FULL = {"train_steps_bs16": math.ceil(9989 / 16), "eval_utterances": 1109 + 2610}


def eval_utterances(limit_dialogues: int) -> int:
    """dev + test utterances evaluated each epoch by a run limited to the first N dialogues per split."""
    from ddvlm_core.meld import dialogues

    total = 0
    for split in ("dev", "test"):
        dias = dialogues(split)
        total += sum(len(dias[d]) for d in sorted(dias)[: limit_dialogues or None])
    return total


def epoch_seconds(probe: dict) -> tuple[float, float, int]:
    """(seconds per full epoch with SD, start-up seconds, how many runs shared the GPU in the probe)."""
    runs = [r for e in probe["rows"] for r in e.get("runs", [])]
    if not runs:
        raise ValueError("probe has no finished run")
    worst = 0.0
    startup = 0.0
    for r in runs:
        last = r["text_history"][-1]  # epoch 2: the teacher runs too
        eval_n = probe["eval_utterances"]
        full = (last["train_seconds"] * FULL["train_steps_bs16"] / last["train_steps"]
                + last["eval_seconds"] * FULL["eval_utterances"] / eval_n)
        worst = max(worst, full)
        spent = sum(h["train_seconds"] + h["eval_seconds"] for h in r["text_history"])
        startup = max(startup, r["seconds"] - spent)
    return worst, startup, len(runs)


def deadline_min(budget: float, startup: float, margin: float = 40.0) -> float:
    """The runs' time budget: the training loop starts no epoch that would end past it, and ``margin`` seconds
    are left for the final test predictions and collect.py before train.sh's deadline kill."""
    return round(max(0.5, (budget - startup - margin) / 60), 2)


def choose(t_epoch: float, startup: float, probed: int, budget: float, epochs: int = 10, min_epochs: int = 5) -> dict:
    options = [  # (runs at once, rows, seeds, extra no-speaker run)
        (probed + 1, "text_sd,text_no_sd", "0,1,2", True),
        (probed, "text_sd,text_no_sd", "0,1,2", False),
        (4, "text_sd,text_no_sd", "0,1", False),
    ]
    for k, rows, seeds, extra in options:
        # measured 2026-11-26 (H100, 2 CPUs visible): 2 runs at once were NOT 3x faster each than 6 at once
        # (8.2 vs 6.6 steps/s with SD), so fewer runs are assumed no faster; more scale linearly
        need = startup + epochs * t_epoch * max(1.0, k / probed)
        if need <= 0.9 * budget:
            return {"PARALLEL": 6 if extra else k, "ROWS": rows, "SEEDS": seeds, "EPOCHS": epochs, "EXTRA": int(extra),
                    "ESTIMATE_S": round(need), "TIME_BUDGET_MIN": deadline_min(budget, startup)}
    # the 10 epochs do not fit: a shorter schedule that the runs finish (a run its time budget stops keeps a
    # learning rate still far from 0), 3 seeds while they get at least ``min_epochs``, else seed 0 alone
    fit = max(1, min(epochs, int((0.9 * budget - startup) / t_epoch)))  # 2 or 6 at once: about as long an epoch
    parallel, seeds = (probed, "0,1,2") if fit >= min_epochs else (2, "0")
    return {"PARALLEL": parallel, "ROWS": "text_sd,text_no_sd", "SEEDS": seeds, "EPOCHS": fit, "EXTRA": 0,
            "ESTIMATE_S": round(startup + fit * t_epoch),
            "TIME_BUDGET_MIN": deadline_min(budget, startup)}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("probe", help="the probe run's ablation JSON (scripts/gpu/probe.sh)")
    ap.add_argument("--budget", type=float, required=True, help="seconds the training call may take")
    args = ap.parse_args(argv)
    try:
        probe = json.load(open(args.probe))
        probe["eval_utterances"] = eval_utterances(probe["config"]["limit_dialogues"])
        t_epoch, startup, probed = epoch_seconds(probe)
        plan = choose(t_epoch, startup, probed, args.budget)
        plan["EPOCH_S_PROBED"] = round(t_epoch, 1)
    except (OSError, ValueError, KeyError) as exc:  # no probe: the safe plan
        plan = {"PARALLEL": 2, "ROWS": "text_sd,text_no_sd", "SEEDS": "0", "EPOCHS": 10, "EXTRA": 0,
                "ESTIMATE_S": -1, "TIME_BUDGET_MIN": round(max(0.5, (args.budget - 90) / 60), 2),
                "NO_PROBE": repr(exc)[:80]}
    for k, v in plan.items():
        print(f"{k}={json.dumps(v) if isinstance(v, str) else v}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
