"""Score a study: the replays of its sessions pooled, with an interval that resamples whole sessions.

    python -m ddvlm_ros.study answers/*.jsonl [--report reports/study.md] [--title TITLE]
    python -m ddvlm_ros.study quantized/*.jsonl --versus answers/*.jsonl   # one condition against another

A study records a bag per session (a participant, a condition), and its annotators label each. Each bag is
replayed with ``--answers`` (``python -m ddvlm_ros.replay S01 --labels S01.csv --answers answers/S01.jsonl``): one
JSON line per utterance with its gold label and the node's answers. This pools those files: WA-F1, macro F1,
accuracy, per-class F1 and the confusion matrix over every labelled, answered utterance, and a row per session.
The WA-F1 interval (``ddvlm_core.metrics.bootstrap_wa_f1``) draws whole sessions with replacement, as a
session's utterances share a participant, a room and a robot behaviour and are not independent; with fewer than
``MIN_CLUSTERS`` sessions it draws whole conversations (a MELD bag's dialogues), with fewer of those utterances, and
the report says which. Each utterance is scored by the answer the
replay scored (``prediction``: its latest; answers files written before it: the revised, else the refined, else
the text answer), and the study says what acting only on confident answers keeps and how often those are right
(``ddvlm_core.calibration.coverage_of``).

With ``--versus``, the same sessions replayed in another condition (another checkpoint, ``--param quantized:=true``,
another ASR): each session's utterances are paired by key, and the report gives WA-F1 of this condition minus that
one on the utterances both scored, with a paired interval over sessions (``bootstrap_wa_f1_difference``).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ddvlm_core.calibration import coverage_of, coverage_table
from ddvlm_core.labels import LABELS, label_id
from ddvlm_core.metrics import (MIN_CLUSTERS, bootstrap_wa_f1, bootstrap_wa_f1_difference, class_f1_lines,
                                confusion_lines, confusion_png, flag_lines, interval_words, metrics, per_flag)


class StudyError(ValueError):
    """An answers file that cannot be read, with the file, the line and the reason."""


@dataclass
class Session:
    name: str  # the answers file's name without .jsonl
    scored: dict[str, tuple[int, int]]  # key -> (gold, predicted) label ids of the labelled, answered utterances
    confidence: dict[str, float] = field(default_factory=dict)  # key -> the scored answer's confidence, when known
    flags: dict[str, list[str]] = field(default_factory=dict)  # key -> the flags of its latest answer
    unlabelled: int = 0  # answered utterances without a gold label
    unanswered: int = 0  # labelled utterances the node did not answer

    @property
    def gold(self) -> list[int]:
        return [g for g, _ in self.scored.values()]

    @property
    def predicted(self) -> list[int]:
        return [p for _, p in self.scored.values()]


def latest_answer(record: dict) -> dict | None:
    """An utterance's latest answer in a replay's answers file: revised, else refined, else text (None: none)."""
    return record.get("revised") or record.get("refined") or record.get("text")


def scored_answer(record: dict) -> tuple[str | None, float | None]:
    """(the label the replay scored an utterance by, its confidence): its ``prediction`` and ``confidence``, else
    its latest answer's; (None, None) when it was not answered."""
    if "prediction" in record:
        return record["prediction"], record.get("confidence")
    answer = latest_answer(record)
    return (answer["top_label"], answer.get("confidence")) if answer else (None, None)


def read_session(path: str | Path) -> Session:
    """One replay's ``--answers`` file; StudyError naming the line of a record that cannot be read."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise StudyError(f"{path}: cannot be read ({e})") from None
    session = Session(path.name.removesuffix(".jsonl"), {})
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            (key, gold), (answer, confidence) = (record["key"], record["gold"]), scored_answer(record)
            if gold is not None and answer is not None:
                session.scored[key] = (label_id(gold), LABELS.index(answer))
                if confidence is not None:
                    session.confidence[key] = float(confidence)
                session.flags[key] = list((latest_answer(record) or {}).get("flags", []))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise StudyError(f"{path}, line {number}: not a replay answer record ({type(e).__name__}: {e})") from None
        session.unlabelled += gold is None and answer is not None
        session.unanswered += gold is not None and answer is None
    return session


def groups_of(keyed: list[tuple[str, str]]) -> tuple[list[str], str]:
    """(the group of each (session, utterance key), what the groups are): sessions when there are MIN_CLUSTERS of
    them, else the sessions' conversations (the key up to its last '/')."""
    if len({session for session, _ in keyed}) >= MIN_CLUSTERS:
        return [session for session, _ in keyed], "sessions"
    return [f"{session}/{key.rpartition('/')[0]}" for session, key in keyed], "conversations"


def session_row(session: Session) -> dict:
    """A session's line: its scored utterances, WA-F1 and accuracy, and what was left out."""
    scores = metrics(session.gold, session.predicted) if session.gold else {"n": 0}
    return {k: scores[k] for k in ("n", "wa_f1", "accuracy") if k in scores} | {
        "unlabelled": session.unlabelled, "unanswered": session.unanswered}


