"""ddvlm_core.speech_timing: when the words of a transcript without stamps were said (known answers), the speaking
rate fitted on MELD train, and bench/text_windows.py's report and the README's numbers from it."""
import json
import math
import re
from pathlib import Path

import pytest
from bench_modules import load_bench

from ddvlm_core import speech_timing
from ddvlm_core.speech_timing import AsrTiming, fit_speaking_rate, spoken_s, words

REPO = Path(__file__).resolve().parents[1]


def test_words_take_the_fitted_time_to_say():
    assert words("I got the job!") == 4 and words("  ") == 0 and words("caf\xe9 ol\xe9".encode()) == 2
    assert words(b"\xff\xfe broken") == 2  # not UTF-8: counted as it decodes
    assert spoken_s("I got the job!") == pytest.approx(0.99 + 4 * 0.27)
    assert spoken_s("") == pytest.approx(0.99) and spoken_s("a b", base_s=0.0, per_word_s=0.5) == 1.0


def test_a_transcript_that_came_at_t_was_said_before_the_asrs_delay():
    """4 words: 2.07 s to say; the ASR waited 0.5 s and decoded 0.3 x 2.07 s: said over [t - 3.191, t - 1.121]."""
    assert AsrTiming().said("I got the job!", 100.0) == (pytest.approx(96.809), pytest.approx(98.879))
    assert AsrTiming(4.0).said("I got the job!", 100.0) == (pytest.approx(94.879), pytest.approx(98.879))
    assert AsrTiming(4.0, 0.0, 0.0).said("anything at all", 100.0) == (96.0, 100.0)  # the 4 s before it came
    said = AsrTiming(0.0, 0.5, 1.0).said("No way!", 10.0)
    assert said == (pytest.approx(10 - 2.03 - 1.53), pytest.approx(10 - 2.03))
    assert AsrTiming().started("Oh my God.", 50.0) == pytest.approx(48.2)  # an end stamp only
    assert AsrTiming(3.0).started("Oh my God.", 50.0) == 47.0


def test_a_transcript_that_says_its_audio_and_its_transcription_time_needs_no_estimate():
    """whisper_ros: 2.5 s of audio (the words, then 0.5 s of the silence that ended them), transcribed in 0.7 s, came
    at 100: the words were said over [96.8, 98.8], whatever the words and the rtf; audio shorter than the silence
    ends where it starts."""
    assert AsrTiming().transcribed(2.5, 0.7, 100.0) == (pytest.approx(96.8), pytest.approx(98.8))
    assert AsrTiming(4.0, 0.128, 1.0).transcribed(2.5, 0.7, 100.0) == (pytest.approx(96.8), pytest.approx(99.172))
    assert AsrTiming().transcribed(0.3, 0.0, 10.0) == (pytest.approx(9.7), pytest.approx(9.7))
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="audio_s must be a finite number >= 0"):
            AsrTiming().transcribed(bad, 0.1, 10.0)
    with pytest.raises(ValueError, match="transcription_s must be a finite number >= 0"):
        AsrTiming().transcribed(1.0, -1.0, 10.0)


@pytest.mark.parametrize("bad", [dict(length_s=-1.0), dict(endpoint_s=-0.1), dict(rtf=math.nan)])
def test_negative_or_nan_timings_are_refused_by_name(bad):
    with pytest.raises(ValueError, match=f"{next(iter(bad))} must be >= 0"):
        AsrTiming(**bad)


def test_the_speaking_rate_fit_recovers_a_known_line_and_refuses_too_little_data():
    counts = [1, 2, 5, 9, 14]
    assert fit_speaking_rate([0.8 + 0.3 * w for w in counts], counts) == (pytest.approx(0.8), pytest.approx(0.3))
    with pytest.raises(ValueError, match="two or more"):
        fit_speaking_rate([1.0], [3])
    with pytest.raises(ValueError, match="different word counts"):
        fit_speaking_rate([1.0, 2.0], [3, 3])


