"""When a person spoke, from a voice activity detector's on/off messages: the camera window of a transcript that
says nothing of its own timing.

A voice activity detector (VAD) says whether it hears speech now, as ``std_msgs/Bool`` without a stamp:
respeaker_ros' ``is_speeching``, the ``audio/voice_detected`` that PAL's asr_vosk reads, and per voice REP-155's
``/humans/voices/<id>/is_speaking`` (asr_vosk relays its VAD there). Its changes, timed when they come, are the
person's speaking intervals. An ASR ends an utterance once the silence after its words has lasted ``endpoint_s``,
and only then sends its final transcript. So the VAD's utterances are its intervals joined where less than
``endpoint_s`` of silence separates them (the ASR ends no utterance at a shorter pause), and a final transcript that
came at ``t`` was said over one of those that began after the window of the transcript before it (``heard``)::

    fresh    = the VAD's utterances since the window of the transcript before, begun before t; one still going on
               at t after an ended one is the next utterance, begun already (alone, it ends at t)
    window   = of the fresh ones, the one that overlaps most the window estimated from the transcript's words and
               the ASR's delay (ddvlm_core.speech_timing), the latest when none does or without an estimate,
               from max(its start, the end of the window before) to its end; at most ``longest_s`` long (its end
               kept), and none from a stretch still going on at t that is longer (a VAD held on by noise)

The estimate picks the utterance, the VAD places its ends: an ASR that has fallen behind sends a transcript when
the VAD has heard later utterances already, and a VAD also hears coughs and noise that get no transcript.
With no fresh utterance (no VAD, one that heard nothing, or one whose message comes after the transcript), ``heard``
gives None and the estimate is the window. ``bench/text_windows.py`` measures both on MELD test.
A VAD that also hears the robot's own voice would join the robot's speech to the next person's utterance: while the
robot says it speaks (``robot``: a ``/robot_speaking`` Bool, which asr_vosk reads to stop listening meanwhile), what
the VAD hears is no person's speech.
"""
from __future__ import annotations

import math
from collections import deque

from ddvlm_core.speech_timing import spoken_s

KEEP = 64  # speaking intervals kept: a VAD that flickers in noise cannot grow the history without bound
LONGEST_FACTOR = 3.0  # a window lasts at most this many times its words' estimated duration (speech_timing.spoken_s):
# 99 % of MELD train's utterances last less (a VAD held on by noise would otherwise stretch it over seconds of it)


def longest_s(text: str) -> float:
    """The longest the window of a transcript saying ``text`` may last (``longest_s`` of ``heard`` and ``began``):
    LONGEST_FACTOR times its words' estimated duration (``speech_timing.spoken_s``)."""
    return LONGEST_FACTOR * spoken_s(text)


class VoiceActivity:
    """One VAD's speaking intervals, timed by their messages' arrival, and the windows of the final transcripts
    heard from them. Not thread-safe: one caller at a time (the node's input callbacks, mutually exclusive)."""

    def __init__(self, keep: int = KEEP, robot_speaking: bool = False):
        self.intervals: deque[list] = deque(maxlen=keep)  # [on, off] in seconds; off None while speaking
        self.robot_speaking = robot_speaking  # while the robot speaks, what the VAD hears is no person's speech
        self.forget()

    def forget(self) -> None:
        """Start afresh: what the VAD heard is of a timeline that will not come again (ROS time went back, or a voice
        is heard again after its linger ran out). Whether the robot speaks stays: its own topic says when that
        changes."""
        self.intervals.clear()
        self.used_until = -math.inf  # the end of the latest window handed out: what went before it is used
        self.changes = 0  # messages that changed the state (on after off, off after on)
        self.vad_on = False  # what the VAD says now

    def hear(self, speaking: bool, t: float) -> None:
        """The VAD said ``speaking`` at time ``t`` (a repeated state changes nothing)."""
        if speaking != self.vad_on:
            self.vad_on = speaking
            self.changes += 1
            self._follow(t)

    def robot(self, speaking: bool, t: float) -> None:
        """The robot started (``speaking``) or stopped speaking at ``t`` (a ``/robot_speaking`` Bool, as a robot's
        speech stack publishes it for asr_vosk): a VAD that also hears the robot takes its voice for speech, which is
        no person's. A person's speech goes on from the robot's last word if the VAD still hears it then."""
        self.robot_speaking = speaking
        self._follow(t)

    def _follow(self, t: float) -> None:
        """Open or close the current interval: a person speaks while the VAD hears speech and the robot is silent."""
        person = self.vad_on and not self.robot_speaking
        if person and not self.speaking:
            self.intervals.append([t, None])
        elif not person and self.speaking:
            self.intervals[-1][1] = max(t, self.intervals[-1][0])

    @property
    def speaking(self) -> bool:
        """Whether a person speaks now, as far as the VAD and the robot's speech tell."""
        return bool(self.intervals) and self.intervals[-1][1] is None

    def heard(self, t: float, endpoint_s: float, estimate: tuple[float, float] | None = None,
              longest_s: float = math.inf) -> tuple[float, float] | None:
        """(start, end) of the words of a final transcript that came at ``t`` (``estimate``: the window estimated
        from its words), or None without a fresh VAD utterance; the VAD's speech up to its end is used by it. A
        stretch still going on at ``t`` and longer than ``longest_s`` is a VAD held on (by noise), which places
        nothing: None."""
        fresh = self._utterances(t, endpoint_s, ongoing=False)
        if not fresh:
            return None
        overlaps = [min(end, estimate[1]) - max(start, estimate[0]) if estimate else 0.0 for start, end, _ in fresh]
        best = max(range(len(fresh)), key=lambda k: (overlaps[k], k)) if max(overlaps) > 0 else len(fresh) - 1
        start, end, going_on = fresh[best]
        if going_on and end - start > longest_s:
            return None
        self.used_until = end
        while self.intervals and self.intervals[0][1] is not None and self.intervals[0][1] <= end:
            self.intervals.popleft()
        return max(start, end - longest_s), end

    def began(self, t: float, endpoint_s: float, longest_s: float = math.inf) -> float | None:
        """When the utterance still being said at ``t`` (its partial results come) began, or None without VAD
        intervals for it or when it has gone on for longer than ``longest_s`` (a VAD held on); nothing is used."""
        fresh = self._utterances(t, endpoint_s, ongoing=True)
        if not fresh or t - fresh[-1][0] > longest_s:
            return None
        return fresh[-1][0]

    def _utterances(self, t: float, endpoint_s: float, ongoing: bool) -> list[tuple[float, float, bool]]:
        """The fresh utterances at ``t``, as (start, end, still going on at t) (``ongoing``: with the one still
        being said, until t)."""
        fresh = [(on, off if off is not None and off <= t else None) for on, off in self.intervals
                 if on < t and (off is None or off > self.used_until)]
        if not ongoing and len(fresh) > 1 and fresh[-1][1] is None:  # the next utterance has begun
            fresh.pop()
        joined: list[list] = []
        for on, off in fresh:
            if joined and on - joined[-1][1] < endpoint_s:
                joined[-1][1] = off
            else:
                joined.append([on, off])
        spans = [(max(on, self.used_until), t if off is None else off, off is None) for on, off in joined]
        return [(start, end, going_on) for start, end, going_on in spans if end > start]