def score_study(sessions: list[Session]) -> dict:
    """Pooled metrics of the sessions' scored utterances with the WA-F1 interval over sessions (or their
    conversations: ``groups_of``), the confidence thresholds when every answer has a confidence, and each
    session's line."""
    gold = [g for s in sessions for g in s.gold]
    if not gold:
        raise StudyError("no session has an utterance both labelled and answered: nothing to score")
    predicted = [p for s in sessions for p in s.predicted]
    groups, grouped_by = groups_of([(s.name, key) for s in sessions for key in s.scored])
    rows = {s.name: session_row(s) for s in sessions}
    interval = bootstrap_wa_f1(gold, predicted, groups) | {"groups": grouped_by}
    confident = [(s.confidence[k], g == p) for s in sessions for k, (g, p) in s.scored.items() if k in s.confidence]
    flags = [s.flags.get(k, []) for s in sessions for k in s.scored]
    return {**metrics(gold, predicted), "wa_f1_interval": interval,
            **({"coverage": coverage_of(*zip(*confident))} if len(confident) == len(gold) else {}),
            "per_flag": per_flag(flags, gold, predicted),
            "sessions": len(sessions), "unlabelled": sum(s.unlabelled for s in sessions),
            "unanswered": sum(s.unanswered for s in sessions), "per_session": rows}


def compare_sessions(sessions: list[Session], baseline: list[Session]) -> dict:
    """WA-F1 of ``sessions`` minus that of ``baseline`` (the same sessions in another condition) on the utterances
    both scored, paired by session name and utterance key, with the paired interval over sessions."""
    by_name = {s.name: s for s in baseline}
    unpaired = sorted(set(by_name) ^ {s.name for s in sessions})
    if unpaired:
        raise StudyError(f"--versus must name the same sessions: {unpaired} not in both")
    paired = [((s.name, key), g, p, by_name[s.name].scored[key][1])  # ((session, key), gold, here, there)
              for s in sessions for key, (g, p) in s.scored.items() if key in by_name[s.name].scored]
    keyed, gold, here, there = (list(column) for column in zip(*paired)) if paired else ([], [], [], [])
    if not gold:
        raise StudyError("no utterance was scored in both conditions: nothing to compare")
    groups, grouped_by = groups_of(keyed)
    return {"n": len(gold), "wa_f1": metrics(gold, here)["wa_f1"], "versus_wa_f1": metrics(gold, there)["wa_f1"],
            "difference_interval": bootstrap_wa_f1_difference(gold, there, here, groups) | {"groups": grouped_by}}


def report_markdown(title: str, score: dict, confusion_image: str = "") -> str:
    interval = score["wa_f1_interval"]
    lines = [f"# {title}", "", "`python -m ddvlm_ros.study`: the replays' answers files of "
             f"{score['sessions']} sessions pooled.", "",
             f"- utterances scored: {score['n']} (answered and labelled; {score['unlabelled']} answered without a "
             f"label and {score['unanswered']} labelled without an answer are left out)",
             f"- WA-F1 **{score['wa_f1']:.2f}** ({interval_words(interval, interval['groups'])}), macro F1 "
             f"{score['macro_f1']:.2f}, accuracy {score['accuracy']:.2f}", "", *class_f1_lines(score["per_class_f1"])]
    if "coverage" in score:
        lines += ["", *coverage_table(score["coverage"])]
    if score.get("per_flag"):
        lines += ["", *flag_lines(score["per_flag"])]
    lines += ["", "| session | utterances | WA-F1 | accuracy | unlabelled | unanswered |", "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {r['n']} | " + (f"{r['wa_f1']:.2f} | {r['accuracy']:.2f}" if r["n"] else "- | -")
              + f" | {r['unlabelled']} | {r['unanswered']} |" for name, r in score["per_session"].items()]
    lines += ["", *confusion_lines(score["confusion"], confusion_image)]
    if "versus" in score:
        v = score["versus"]
        d = v["difference_interval"]
        lines += ["", f"## Against {v['answers']}", "",
                  f"On the {v['n']} utterances scored in both: WA-F1 {v['wa_f1']:.2f} here, {v['versus_wa_f1']:.2f} "
                  f"there, a difference of **{d['difference']:+.2f}** (paired {interval_words(d, d['groups'])}; "
                  f"{100 * d['share_above_0']:.1f} % of the resampled differences above 0)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ddvlm_ros.study", description=__doc__.split("\n\n")[0],
                                 epilog="Each ANSWERS file: python -m ddvlm_ros.replay BAG --labels ... --answers FILE")
    ap.add_argument("answers", nargs="+", help="one replay --answers file (JSONL) per session")
    ap.add_argument("--report", help="write Markdown here, JSON and the confusion matrix PNG next to it")
    ap.add_argument("--title", default="A study's sessions replayed through the emotion node",
                    help="heading of the --report")
    ap.add_argument("--versus", nargs="+", metavar="ANSWERS",
                    help="the same sessions' answers files in another condition: WA-F1 here minus there, paired")
    args = ap.parse_args(argv)
    for files in (args.answers, args.versus or []):
        names = [Path(a).name.removesuffix(".jsonl") for a in files]
        if len(set(names)) < len(names):
            ap.error(f"two answers files name the same session: {sorted(n for n in set(names) if names.count(n) > 1)}")
    try:
        sessions = [read_session(a) for a in args.answers]
        score = score_study(sessions)
        if args.versus:
            score["versus"] = {"answers": " ".join(args.versus),
                               **compare_sessions(sessions, [read_session(a) for a in args.versus])}
    except StudyError as e:
        ap.error(str(e))
    image = ""
    if args.report:
        report = Path(args.report)
        image = confusion_png(score["confusion"], report.with_suffix(".confusion.png"), args.title).name
        report.with_suffix(".json").write_text(json.dumps({"answers": args.answers, "score": score}, indent=1) + "\n")
    markdown = report_markdown(args.title, score, image)
    if args.report:
        Path(args.report).write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