def test_the_module_constants_are_meld_trains_fitted_rate():
    rate = load_bench("text_windows").speaking_rate("train")
    assert rate["in_speech_timing"] and rate["utterances"] > 9900
    assert (speech_timing.BASE_S, speech_timing.PER_WORD_S) == (rate["base_s"], round(rate["per_word_s"], 2))


def test_one_asr_sends_each_transcript_after_its_endpoint_and_decoding_one_after_the_other():
    bench = load_bench("text_windows")
    arrivals, covered = bench.arrivals, bench.covered
    rows = [(0.0, 2.0, "a", ""), (2.1, 3.1, "b", ""), (10.0, 12.0, "a", "")]
    # 2.0 + 0.5 + 0.5 x 2; then b waits for the ASR: max(3.6, 3.5) + 0.5; a alone again: 12.5 + 1.0
    assert arrivals(rows, 0.5) == [pytest.approx(3.5), pytest.approx(4.1), pytest.approx(13.5)]
    assert covered((1.0, 5.0), [(0.0, 2.0), (1.5, 3.0), (4.0, 9.0)]) == pytest.approx(3.0)  # overlaps counted once
    # whisper_ros: the audio of the words and 0.5 s of silence (2.5 s for a), decoded in 0.5 x the words: placed
    # exactly; b's 0.2 s came while the ASR decoded a (until 13.5 s, the audio 12.1 s to 12.8 s padded to 1.032 s,
    # decoded in 0.1 s): came at 13.6 s, 0.7 s late, which its transcription_time does not say
    rows = [(10.0, 12.0, "a", ""), (12.1, 12.3, "b", "")]
    whisper = [AsrTiming().transcribed(*bench.whisper_transcription(s, e, 0.5), came)
               for (s, e, _, _), came in zip(rows, arrivals(rows, 0.5))]
    assert whisper == [(pytest.approx(10.0), pytest.approx(12.0)), (pytest.approx(13.5 - 1.032), pytest.approx(13.0))]


def test_the_committed_report_is_a_fresh_run_and_the_readme_quotes_it(tmp_path):
    bench = load_bench("text_windows")
    default_rule = bench.DEFAULT_RULE
    assert bench.main(["--report-dir", str(tmp_path)]) == 0
    for name in ("text_windows.json", "text_windows.md"):
        assert (tmp_path / name).read_text() == (REPO / "reports" / name).read_text(), name
    rows = json.loads((tmp_path / "text_windows.json").read_text())["test"]["rtf"]
    old_rule = "before: the 4 s before it came (text_window_s 4, no delay)"
    before, default = rows["0.3"][old_rule], rows["0.3"][default_rule]
    assert default["window_on_its_speech"] > before["window_on_its_speech"]
    assert default["window_on_others_speech"] < before["window_on_others_speech"]
    own = rows["1.0"]["its words' duration, 0.5 s + the ASR's own RTF (text_asr_rtf set to it)"]
    readme = " ".join((REPO / "README.md").read_text().split())
    said = ("68.3 % of the window is on the utterance's own speech and 13.6 % on the other speakers' (the 4 s before "
            "the transcript came, the window until now: 43.6 % and 22.5 %), and it holds 76.2 % of the speech "
            "(77.2 %)")
    assert said in readme
    assert [float(x) for x in re.findall(r"[\d.]+(?= %)", said)] == [
        default["window_on_its_speech"], default["window_on_others_speech"], before["window_on_its_speech"],
        before["window_on_others_speech"], default["speech_in_window"], before["speech_in_window"]]
    rtf1, whisper = rows["1.0"], rows["0.3"][bench.WHISPER_RULE]
    assert (f"at RTF 0.3 such a window is {whisper['window_on_its_speech']:.1f} % on the utterance's own speech and "
            f"{whisper['window_on_others_speech']:.1f} % on the other speakers' ({default['window_on_its_speech']:.1f} "
            f"% and {default['window_on_others_speech']:.1f} % estimated); at RTF 1 the ASR falls behind, and the time "
            "a transcription waited for the one before is not in its `transcription_time`: "
            f"{rtf1[bench.WHISPER_RULE]['window_on_its_speech']:.1f} % ({own['window_on_its_speech']:.1f} % estimated "
            "with `text_asr_rtf` set)") in readme
    assert (f"the window is {own['window_on_its_speech']:.1f} % on its speech with it, "
            f"{rtf1[default_rule]['window_on_its_speech']:.1f} % with the default and "
            f"{rtf1[old_rule]['window_on_its_speech']:.1f} % "
            "before") in readme
    one_mic, per_voice, _, per_voice_rtf = (rows["0.3"][name] for name in bench.VAD_RULES)
    assert (f"with a VAD that hears everyone, {one_mic['window_on_its_speech']:.1f} % of the window is on the "
            f"utterance's own speech and {one_mic['window_on_others_speech']:.1f} % on the other speakers' "
            f"({default['window_on_its_speech']:.1f} % and {default['window_on_others_speech']:.1f} % estimated); "
            f"with one VAD per voice, {per_voice['window_on_its_speech']:.1f} % and "
            f"{per_voice['window_on_others_speech']:.1f} %") in readme
    assert one_mic["window_on_its_speech"] > default["window_on_its_speech"] < per_voice["window_on_its_speech"]
    behind = [rows["1.0"][name]["window_on_its_speech"] for name in bench.VAD_RULES]
    assert (f"at RTF 1, where the ASR falls behind the VAD, one VAD per voice puts {behind[1]:.1f} % of the window "
            f"on the utterance's own speech with the default and {behind[3]:.1f} % with `text_asr_rtf` set (one VAD "
            f"for everyone: {behind[0]:.1f} % and {behind[2]:.1f} %, and "
            f"{rows['1.0'][list(bench.VAD_RULES)[2]]['window_on_others_speech']:.1f} % on the other speakers': no "
            f"better than the estimate alone, {own['window_on_its_speech']:.1f} % and "
            f"{own['window_on_others_speech']:.1f} %") in readme
    assert behind[3] > behind[1] and per_voice_rtf == per_voice


