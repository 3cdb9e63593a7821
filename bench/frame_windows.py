"""Whether an utterance's camera frames are still buffered when its transcript comes (``frame_buffer_s``), on MELD.

    python bench/frame_windows.py [--report-dir reports]

A caption is made from the frames of the utterance's window, [start, end], read from the node's frame buffer when
the transcript has been answered. An ASR sends the transcript ``ENDPOINT_S`` after the utterance ends (its voice
activity detector waits for that much silence) plus the utterance's duration times its real-time factor (RTF;
Whisper small: about 0.1 on a desktop GPU, 0.3-0.5 on a Jetson Orin, 1 on a laptop CPU). By then the buffer must
still hold the window's first frame: it needs ``duration x (1 + RTF) + ENDPOINT_S`` seconds. A shorter buffer has
dropped the window's start, and the caption sees only its last part (``windows_cut_short`` in /diagnostics).

Per split and RTF, from MELD's own utterance times (the CSVs' StartTime and EndTime): the share of utterances whose
window a buffer of each of ``BUFFERS_S`` cuts short, the share of the window lost on those, and the buffer that
keeps 99 % of them whole. And what a buffer holds at the default ``frame_rate_hz`` (raw frames). No model, seconds.

Writes frame_windows.md and .json to reports/ (or ``--report-dir``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.late_transcripts import ENDPOINT_S, RTFS  # noqa: E402  the same ASR model
from bench.shared import write_report  # noqa: E402

BUFFERS_S = (10.0, 20.0)  # the default before and after this bench
FRAMES = {"640x480 rgb8": 640 * 480 * 3, "1280x720 rgb8": 1280 * 720 * 3}  # bytes of a raw sensor_msgs/Image


def durations(split: str) -> list[float]:
    """Each of ``split``'s utterances' duration in seconds (EndTime - StartTime; 0 for the few MELD times out of
    order)."""
    from ddvlm_core.meld import parse_time, read_split

    return [max(0.0, parse_time(u.end) - parse_time(u.start)) for u in read_split(split)]


def needed_s(duration: float, rtf: float) -> float:
    """Seconds of frames the buffer must hold when the transcript comes for its window to be whole."""
    return duration * (1.0 + rtf) + ENDPOINT_S


def split_rows(split: str) -> dict:
    import numpy as np

    spans = durations(split)
    out = {"utterances": len(spans), "duration_s": {"p50": round(float(np.percentile(spans, 50)), 2),
                                                    "p99": round(float(np.percentile(spans, 99)), 2),
                                                    "max": round(max(spans), 2)}, "rtf": {}}
    for rtf in RTFS:
        need = np.array([needed_s(d, rtf) for d in spans])
        row = {"keeps_99_percent_s": round(float(np.percentile(need, 99)), 1)}
        for keep in BUFFERS_S:
            cut = need > keep
            lost = [min(1.0, (n - keep) / d) for n, d, c in zip(need, spans, cut) if c and d > 0]
            row[f"{keep:g}"] = {"cut": int(cut.sum()), "percent": round(100.0 * cut.mean(), 2),
                                "lost_share_mean": round(100.0 * float(np.mean(lost)), 1) if lost else 0.0}
        out["rtf"][str(rtf)] = row
    return out


def memory(rate_hz: float) -> dict:
    """MB a buffer of each of BUFFERS_S holds at ``rate_hz`` raw frames a second."""
    return {name: {f"{keep:g}": round(keep * rate_hz * size / 1e6) for keep in BUFFERS_S}
            for name, size in FRAMES.items()}


def report(rows: dict, mem: dict, rate_hz: float) -> str:
    lines = ["# Camera frames still buffered when the transcript comes", "",
             "`python bench/frame_windows.py`. An utterance's caption reads the frames of its window from the "
             "node's frame buffer once its transcript has come: "
             f"{ENDPOINT_S:g} s after the utterance ends plus its duration times the ASR's real-time factor (RTF). "
             "A buffer shorter than duration x (1 + RTF) + "
             f"{ENDPOINT_S:g} s has dropped the window's start (`windows_cut_short`). MELD's utterance times "
             "(StartTime, EndTime).", ""]
    for split, r in rows.items():
        d = r["duration_s"]
        lines += [f"## {split}: {r['utterances']} utterances, {d['p50']:.2f} s at the median, {d['p99']:.2f} s at "
                  f"p99, {d['max']:.2f} s at most", "",
                  "| RTF | " + " | ".join(f"cut short by a {k:g} s buffer (window lost on those)" for k in BUFFERS_S)
                  + " | buffer keeping 99 % whole |", "|---|" + "---|" * (len(BUFFERS_S) + 1)]
        for rtf in RTFS:
            row = r["rtf"][str(rtf)]
            cells = [f"{row[f'{k:g}']['percent']:.2f} % ({row[f'{k:g}']['cut']}; "
                     f"{row[f'{k:g}']['lost_share_mean']:.1f} %)" for k in BUFFERS_S]
            lines.append(f"| {rtf:g} | " + " | ".join(cells) + f" | {row['keeps_99_percent_s']:.1f} s |")
        lines.append("")
    lines += [f"## What the buffer holds at frame_rate_hz {rate_hz:g} (raw frames)", "",
              "| frames | " + " | ".join(f"{k:g} s" for k in BUFFERS_S) + " |", "|---|" + "---|" * len(BUFFERS_S)]
    lines += [f"| {name} | " + " | ".join(f"{mb} MB" for mb in sizes.values()) + " |" for name, sizes in mem.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    from ddvlm_ros.params import PARAMS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report-dir", default=str(REPO / "reports"), help="where the reports go")
    args = ap.parse_args(argv)
    rate_hz = next(p.default for p in PARAMS if p.name == "frame_rate_hz")
    rows = {split: split_rows(split) for split in ("train", "dev", "test")}
    mem = memory(rate_hz)
    write_report(args.report_dir, "frame_windows", {"endpoint_s": ENDPOINT_S, "buffers_s": list(BUFFERS_S),
                                                    "frame_rate_hz": rate_hz, "splits": rows, "memory_mb": mem},
                 report(rows, mem, rate_hz))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
