"""Transcripts of the robot's own speech: the ASR hearing the robot.

A robot whose microphone stays open while it speaks, without acoustic echo cancellation (AEC), hears itself: its
TTS comes back from the ASR as a transcript of an unknown or human speaker, a second or two after the robot said it.
The node would then answer how that person feels from the robot's own words ("I'm so sorry to hear that." reads
as sadness), and a behaviour node reacting to it answers itself.

When the robot's speech also reaches the node as context (``context_only_speakers``, from its TTS), such an echo can
be told: most of the transcript's words are, in order, words of one of the robot's latest turns. The rule:

- the transcript has ``ECHO_MIN_WORDS`` words at least ("Okay." after the robot's "Okay, let's go." is no echo);
- ``ECHO_MIN_SHARE`` of its words at least are matched, in order, by the robot's words (``echo_share``; case and
  punctuation aside): an ASR mishears some words of an echo, and hears only part of a long one;
- the robot's turn is one of the ``ECHO_LOOKBACK`` turns before it (a person may answer in between).

People repeat each other too ("Nice to meet you too." after "Hi! Nice to meet you!"): of MELD's utterances of 3+
words, 0.67 % (train), 0.90 % (dev) and 0.47 % (test) repeat so one of the 3 turns before them by another speaker,
where MELD's test lines heard back through an ASR are told at 96 %, 87 % and 69 % at word error rates of 10, 20
and 30 % (``python bench/self_echo.py``, ``reports/self_echo.md``). So an echo is flagged, not dropped (unless the
node's ``drop_self_echoes`` says so): the answer carries ``SELF_ECHO_FLAG``, and the node says the ASR hears the
robot once such echoes recur.
"""
from __future__ import annotations

import re
from difflib import SequenceMatcher
from typing import Callable, Sequence

from ddvlm_core.context import Turn

SELF_ECHO_FLAG = "transcript-echoes-robot"
ECHO_MIN_WORDS = 3  # a shorter transcript ("Okay.", "Yes, sure.") is never called an echo
ECHO_MIN_SHARE = 0.7  # of the transcript's words, matched in order by the robot's words
ECHO_LOOKBACK = 3  # the robot's turn is one of the turns this many before the transcript

_WORD = re.compile(r"\w+(?:'\w+)*")


def echo_words(text: str) -> list[str]:
    """The words of ``text`` as two ASRs would both write them: lower case, without punctuation, one apostrophe
    ("Don’t!" -> ["don't"])."""
    return _WORD.findall(text.replace("’", "'").replace("‘", "'").lower())


def echo_share(heard: str, said: str) -> float:
    """Share of the words of ``heard`` matched, in order, by words of ``said`` (difflib's matching blocks: near the
    longest common subsequence); 0 for a transcript of fewer than ECHO_MIN_WORDS words."""
    heard_words = echo_words(heard)
    if len(heard_words) < ECHO_MIN_WORDS:
        return 0.0
    blocks = SequenceMatcher(None, heard_words, echo_words(said), autojunk=False).get_matching_blocks()
    return sum(block.size for block in blocks) / len(heard_words)


def robot_echo(turns: Sequence[Turn], is_robot: Callable[[str], bool]) -> tuple[float, Turn | None]:
    """How much the last of ``turns`` (a dialogue's latest turns, the transcript last) repeats the robot: the highest
    ``echo_share`` over the ECHO_LOOKBACK turns before it whose speaker ``is_robot``, and that turn (the latest on a
    tie); (0.0, None) when none of them is the robot's, or when the last turn is."""
    if not turns or is_robot(turns[-1].speaker):
        return 0.0, None
    robot = [t for t in turns[-1 - ECHO_LOOKBACK:-1] if is_robot(t.speaker)]
    share, _, turn = max(((echo_share(turns[-1].text, t.text), i, t) for i, t in enumerate(robot)),
                         default=(0.0, 0, None))  # i: the latest wins a tie
    return share, turn


def echoed_turn(turns: Sequence[Turn], is_robot: Callable[[str], bool]) -> Turn | None:
    """The robot's turn that the last of ``turns`` echoes (``robot_echo``'s, when its share reaches
    ECHO_MIN_SHARE), else None."""
    share, turn = robot_echo(turns, is_robot)
    return turn if share >= ECHO_MIN_SHARE else None
