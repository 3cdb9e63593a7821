"""A study's sessions as a corpus, end to end on real weights: MELD test dialogues replayed through the emotion node
as sessions, made a corpus (``python -m ddvlm_ros.corpus``), scored by the evaluator and calibrated on it.

    python bench/study_corpus.py [--sessions 3] [--dialogues 10] [--model-dir checkpoints/default]

Each session is a bag of ``--dialogues`` MELD test dialogues (``ddvlm_ros.bag``) replayed with ``--answers``; the
first sessions train, the second last is dev and the last test. Two checks of the corpus, each on every utterance:

- *the same prompts*: ``training.evaluate --corpus`` builds its prompts from the corpus's CSV files, the node
  built them from the bag's transcripts as they came: the bench counts the utterances where the two answer
  alike (all of them, if training sees what the robot sees) and gives both WA-F1;
- *calibration on the sessions*: ``training.calibrate --corpus`` on a copy of the checkpoint: its temperature
  refitted on the corpus's dev against the one it ships with, NLL and ECE on dev and test at each.

Writes study_corpus.md and .json to reports/ (or ``--report-dir``); the bags, answers and corpus go to a temporary
folder (``--work-dir`` keeps them), called WORK in the report.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.shared import refuse_non_checkpoint, write_report  # noqa: E402


def replay_sessions(work: Path, model_dir: str, sessions: int, per_session: int, speed: float) -> list[Path]:
    """One answers file per session (S01, S02, ...), each a bag of ``per_session`` MELD test dialogues replayed."""
    from ddvlm_ros.bag import write_meld_bag
    from ddvlm_ros.replay import main as replay

    answers = []
    for s in range(sessions):
        name = f"S{s + 1:02d}"
        bag = write_meld_bag(work / name, "test", list(range(s * per_session, (s + 1) * per_session)))
        answers.append(work / "answers" / f"{name}.jsonl")
        if replay([str(bag), "--model-dir", model_dir, "--speed", str(speed), "--param", "input_timeout_s:=0.0",
                   "--answers", str(answers[-1])]) != 0:
            raise RuntimeError(f"the replay of {bag} failed")
    return answers


def same_prompts(answers: dict[str, list[Path]], scored: dict) -> dict:
    """Per split (its sessions' answers files, in the corpus's order): utterances, how many the evaluator answered
    as the node did, and both WA-F1."""
    from ddvlm_core.labels import LABELS, label_id
    from ddvlm_core.metrics import metrics

    out = {}
    for split, paths in answers.items():
        records = [r for path in paths for line in path.read_text(encoding="utf-8").splitlines()
                   if (r := json.loads(line)).get("gold") and not r.get("context_only")]
        node = [LABELS.index(r["prediction"]) for r in records]
        evaluator = scored["splits"][split]["predictions"]
        out[split] = {"n": len(node), "alike": sum(a == b for a, b in zip(node, evaluator)),
                      "node_wa_f1": metrics([label_id(r["gold"]) for r in records], node)["wa_f1"],
                      "evaluator_wa_f1": scored["splits"][split]["wa_f1"]}
    return out


def report_markdown(data: dict) -> str:
    lines = ["# A study's sessions as a corpus (real weights)", "",
             f"`python bench/study_corpus.py --sessions {data['sessions']} --dialogues {data['dialogues']}`; "
             f"checkpoint `{data['model_dir']}`; each session {data['dialogues']} MELD test dialogues replayed through "
             "the emotion node (`--answers`), then `python -m ddvlm_ros.corpus` (dev: the second last session, test: "
             "the last).", "", "## The same prompts: the evaluator on the corpus against the node on the bags", "",
             "| split | utterances | answered alike | WA-F1 node | WA-F1 evaluator |", "|---|---|---|---|---|"]
    for split, row in data["same_prompts"].items():
        lines.append(f"| {split} | {row['n']} | {row['alike']} | {row['node_wa_f1']:.2f} | "
                     f"{row['evaluator_wa_f1']:.2f} |")
    text = data["calibration"]["branches"]["text"]
    lines += ["", "## Calibration on the sessions' dev (`training.calibrate --corpus`)", "",
              "| split | n | T | NLL | ECE (%) |", "|---|---|---|---|---|"]
    for split, scores in text["splits"].items():
        for kind in ("text_temperature", "calibrated"):
            if kind in scores:
                m = scores[kind]
                name = "shipped" if kind == "text_temperature" else "refitted"
                lines.append(f"| {split} | {scores['n']} | {m['temperature']:.3f} ({name}) | {m['nll']:.4f} | "
                             f"{m['ece']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python bench/study_corpus.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=3, help="sessions (>= 3: train, dev, test)")
    ap.add_argument("--dialogues", type=int, default=10, help="MELD test dialogues per session")
    ap.add_argument("--model-dir", default="checkpoints/default", help="checkpoint to replay with")
    ap.add_argument("--speed", type=float, default=8.0, help="bag time divided by this")
    ap.add_argument("--work-dir", default="", help="keep the bags, answers and corpus here (default: a temporary "
                    "folder)")
    ap.add_argument("--report-dir", default="reports", help="where study_corpus.md and .json go")
    args = ap.parse_args(argv)
    if args.sessions < 3 or args.dialogues < 1:
        ap.error("--sessions must be >= 3 (train, dev, test) and --dialogues >= 1")
    refuse_non_checkpoint(ap, args.model_dir)
    from transformers.utils import logging

    from ddvlm_ros.corpus import write_corpus
    from training.calibrate import calibrate
    from training.evaluate import evaluate_checkpoint

    logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(args.work_dir or temporary)
        answers = replay_sessions(work, args.model_dir, args.sessions, args.dialogues, args.speed)
        dev, test = answers[-2].stem, answers[-1].stem
        counts = write_corpus(answers, work / "corpus", dev={dev}, test={test})
        scored = evaluate_checkpoint(args.model_dir, ("train", "dev", "test"), corpus=work / "corpus")
        alike = same_prompts({"train": answers[:-2], "dev": [answers[-2]], "test": [answers[-1]]}, scored)
        copy = shutil.copytree(args.model_dir, work / "calibrated", dirs_exist_ok=True)
        calibration = calibrate(copy, corpus=work / "corpus")
        calibration = json.loads(json.dumps(calibration).replace(str(work), "WORK"))  # no temporary paths in reports
    data = {"sessions": args.sessions, "dialogues": args.dialogues, "model_dir": str(Path(args.model_dir)),
            "corpus": counts, "same_prompts": alike, "calibration": calibration}
    write_report(args.report_dir, "study_corpus", data, report_markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
