"""How well the node tells the robot's own speech coming back from the ASR (``ddvlm_core.self_echo``), on MELD.

    python bench/self_echo.py [--seed 0] [--report-dir reports]

Two measurements of the node's rule (``robot_echo``: the share of a transcript's words that a robot turn among
the ECHO_LOOKBACK before it matches, in order), at the shipped threshold ECHO_MIN_SHARE and at others beside it:

- *people repeating*: every MELD utterance of ECHO_MIN_WORDS+ words, with the other speakers of the turns before
  it taken for the robot: the share the rule would flag although a person said it ("I got it." after "I got it.");
- *echoes told*: every MELD test line of ECHO_MIN_WORDS+ words taken as the robot's, heard back through a seeded
  ASR (``asr_noise``: lower case without punctuation, then word errors at each WER), whole or a part of it (a
  contiguous half or more: the ASR caught only some of it), one person's turn in between for half of them.

No model runs. Writes self_echo.md and .json to reports/ (or ``--report-dir``).
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.shared import write_report  # noqa: E402

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
WERS = (0.0, 0.1, 0.2, 0.3)


def people_repeating(split: str) -> list[float]:
    """robot_echo's share for every utterance of ECHO_MIN_WORDS+ words of ``split``, the other speakers the robot."""
    from ddvlm_core.context import make_turns
    from ddvlm_core.meld import dialogues
    from ddvlm_core.self_echo import ECHO_LOOKBACK, ECHO_MIN_WORDS, echo_words, robot_echo

    shares = []
    for rows in dialogues(split).values():
        turns = make_turns([(r.speaker, r.text) for r in rows])
        for k, turn in enumerate(turns):
            if len(echo_words(turn.text)) >= ECHO_MIN_WORDS:
                recent = turns[max(0, k - ECHO_LOOKBACK):k + 1]
                shares.append(robot_echo(recent, lambda speaker, me=turn.speaker: speaker != me)[0])
    return shares


def echoes(wer: float, part: bool, rng: random.Random) -> list[float]:
    """robot_echo's share for each MELD test line of ECHO_MIN_WORDS+ words said by the robot and heard back."""
    from ddvlm_core.asr_noise import corrupt, unpunctuate
    from ddvlm_core.context import make_turns
    from ddvlm_core.meld import dialogues
    from ddvlm_core.self_echo import ECHO_MIN_WORDS, robot_echo

    shares = []
    for rows in dialogues("test").values():
        for row in rows:
            words = unpunctuate(row.text).split()
            if len(words) < ECHO_MIN_WORDS:
                continue
            if part:
                n = rng.randint(max(ECHO_MIN_WORDS, len(words) // 2), len(words))
                start = rng.randint(0, len(words) - n)
                words = words[start:start + n]
            heard = corrupt(" ".join(words), wer, rng)
            between = [("ann", "Okay.")] if rng.random() < 0.5 else []
            turns = make_turns([("robot", row.text), *between, ("unknown", heard)])
            shares.append(robot_echo(turns, lambda speaker: speaker == "robot")[0])
    return shares


def rates(shares: list[float]) -> dict:
    """{"n": how many, "<threshold>": % of them at or above it} for each of THRESHOLDS."""
    return {"n": len(shares), **{f"{t:.1f}": 100.0 * sum(s >= t for s in shares) / len(shares) for t in THRESHOLDS}}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0, help="seed of the simulated ASR")
    ap.add_argument("--report-dir", default=str(REPO / "reports"), help="where the reports go")
    args = ap.parse_args(argv)
    from ddvlm_core.self_echo import ECHO_LOOKBACK, ECHO_MIN_SHARE, ECHO_MIN_WORDS

    rng = random.Random(args.seed)
    result = {"seed": args.seed, "min_share": ECHO_MIN_SHARE, "min_words": ECHO_MIN_WORDS, "lookback": ECHO_LOOKBACK,
              "people_repeating": {split: rates(people_repeating(split)) for split in ("train", "dev", "test")},
              "echoes": [{"wer": wer, "part": part, **rates(echoes(wer, part, rng))}
                         for wer in WERS for part in (False, True)]}
    write_report(args.report_dir, "self_echo", result, report(result))
    return 0


def report(result: dict) -> str:
    shipped = f"{result['min_share']:.1f}"
    head = " | ".join(f"**{t}** (shipped)" if t == shipped else t for t in (f"{t:.1f}" for t in THRESHOLDS))

    def cells(row: dict) -> str:
        return " | ".join(f"{row[f'{t:.1f}']:.2f} %" for t in THRESHOLDS)

    lines = ["# Transcripts of the robot's own speech: what the node's rule tells", "",
             f"`python bench/self_echo.py --seed {result['seed']}` (no model runs). The rule "
             "(`ddvlm_core.self_echo`): a transcript of "
             f"{result['min_words']}+ words is an echo when a share of its words at least (the threshold; shipped: "
             f"{result['min_share']}) is matched, in order, by one of the robot's turns among the "
             f"{result['lookback']} before it (case and punctuation aside).", "",
             "## People repeating", "",
             "Every MELD utterance of 3+ words, the other speakers of the turns before it taken for the robot: the "
             "share the rule would flag although a person said it.", "",
             f"| split | utterances | {head} |", "|---|---|" + "---|" * len(THRESHOLDS)]
    lines += [f"| {split} | {row['n']} | {cells(row)} |" for split, row in result["people_repeating"].items()]
    lines += ["", "## Echoes told", "",
              "Every MELD test line of 3+ words taken as the robot's and heard back through a seeded ASR (lower case, "
              "no punctuation, word errors at the WER; *part*: a contiguous half or more of the line), one person's "
              "turn in between for half of them: the share the rule tells.", "",
              f"| WER | heard | lines | {head} |", "|---|---|---|" + "---|" * len(THRESHOLDS)]
    lines += [f"| {100 * e['wer']:.0f} % | {'part' if e['part'] else 'whole'} | {e['n']} | {cells(e)} |"
              for e in result["echoes"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
