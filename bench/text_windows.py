"""The camera window of a transcript without stamps (``ddvlm_core.speech_timing``), on MELD.

    python bench/text_windows.py [--report-dir reports]

A ``std_msgs/String`` transcript says only when it came. The node reads its caption's frames from the window it
estimates the words were said in: their duration from the word count, ended the ASR's delay before the transcript
came (``text_window_s``, ``text_asr_endpoint_s``, ``text_asr_rtf``).

1. *Speaking rate*: the least-squares line of MELD train's utterance durations (EndTime - StartTime; those of 0 to
   30 s) on their word counts, which must equal ``speech_timing.BASE_S`` and ``PER_WORD_S``.
2. *Windows*: MELD test's dialogues at their own times, heard by one ASR (one transcript topic) that sends each
   transcript ``ENDPOINT_S`` after the utterance ends plus the utterance's duration times its real-time factor
   (RTF), one utterance after the other (``bench/late_transcripts.py``'s ASR). Per RTF and window rule, the mean
   over utterances of: the share of the utterance's speech inside its window, the share of the window on it, and
   the share of the window on the other speakers' speech (someone else's face talking, or the person listening).
   whisper_ros' Transcription (``WHISPER_RULE``) says how long the audio its voice activity detector sent lasted
   and how long transcribing it took: placed by ``AsrTiming.transcribed``, not estimated. A voice activity
   detector (``VAD_RULES``: one that hears everyone, on ``voice_activity_topic``, or one per voice, ROS4HRI's
   is_speaking) goes on when an utterance starts and off ``VAD_HANGOVER_S`` after it ends; the node places a
   transcript on the VAD's speech with ``VoiceActivity.heard``, picked by the node's estimate, with its default
   RTF or with ``text_asr_rtf`` set to the ASR's (which it falls back to when the VAD heard nothing fresh: how
   often is in the report).

Writes text_windows.md and .json to reports/ (or ``--report-dir``). No model, seconds.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.late_transcripts import ENDPOINT_S, RTFS  # noqa: E402  the same ASR model
from bench.shared import write_report  # noqa: E402
from ddvlm_core.speech_timing import AsrTiming  # noqa: E402
from ddvlm_core.voice_activity import VoiceActivity, longest_s  # noqa: E402
from ddvlm_ros.time_labels import overlap  # noqa: E402  seconds two spans share

DEFAULT = AsrTiming()  # the node's: text_window_s, text_asr_endpoint_s and text_asr_rtf's defaults (tested)

MAX_DURATION_S = 30.0  # longer MELD times are clips cut wrong (a few test ones run for minutes)
DEFAULT_RULE = f"the node's default: its words' duration, {DEFAULT.endpoint_s:g} s + RTF {DEFAULT.rtf:g} before it came"
RULES = {  # name -> AsrTiming arguments (length_s, endpoint_s, rtf); None: the ASR's own RTF
    "before: the 4 s before it came (text_window_s 4, no delay)": (4.0, 0.0, 0.0),
    "its words' duration, no delay": (0.0, 0.0, 0.0),
    DEFAULT_RULE: (DEFAULT.length_s, DEFAULT.endpoint_s, DEFAULT.rtf),
    f"its words' duration, {DEFAULT.endpoint_s:g} s + the ASR's own RTF (text_asr_rtf set to it)":
        (DEFAULT.length_s, DEFAULT.endpoint_s, None),
}
WHISPER_RULE = "whisper_ros' Transcription: from its audio_time and transcription_time"
VAD_RULES = {  # name -> (one VAD per voice, text_asr_rtf set to the ASR's own)
    "a VAD that hears everyone (voice_activity_topic), picked by the node's default": (False, False),
    "each voice's own VAD (ROS4HRI is_speaking), picked by the node's default": (True, False),
    "a VAD that hears everyone, picked with text_asr_rtf set": (False, True),
    "each voice's own VAD, picked with text_asr_rtf set": (True, True),
}
VAD_HANGOVER_S = 0.1  # a VAD goes off this long after the speech (silero-vad's min_silence_duration_ms: 100)
WHISPER_PAD_S = 1.0 + 0.032  # whisper_ros pads audio shorter than 1 s with silence, to 1 s and a 32 ms chunk


def whisper_transcription(start: float, end: float, rtf: float) -> tuple[float, float]:
    """(audio_time, transcription_time) of whisper_ros' Transcription of an utterance said over [start, end]: its
    voice activity detector sends the audio from the words' start until ENDPOINT_S of silence after them (padded to
    WHISPER_PAD_S), and transcribing takes the ASR's decoding time (``arrivals``)."""
    return max(end + ENDPOINT_S - start, WHISPER_PAD_S), rtf * (end - start)


