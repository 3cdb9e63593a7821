"""The same transcript delivered twice: two publishers of one ASR's output, or one ASR on two inputs.

ROS delivers a message once per publisher. A transcript reaches the node twice when two publishers send it: a relay
or bridge forwarding the ASR's topic onto the one the node reads while the ASR publishes there too (topic_tools
relay, a ros1_bridge forwarding both ways), or a second copy of the ASR's node (a launch file started twice; both
open the microphone). Or one ASR's output reaches two of the node's inputs: its text on ``transcript`` and its
``Utterance`` on ``utterance``, both left subscribed. Answered twice, a behaviour node reacts twice to one
utterance, and the dialogue context holds it twice.

A copy arrives with the original (within ``COPY_WINDOW_S``) and has its words. On one input it also has its speaker
and its end: the same stamp (``Utterance.end``, a ``LiveSpeech`` header), or for a transcript stamped on arrival (a
``std_msgs/String``) an end within ``SAME_END_S``. A person who says the same words again does so after the first
time ended: a new end, some tenths of a second later at the least, also in a bag played 20 times faster (the node
runs on its time). On two inputs the speaker is named differently (a ``"speaker: text"`` prefix, or none, against
``Utterance.speaker_id``) and the ends differ by the ASR's delay; the same words within ``COPY_WINDOW_S`` are the
copy when there are ``CROSS_INPUT_MIN_WORDS`` of them at least (two people answering "Yes!" at once, one heard on
each input, are two). Two ASRs that each transcribe the microphone write their own stamps: their copies are not told.

Transcripts stamped on arrival that waited in a backlog (a node kept busy for seconds) all arrive at once, their
ends read then: such a transcript is compared with the latest one of its input only (``original_of``), so a person
who said the same words twice, with other words between them, is not taken for a copy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

COPY_WINDOW_S = 0.5  # a copy arrives at most this long after the original (monotonic clock)
SAME_END_S = 0.05  # ends stamped on arrival (the node's clock) of a transcript and its copy differ by less
CROSS_INPUT_MIN_WORDS = 3  # a copy on another input has this many words at least


@dataclass(frozen=True)
class Delivery:
    """A transcript as it reached the node: what is compared to tell a copy."""

    source: str  # the input it came on: "transcript", "utterance", "voices" (ROS4HRI) ...
    speaker: str  # the speaker id it gave ("" = none)
    text: str
    end: float  # seconds (ROS time)
    stamped: bool  # ``end`` is the message's stamp (else when it arrived)
    received: float  # monotonic seconds


def same_words(a: str, b: str) -> bool:
    """``a`` and ``b`` are the same text, but for white space."""
    return a.split() == b.split()


def is_copy(original: Delivery, later: Delivery, window_s: float = COPY_WINDOW_S) -> bool:
    """Whether ``later`` is ``original`` delivered again: its words, at most ``window_s`` after it; on one input also
    its speaker and its end (the same stamp, or ends stamped on arrival within SAME_END_S); on two inputs the words
    are enough when there are CROSS_INPUT_MIN_WORDS of them."""
    if not 0.0 <= later.received - original.received <= window_s or not same_words(original.text, later.text):
        return False
    if original.source != later.source:
        return len(later.text.split()) >= CROSS_INPUT_MIN_WORDS
    if original.speaker != later.speaker:
        return False
    if original.stamped and later.stamped:
        return abs(later.end - original.end) < 1e-3
    return abs(later.end - original.end) <= SAME_END_S


def original_of(recent: Sequence[Delivery], later: Delivery) -> Delivery | None:
    """The latest of ``recent`` (oldest first) that ``later`` is a copy of (``is_copy``), or None. Of the transcripts
    of its own input, one stamped on arrival (or following one) is compared with the latest only."""
    latest_of_input = True
    for earlier in reversed(recent):
        if earlier.source == later.source:
            if not latest_of_input and not (earlier.stamped and later.stamped):
                continue
            latest_of_input = False
        if is_copy(earlier, later):
            return earlier
    return None