def test_a_vad_places_each_transcript_on_the_speech_it_heard_and_the_estimate_picks_which():
    """Two speakers, a's [0, 2] and b's [2.2, 3.0], heard by one ASR at RTF 0.5 (transcripts at 3.5 and 4.1 s): one
    VAD (off 0.1 s after the speech) hears [0, 2.1] and [2.2, 3.1], one utterance to the ASR (0.1 s of silence is
    under its 0.5 s endpoint), so a's transcript is placed on both and b's, with nothing fresh left, estimated; a VAD
    per speaker places each on its own speech (+0.1 s)."""
    bench = load_bench("text_windows")
    rows = [(0.0, 2.0, "a", "I got the job today"), (2.2, 3.0, "b", "No way")]
    arrived = bench.arrivals(rows, 0.5)
    assert bench.vad_changes([(0.0, 2.0), (2.2, 3.0)]) == [(0.0, True), (2.1, False), (2.2, True), (3.1, False)]
    assert bench.vad_changes([(0.0, 2.0), (1.5, 3.0)]) == [(0.0, True), (3.1, False)]  # overlapping: one stretch
    windows, placed = bench.vad_windows(rows, arrived, per_voice=False)
    assert placed == 1 and windows[0] == (0.0, pytest.approx(3.1))
    assert windows[1] == bench.DEFAULT.said("No way", arrived[1])
    windows, placed = bench.vad_windows(rows, arrived, per_voice=True)
    assert placed == 2 and windows == [(0.0, pytest.approx(2.1)), (2.2, pytest.approx(3.1))]


def test_the_nodes_defaults_are_the_benchs_default_rule():
    from ddvlm_ros.params import PARAMS_BY_NAME

    names = ("text_window_s", "text_asr_endpoint_s", "text_asr_rtf")
    node = AsrTiming(*(PARAMS_BY_NAME[name].default for name in names))
    assert node == load_bench("text_windows").DEFAULT == AsrTiming()