def timed(split: str) -> dict[int, list[tuple[float, float, str, str]]]:
    """dialogue id -> its utterances as (start, end, speaker, text), those lasting 0 to MAX_DURATION_S."""
    from ddvlm_core.meld import dialogues, parse_time

    out = {}
    for d, rows in dialogues(split).items():
        spans = [(parse_time(r.start), parse_time(r.end), r.speaker, r.text) for r in rows]
        out[d] = [s for s in spans if 0.0 < s[1] - s[0] <= MAX_DURATION_S]
    return out


def speaking_rate(split: str = "train") -> dict:
    from ddvlm_core import speech_timing
    from ddvlm_core.speech_timing import fit_speaking_rate, words

    said = [u for rows in timed(split).values() for u in rows]
    base, per_word = fit_speaking_rate([e - s for s, e, _, _ in said], [words(t) for _, _, _, t in said])
    base, per_word = round(base, 2), round(per_word, 3)
    return {"split": split, "utterances": len(said), "base_s": base, "per_word_s": per_word,
            "words_per_s": round(1.0 / per_word, 2),
            "in_speech_timing": [speech_timing.BASE_S, speech_timing.PER_WORD_S] == [base, round(per_word, 2)]}


def arrivals(rows, rtf: float) -> list[float]:
    """When each utterance's transcript comes from one ASR at real-time factor ``rtf``."""
    busy, out = float("-inf"), []
    for start, end, _, _ in rows:
        busy = max(end + ENDPOINT_S, busy) + rtf * (end - start)
        out.append(busy)
    return out


def covered(window: tuple[float, float], spans: list[tuple[float, float]]) -> float:
    """Seconds of ``window`` inside the union of ``spans``."""
    total, reach = 0.0, window[0]
    for start, end in sorted(spans):
        start, end = max(start, reach), min(end, window[1])
        if end > start:
            total += end - start
            reach = end
    return total


def vad_changes(spans: list[tuple[float, float]]) -> list[tuple[float, bool]]:
    """(time, speaking) of a VAD that hears ``spans`` of speech (overlapping ones are one stretch of speech to it),
    in time order."""
    stretches: list[list[float]] = []
    for start, end in sorted(spans):
        if stretches and start <= stretches[-1][1]:
            stretches[-1][1] = max(stretches[-1][1], end + VAD_HANGOVER_S)
        else:
            stretches.append([start, end + VAD_HANGOVER_S])
    return [(t, on) for start, end in stretches for t, on in ((start, True), (end, False))]


def vad_windows(rows, arrived: list[float], per_voice: bool, timing: AsrTiming = DEFAULT
                ) -> tuple[list[tuple[float, float]], int]:
    """The windows the node gives a dialogue's transcripts (``arrived``) with a VAD (``per_voice``: one per
    speaker), and how many of them the VAD placed (the others: the estimate by ``timing``, the node's)."""
    heard_by = {who: who if per_voice else "" for _, _, who, _ in rows}
    vads = {key: (VoiceActivity(), vad_changes([(s, e) for s, e, who, _ in rows if heard_by[who] == key]))
            for key in set(heard_by.values())}
    windows, placed = [], 0
    for (_, _, who, text), came in zip(rows, arrived):
        activity, changes = vads[heard_by[who]]
        while changes and changes[0][0] <= came:
            t, on = changes.pop(0)
            activity.hear(on, t)
        estimate = timing.said(text, came)
        window = activity.heard(came, timing.endpoint_s, estimate, longest_s(text))
        placed += window is not None
        windows.append(window or estimate)
    return windows, placed


