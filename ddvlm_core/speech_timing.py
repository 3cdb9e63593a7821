"""When the words of a transcript without stamps were said: its camera window, from its words and the ASR's delay.

A plain-text transcript (``std_msgs/String``, an ASR's JSON result) says neither when its words started nor when
they ended, only when it came. An ASR sends it some time after the words ended: its voice activity detector waits
for ``endpoint_s`` of silence, then it decodes the utterance, which takes the utterance's duration times the ASR's
real-time factor (RTF; Whisper small: about 0.1 on a desktop GPU, 0.3-0.5 on a Jetson Orin, 1 on a laptop CPU).
The words themselves lasted about as long as people take to say that many words: MELD's utterances last
``BASE_S + PER_WORD_S`` x words (a least-squares fit of EndTime - StartTime on the word count, MELD train;
``bench/text_windows.py`` fits it again and checks these two numbers). So a transcript that came at ``arrived``::

    duration = BASE_S + PER_WORD_S * words          (or a fixed length_s)
    end      = arrived - endpoint_s - rtf * duration
    start    = end - duration

An ASR that says how long the audio it transcribed lasted and how long it took (whisper_ros' ``Transcription``:
``audio_time``, ``transcription_time``) needs no estimate of either: its voice activity detector sent the audio
when the silence after the words had lasted ``endpoint_s``, so (``transcribed``)::

    heard_until = arrived - transcription_s         (the end of the audio it was sent)
    start       = heard_until - audio_s
    end         = heard_until - endpoint_s          (not before start)

Before this module the window was the 4 s before the transcript came (``text_window_s`` 4, no delay):
``reports/text_windows.md`` compares the two on MELD test's dialogues at their own times.
"""
from __future__ import annotations

from dataclasses import dataclass

BASE_S = 0.99  # seconds an utterance lasts beyond its words' share (MELD train: intercept of the fit)
PER_WORD_S = 0.27  # seconds per word (MELD train: slope of the fit; 3.7 words/s)
ENDPOINT_S = 0.5  # silence a voice activity detector waits for before it ends an utterance
RTF = 0.3  # Whisper small on a Jetson Orin, the paper's deployment (Section 3.7)


def words(text: str | bytes) -> int:
    """How many words ``text`` has (white-space separated; bytes that are not UTF-8 count as they decode)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return len(text.split())


def spoken_s(text: str | bytes, base_s: float = BASE_S, per_word_s: float = PER_WORD_S) -> float:
    """How long saying ``text`` takes: ``base_s + per_word_s`` x its words."""
    return base_s + per_word_s * words(text)


def fit_speaking_rate(durations: list[float], word_counts: list[int]) -> tuple[float, float]:
    """(base_s, per_word_s): the least-squares line of ``durations`` on ``word_counts``."""
    n = len(durations)
    if n < 2 or len(word_counts) != n:
        raise ValueError(f"a speaking rate needs two or more (duration, words) pairs, got {n} and {len(word_counts)}")
    mean_w, mean_d = sum(word_counts) / n, sum(durations) / n
    spread = sum((w - mean_w) ** 2 for w in word_counts)
    if spread == 0:
        raise ValueError("a speaking rate needs utterances of different word counts")
    per_word = sum((w - mean_w) * (d - mean_d) for w, d in zip(word_counts, durations)) / spread
    return mean_d - per_word * mean_w, per_word


@dataclass(frozen=True)
class AsrTiming:
    """How an ASR's transcripts without stamps follow the words (the node's ``text_window_s``,
    ``text_asr_endpoint_s`` and ``text_asr_rtf``)."""

    length_s: float = 0.0  # the window's length; 0: how long its words take to say (spoken_s)
    endpoint_s: float = ENDPOINT_S
    rtf: float = RTF

    def __post_init__(self):
        for name in ("length_s", "endpoint_s", "rtf"):
            if not getattr(self, name) >= 0:  # also NaN
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")

    def duration_s(self, text: str | bytes) -> float:
        """How long the words of ``text`` lasted: ``length_s``, or 0 for how long they take to say."""
        return self.length_s or spoken_s(text)

    def started(self, text: str | bytes, end: float) -> float:
        """When ``text``, known to have ended at ``end`` (an end stamp without a start), started."""
        return end - self.duration_s(text)

    def said(self, text: str | bytes, arrived: float) -> tuple[float, float]:
        """(start, end) of the words of ``text``, a transcript that came at ``arrived`` without stamps."""
        end = arrived - self.endpoint_s - self.rtf * spoken_s(text)
        return end - self.duration_s(text), end

    def transcribed(self, audio_s: float, transcription_s: float, arrived: float) -> tuple[float, float]:
        """(start, end) of the words of a transcript that came at ``arrived``, ``transcription_s`` after its ASR was
        sent ``audio_s`` of audio (the words, then ``endpoint_s`` of silence). A value below 0, or not finite, is
        refused (ValueError)."""
        for name, value in (("audio_s", audio_s), ("transcription_s", transcription_s)):
            if not 0 <= value < float("inf"):  # also NaN
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        heard_until = arrived - transcription_s
        start = heard_until - audio_s
        return start, max(start, heard_until - self.endpoint_s)
