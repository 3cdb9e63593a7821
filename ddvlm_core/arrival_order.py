"""Transcripts that arrive after later ones: each takes its place in the dialogue by the time its utterance ended.

One ASR transcribes utterances one after another, in the order they were said. Several do not: one ASR per voice
(ROS4HRI's ``/humans/voices/<id>/speech``), one per microphone (a headset per participant in a study), parallel
workers. Each takes longer on a longer utterance (Whisper: the utterance's duration times its real-time factor), so
a short reply ("Really?") spoken right after a long turn is transcribed first and reaches the node before it. Held in
the order they arrived, the dialogue context then has the reply before what it replies to, from then on; and the
long turn's answer is read from a prompt that ends "... Really? Now <s1> feels <mask>": it is answered as if said
after the reply.

A transcript whose end stamp (the message's, not when it arrived) is earlier than the ends of the latest turns of
its dialogue is therefore put before them (``turns_ended_after``; ``Dialogue.append`` with ``end``), its answer is
read from the turns up to it (``Dialogue.until``) and carries ``LATE_FLAG``: a behaviour node keeping each person's
latest emotion compares header stamps (the end of the utterance) rather than taking the last message received.
The turns it went before were answered before it was known: the node answers them again from the turns up to each
(the context in the order said), and those answers carry ``REVISED_FLAG`` (same utterance, same header stamp: they
replace the first ones).

Only stamped turns are moved past: a turn whose end is when it arrived (a ``std_msgs/String`` transcript, the
robot's speech) stays where it is, and a transcript never moves before it, so a clock that differs between two
publishers cannot reorder them. Stamps more than ``LATE_MAX_S`` before the latest turn's are another clock (an
ASR stamping from its audio device, sim time against wall time): that transcript is appended.

``python bench/late_transcripts.py`` (``reports/late_transcripts.md``): MELD test dialogues spoken one turn after
another, each voice transcribed by its own ASR: the share of transcripts that arrive late, WA-F1 with the context
in arrival order and in this order, and with the answers revised.
"""
from __future__ import annotations

from typing import Sequence

LATE_FLAG = "transcript-arrived-late"
REVISED_FLAG = "answer-revised"  # an utterance answered again: a turn said before it arrived after its answer
LATE_MAX_S = 30.0  # a transcript whose end is further before the latest turn's is on another clock


def turns_ended_after(ends: Sequence[float | None], end: float, max_s: float = LATE_MAX_S) -> int:
    """How many of a dialogue's latest turns a transcript that ended at ``end`` goes before (``ends``: each turn's
    end in seconds, oldest first; None: a turn without a stamp of its own): counted back from the latest while
    they are stamped and ended after ``end``; 0 when the latest ended more than ``max_s`` after it."""
    if not ends or ends[-1] is None or ends[-1] - end > max_s:
        return 0
    k = 0
    while k < len(ends) and ends[-1 - k] is not None and ends[-1 - k] > end:
        k += 1
    return k