def window_rows(split: str = "test") -> dict:
    dialogues = timed(split)
    out = {"utterances": sum(len(rows) for rows in dialogues.values()), "rtf": {}}
    for rtf in RTFS:
        out["rtf"][str(rtf)] = rules = {}
        for name, (length_s, endpoint_s, rule_rtf) in [*RULES.items(), (WHISPER_RULE, (0.0, ENDPOINT_S, 0.0))]:
            timing = AsrTiming(length_s, endpoint_s, rtf if rule_rtf is None else rule_rtf)
            windows = [[timing.transcribed(*whisper_transcription(start, end, rtf), came) if name == WHISPER_RULE
                        else timing.said(text, came) for (start, end, _, text), came in zip(rows, arrivals(rows, rtf))]
                       for rows in dialogues.values()]
            rules[name] = shares(dialogues, windows)
        for name, (per_voice, own_rtf) in VAD_RULES.items():
            timing = AsrTiming(DEFAULT.length_s, DEFAULT.endpoint_s, rtf) if own_rtf else DEFAULT
            placed = [vad_windows(rows, arrivals(rows, rtf), per_voice, timing) for rows in dialogues.values()]
            rules[name] = shares(dialogues, [w for w, _ in placed]) | {"vad_placed": sum(n for _, n in placed)}
    return out


def shares(dialogues: dict, windows: list[list[tuple[float, float]]]) -> dict:
    """Means over utterances (percent) of its speech inside its window, of the window on its speech and of the
    window on the other speakers' speech; ``windows``: per dialogue, its utterances' windows."""
    own = on_own = on_others = 0.0
    for rows, placed in zip(dialogues.values(), windows):
        for (start, end, speaker, _), window in zip(rows, placed):
            length = window[1] - window[0]
            own += overlap(window, (start, end)) / (end - start)
            on_own += overlap(window, (start, end)) / length
            on_others += covered(window, [(s, e) for s, e, who, _ in rows if who != speaker]) / length
    n = sum(len(rows) for rows in dialogues.values())
    return {"speech_in_window": round(100 * own / n, 1), "window_on_its_speech": round(100 * on_own / n, 1),
            "window_on_others_speech": round(100 * on_others / n, 1)}


def report(rate: dict, rows: dict) -> str:
    lines = ["# The camera window of a transcript without stamps", "",
             "`python bench/text_windows.py`. A `std_msgs/String` transcript says only when it came; its caption's "
             "frames come from the window the node estimates its words were said in (`ddvlm_core.speech_timing`).",
             "", f"## Speaking rate: MELD {rate['split']}, {rate['utterances']} utterances", "",
             f"duration = {rate['base_s']:.2f} s + {rate['per_word_s']:.3f} s x words ({rate['words_per_s']:.2f} "
             f"words/s beyond the first {rate['base_s']:.2f} s); in `ddvlm_core.speech_timing`: "
             f"{'yes' if rate['in_speech_timing'] else 'NO: update BASE_S and PER_WORD_S'}.", "",
             f"## Windows: MELD test, {rows['utterances']} utterances at their own times, one ASR", "",
             f"The ASR sends each transcript {ENDPOINT_S:g} s after the utterance ends plus its duration times the "
             "ASR's real-time factor (RTF), one after the other. Means over utterances. A VAD goes on when an "
             f"utterance starts and off {VAD_HANGOVER_S:g} s after it ends; the transcripts it placed (the node's "
             "estimate placed the others).", ""]
    for rtf, rules in rows["rtf"].items():
        lines += [f"### ASR at RTF {rtf}", "",
                  "| window | its speech in the window | window on its speech | window on others' speech | placed by "
                  "the VAD |", "|---|---|---|---|---|"]
        lines += [f"| {name} | {r['speech_in_window']:.1f} % | {r['window_on_its_speech']:.1f} % | "
                  f"{r['window_on_others_speech']:.1f} % | {r.get('vad_placed', '-')} |" for name, r in rules.items()]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report-dir", default=str(REPO / "reports"), help="where the reports go")
    args = ap.parse_args(argv)
    rate, rows = speaking_rate(), window_rows()
    write_report(args.report_dir, "text_windows", {"endpoint_s": ENDPOINT_S, "vad_hangover_s": VAD_HANGOVER_S,
                                                   "rules": [*RULES, WHISPER_RULE, *VAD_RULES],
                                                   "speaking_rate": rate, "test": rows}, report(rate, rows))
    return 0 if rate["in_speech_timing"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
