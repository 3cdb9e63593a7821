"""Whether an utterance's camera frames are still buffered when its transcript comes (bench/frame_windows.py): the
ASR model's known answers, the committed report and the README's numbers."""
import json
from pathlib import Path

import pytest

from bench_modules import load_bench
from ddvlm_ros.params import PARAMS

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("duration, rtf, needed", [(2.0, 0.5, 3.5), (10.0, 1.0, 20.5), (0.0, 0.3, 0.5)])
def test_a_window_needs_the_utterance_the_asrs_end_pointing_and_its_transcription(duration, rtf, needed):
    assert load_bench("frame_windows").needed_s(duration, rtf) == pytest.approx(needed)


def test_on_meld_the_default_buffer_keeps_most_windows_whole_and_the_committed_report_is_current(tmp_path):
    """A longer buffer cuts fewer windows, a slower ASR more; the default (20 s) keeps 99 % of MELD test's windows
    whole with Whisper on a Jetson (RTF 0.5), where 10 s cut about one in ten; the committed report is this run's."""
    assert load_bench("frame_windows").main(["--report-dir", str(tmp_path)]) == 0
    fresh = json.loads((tmp_path / "frame_windows.json").read_text())
    assert fresh == json.loads((REPO / "reports" / "frame_windows.json").read_text())
    default = next(p.default for p in PARAMS if p.name == "frame_buffer_s")
    assert fresh["buffers_s"] == [10.0, default] and fresh["memory_mb"]["640x480 rgb8"]["20"] == 92
    for split in fresh["splits"].values():
        rows = [split["rtf"][r] for r in ("0.1", "0.3", "0.5", "1.0")]
        for keep in ("10", "20"):
            shares = [row[keep]["percent"] for row in rows]
            assert shares == sorted(shares)
        assert all(row["20"]["percent"] < row["10"]["percent"] for row in rows)
    test = fresh["splits"]["test"]["rtf"]
    assert test["0.5"]["20"]["percent"] < 1 < 5 < test["0.5"]["10"]["percent"]


def test_the_readme_states_the_numbers_of_the_committed_report():
    report = json.loads((REPO / "reports" / "frame_windows.json").read_text())
    test, mem = report["splits"]["test"]["rtf"], report["memory_mb"]
    readme = " ".join((REPO / "README.md").read_text().split())
    assert (f"a 10 s buffer cuts {test['0.5']['10']['percent']:.2f} % of the windows short with Whisper at RTF 0.5 "
            f"(a Jetson) and {test['1.0']['10']['percent']:.2f} % at RTF 1; the default 20 s cuts "
            f"{test['0.5']['20']['percent']:.2f} % and {test['1.0']['20']['percent']:.2f} % (it holds "
            f"{mem['640x480 rgb8']['20']} MB of 640x480 rgb8 frames at 5 Hz, {mem['1280x720 rgb8']['20']} MB at "
            "1280x720)") in readme
